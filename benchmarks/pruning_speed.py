"""Pruned-head speed of featsup's UNet++: parameters, FLOPs and latency per head.

For every head k the pruned network (nodes i + j <= k) is timed against the full one, in
two forms: a plain eager fp32 NCHW forward (``model.pruned(k)`` in eval mode) and
featsup's inference path (``model.pruned(k, optimize=True)``: batch norm folded,
channels-last). The measured speed-up of head k over the full model is printed next to
its FLOP ratio. Optionally pruned L2 is compared with segmentation-models-pytorch's
``UnetPlusPlus(encoder_name="resnet18")``.

With ``--dims 3`` the volumetric UNet++ (``spatial_dims=3``) is measured the same way at
64^3 with widths (16, 32, 64, 128, 256) on CPU and, when a CUDA device is available, at
128^3 with the default widths on it, each next to MONAI's ``BasicUNetPlusPlus``
(``spatial_dims=3``, the same widths) timed in the same interleaved loop.

All variants are timed in one run with interleaved repeats and medians, because this
machine is shared and absolute times swing. Nothing here asserts on time.

    python benchmarks/pruning_speed.py --device cpu
    python benchmarks/pruning_speed.py --device cuda --amp bf16 --compile --json out.json
    python benchmarks/pruning_speed.py --dims 3 --repeats 5 --json pruning3d.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

if "--thp" in sys.argv:  # read once by torch's CPU allocator, so before torch is imported
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from featsup.models import UNetPlusPlus


def gmacs(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Multiply-accumulates (1e9) of one forward, counted on the meta device."""
    meta = UNetPlusPlus.from_config(model.config) if hasattr(model, "config") else model
    meta = copy.deepcopy(meta).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.zeros(shape, device="meta"))
    return counter.get_total_flops() / 2e9


def make_timer(device: str, amp: str | None) -> Callable[[Callable[[], object]], float]:
    """Return ``time_once(fn) -> seconds`` for the device (CUDA events on GPU)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")

    def time_once(fn: Callable[[], object]) -> float:
        ctx = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), ctx:
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                return start.elapsed_time(end) / 1e3
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    return time_once


def interleaved(
    fns: dict[str, Callable[[], object]], time_once: Callable, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of each function, repeats interleaved across functions."""
    for fn in fns.values():
        for _ in range(warmup):
            time_once(fn)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(time_once(fn))
    return {name: statistics.median(ts) for name, ts in samples.items()}


def build_variants(args: argparse.Namespace, model: UNetPlusPlus) -> dict[str, nn.Module]:
    variants: dict[str, nn.Module] = {}
    for k in range(1, model.depth + 1):
        variants[f"eager L{k}"] = model.pruned(head=k).eval()
        fast = model.pruned(head=k, optimize=True)
        if args.compile:
            fast = torch.compile(fast, mode="max-autotune-no-cudagraphs")  # type: ignore[assignment]
        variants[f"featsup L{k}"] = fast
    if args.smp:
        import segmentation_models_pytorch as smp

        def smp_model() -> nn.Module:
            return smp.UnetPlusPlus(
                encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=2
            ).eval()

        variants["smp UnetPlusPlus r18"] = smp_model().to(args.device)
        variants["smp UnetPlusPlus r18 (cl)"] = smp_model().to(
            args.device, memory_format=torch.channels_last
        )
    return variants


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = UNetPlusPlus(1, 2, widths=args.widths).to(args.device)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 64, 64, device=args.device))  # realistic BN statistics
    model.eval()
    variants = build_variants(args, model)
    time_once = make_timer(args.device, args.amp)
    results: dict = {"settings": vars(args), "machine": machine(args.device), "batches": {}}
    for batch in args.batch:
        x = torch.randn(batch, 1, args.size, args.size, device=args.device)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns = {
            name: (lambda m=m, inp=(x_cl if "(cl)" in name else x): m(inp))
            for name, m in variants.items()
        }
        check_equal(model, variants, x)
        results["batches"][batch] = interleaved(fns, time_once, args.repeats, args.warmup)
    results["heads"] = head_stats(model, variants, args)
    return results


def check_equal(model: UNetPlusPlus, variants: dict[str, nn.Module], x: torch.Tensor) -> None:
    """The inference path must give the eager model's outputs (to 1e-4)."""
    with torch.inference_mode():
        full = model(x[:1])
        for k in range(1, model.depth + 1):
            fast = variants[f"featsup L{k}"](x[:1]).float()
            tol = 1e-4 if fast.dtype == torch.float32 and x.is_cpu else 5e-2
            torch.testing.assert_close(fast, full[k - 1].float(), atol=tol, rtol=tol)


def head_stats(model: UNetPlusPlus, variants: dict, args: argparse.Namespace) -> dict:
    shape = (1, 1, args.size, args.size)
    stats = {}
    for k in range(1, model.depth + 1):
        pruned = variants[f"eager L{k}"]
        stats[f"L{k}"] = {
            "params": sum(p.numel() for p in pruned.parameters()),
            "gmacs": gmacs(pruned, shape),
        }
    if args.smp:
        ref = variants["smp UnetPlusPlus r18"]
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            ref(torch.zeros(shape, device=args.device))
        stats["smp"] = {
            "params": sum(p.numel() for p in ref.parameters()),
            "gmacs": counter.get_total_flops() / 2e9,
        }
    return stats


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    thp = ", THP_MEM_ALLOC_ENABLE=1" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else ""
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads{thp}"


def print_table(results: dict) -> None:
    heads, depth = results["heads"], sum(1 for k in results["heads"] if k.startswith("L"))
    full = f"L{depth}"
    print(f"# machine: {results['machine']}; torch {torch.__version__}")
    for batch, times in results["batches"].items():
        print(f"\n## batch {batch}, {results['settings']['size']}^2 (median of repeats, ms)")
        print(
            "| head | params | GMACs | FLOP ratio | eager ms | featsup ms | eager speed-up "
            "| featsup speed-up | featsup/FLOP | featsup vs eager |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for k in range(1, depth + 1):
            h = heads[f"L{k}"]
            e, f = times[f"eager L{k}"], times[f"featsup L{k}"]
            flop_ratio = heads[full]["gmacs"] / h["gmacs"]
            sp_e, sp_f = times[f"eager {full}"] / e, times[f"featsup {full}"] / f
            print(
                f"| X0,{k} | {h['params'] / 1e6:.2f}M | {h['gmacs']:.1f} | {flop_ratio:.2f} | "
                f"{e * 1e3:.0f} | {f * 1e3:.0f} | {sp_e:.2f}x | {sp_f:.2f}x | "
                f"{sp_f / flop_ratio:.2f} | {e / f:.2f}x |"
            )
        if "smp" in heads:
            s = heads["smp"]
            for name in ("smp UnetPlusPlus r18", "smp UnetPlusPlus r18 (cl)"):
                t = times[name]
                print(
                    f"| {name} | {s['params'] / 1e6:.2f}M | {s['gmacs']:.1f} | | {t * 1e3:.0f} |"
                    f" | | | | featsup L2 is {t / times['featsup L2']:.2f}x faster |"
                )


# ---------------------------------------------------------------------------- volumes (--dims 3)
VOLUME_DEFAULTS = {"cpu": (64, (16, 32, 64, 128, 256)), "cuda": (128, (32, 64, 128, 256, 512))}


def monai_unetpp(widths: tuple[int, ...]) -> nn.Module:
    """MONAI's 3D BasicUNetPlusPlus with featsup's widths (the last up-sampling at w0)."""
    from monai.networks.nets import BasicUNetPlusPlus

    if len(widths) != 5:
        raise SystemExit(f"--widths: MONAI's BasicUNetPlusPlus has depth 4, got {widths}")
    return BasicUNetPlusPlus(
        spatial_dims=3, in_channels=1, out_channels=2, features=(*widths, widths[0])
    )


def run_volume(args: argparse.Namespace, device: str) -> dict:
    """Time featsup's pruned 3D heads and MONAI's BasicUNetPlusPlus, interleaved."""
    size, widths = VOLUME_DEFAULTS[device]
    size, widths = args.size or size, tuple(args.widths or widths)
    torch.manual_seed(0)
    model = UNetPlusPlus(1, 2, widths=widths, spatial_dims=3).to(device)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32, 32, device=device))  # realistic BN statistics
    model.eval()
    variants = build_variants(argparse.Namespace(**{**vars(args), "smp": False}), model)
    variants["MONAI"] = monai_unetpp(widths).to(device).eval()
    variants["MONAI (cl3d)"] = copy.deepcopy(variants["MONAI"]).to(
        memory_format=torch.channels_last_3d
    )
    x = torch.randn(1, 1, size, size, size, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    fns = {
        name: (lambda m=m, inp=(x_cl if "(cl3d)" in name else x): m(inp))
        for name, m in variants.items()
    }
    check_equal(model, variants, x)
    amp = args.amp if device == "cuda" else None
    times = interleaved(fns, make_timer(device, amp), args.repeats, args.warmup)
    shape = (1, 1, size, size, size)
    stats = {
        name: {
            "params": sum(p.numel() for p in variants[name].parameters()),
            "gmacs": gmacs(variants[name], shape),
        }
        for name in [f"eager L{k}" for k in range(1, model.depth + 1)] + ["MONAI"]
    }
    return {"device": device, "machine": machine(device), "size": size, "widths": widths,
            "times": times, "stats": stats}  # fmt: skip


def print_volume_table(result: dict) -> None:
    times, stats, size = result["times"], result["stats"], result["size"]
    depth = sum(1 for name in stats if name.startswith("eager"))
    full, monai = stats[f"eager L{depth}"]["gmacs"], stats["MONAI"]["gmacs"]
    print(f"\n## 3D, {result['device']} ({result['machine']}), batch 1, {size}^3, "
          f"widths {result['widths']} (median of repeats, ms)")  # fmt: skip
    print("| model | params | GMACs | eager ms | featsup ms | FLOP ratio vs MONAI "
          "| speed-up vs MONAI (featsup) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for k in range(1, depth + 1):
        h = stats[f"eager L{k}"]
        e, f = times[f"eager L{k}"], times[f"featsup L{k}"]
        print(f"| featsup X0,{k} | {h['params'] / 1e6:.2f}M | {h['gmacs']:.1f} | "
              f"{e * 1e3:.0f} | {f * 1e3:.0f} | {monai / h['gmacs']:.2f} | "
              f"{times['MONAI'] / f:.2f}x |")  # fmt: skip
    m, cl3d = stats["MONAI"], times["MONAI (cl3d)"]
    print(f"| MONAI BasicUNetPlusPlus | {m['params'] / 1e6:.2f}M | {monai:.1f} | "
          f"{times['MONAI'] * 1e3:.0f} | (cl3d: {cl3d * 1e3:.0f}) | 1.00 | 1.00x |")  # fmt: skip
    f1, f2, f4 = (times[f"featsup L{k}"] for k in (1, min(2, depth), depth))
    g1, g2 = stats["eager L1"]["gmacs"], stats[f"eager L{min(2, depth)}"]["gmacs"]
    print(f"\n- latency ratio L{depth}/L1 {f4 / f1:.2f} vs FLOP ratio {full / g1:.2f}: "
          f"{f4 / f1 / (full / g1):.2f} of it (target >= 0.85)")  # fmt: skip
    print(f"- full featsup X0,{depth} vs MONAI: {times['MONAI'] / f4:.2f}x as fast (target >= 1)")
    sp2 = times["MONAI"] / f2
    print(f"- X0,2 vs MONAI: {sp2:.2f}x faster, FLOP ratio {monai / g2:.2f}: "
          f"{sp2 / (monai / g2):.2f} of it (target >= 0.85)")  # fmt: skip


def run_volumes(args: argparse.Namespace) -> dict:
    devices = [args.device] if args.device else ["cpu"] + ["cuda"] * torch.cuda.is_available()
    results: dict = {"settings": vars(args), "torch": torch.__version__, "volumes": []}
    for device in devices:
        result = run_volume(args, device)
        print_volume_table(result)
        results["volumes"].append(result)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D images or 3D volumes")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cpu in 2D; in 3D cpu, then cuda when one is available",
    )
    p.add_argument("--size", type=int, default=None, help="default: 512 (2D), 64 / 128 (3D)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="2D only")
    p.add_argument("--widths", type=int, nargs="+", default=None, help="default: see above")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="CUDA autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the inference path")
    p.add_argument("--no-smp", dest="smp", action="store_false", help="skip the smp comparison")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--thp",
        action="store_true",
        help="CPU: back large tensors with transparent huge pages (THP_MEM_ALLOC_ENABLE=1)",
    )
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    if args.dims == 2:
        args.device = args.device or "cpu"
        args.size = args.size or 512
        args.widths = args.widths or [32, 64, 128, 256, 512]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available; use --device cpu")
    if args.amp and args.device != "cuda" and args.dims == 2:
        p.error("--amp applies to --device cuda only")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device in ("cuda", None) and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dims == 3:
        results = run_volumes(args)
    else:
        results = run(args)
        print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
