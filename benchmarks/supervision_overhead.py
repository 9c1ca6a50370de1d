"""Training-step cost of feature supervision: plain UNet++ vs BS / ES, live teacher vs cache.

Every variant trains the same deep-supervised UNet++ (Dice + CE averaged over the four
heads, AdamW) on the same batch; the supervised ones add the Smooth-L1 feature loss of a
frozen encoding UNet++ (``skip_connections=False``) at the bottleneck (BS) or at every
encoder level (ES), with the teacher run live on the one-hot label map (its encoder
only) or read from a :class:`featsup.supervision.TeacherFeatureCache` built beforehand.

Rounds are interleaved (each round runs every variant once, in a shuffled order), and
the table reports the median step time and the median over rounds of each variant's
time divided by the plain step of the same round, so that a noisy, shared machine biases
every variant alike. Nothing is asserted.

Usage:
    python benchmarks/supervision_overhead.py [--device cpu|cuda] [--small]
        [--size 256] [--batch 8] [--rounds 7] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable

import torch

from featsup.losses import deep_supervision_loss, feature_loss, one_hot
from featsup.models import UNetPlusPlus
from featsup.supervision import FeatureSupervisor

FULL = (32, 64, 128, 256, 512)
SMALL = (16, 32, 64, 128, 256)
CACHE_SAMPLES = 16


def make_batch(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Discs of random centre and radius on a noisy background, labels 0 / 1."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx = torch.randint(size // 4, 3 * size // 4, (2,), generator=gen).tolist()
        r = int(torch.randint(size // 10, size // 4, (1,), generator=gen))
        target[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    image = target[:, None].float() + 0.5 * torch.randn(n, 1, size, size, generator=gen)
    return image, target


def build_steps(
    widths: tuple[int, ...], image: torch.Tensor, target: torch.Tensor, device: torch.device
) -> dict[str, Callable[[int], None]]:
    """One training-step closure per variant; ``step(i)`` uses cached sample indices i.."""
    teacher = UNetPlusPlus(2, 2, widths=widths, skip_connections=False).to(device)
    n = len(image)
    pool_image, pool_target = make_batch(CACHE_SAMPLES, image.shape[-1], seed=1)
    pool = list(zip(pool_image, pool_target, strict=True))
    image, target = image.to(device), target.to(device)
    steps: dict[str, Callable[[int], None]] = {}

    def plain() -> Callable[[int], None]:
        torch.manual_seed(0)
        model = UNetPlusPlus(1, 2, widths=widths).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(i: int) -> None:
            loss = deep_supervision_loss(model(image), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    def supervised(levels: str, cached: bool) -> Callable[[int], None]:
        torch.manual_seed(0)
        model = UNetPlusPlus(1, 2, widths=widths).to(device)
        sup = FeatureSupervisor(model, teacher, levels=levels)  # type: ignore[arg-type]
        cache = sup.cache_teacher_features(pool, batch_size=8) if cached else None
        if cache is not None and device.type == "cuda":
            cache = cache.to(device)  # gather in GPU memory, no host copy per step
        opt = torch.optim.AdamW(sup.parameters(), lr=1e-4)

        def step(i: int) -> None:
            if cache is None:
                out = sup(image, target)
            else:
                index = [(i * n + k) % CACHE_SAMPLES for k in range(n)]
                out = sup(image, teacher_features=cache.lookup(index, device=device))
            loss = deep_supervision_loss(out.output, target) + out.feature_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    steps["UN (plain)"] = plain()
    for levels, tag in (("bottleneck", "BS"), ("all", "ES")):
        steps[f"{tag} live teacher"] = supervised(levels, cached=False)
        steps[f"{tag} cached features"] = supervised(levels, cached=True)
    steps.update(parts(teacher, pool, image, target, device))
    return steps


def parts(
    teacher: UNetPlusPlus,
    pool: list[tuple[torch.Tensor, torch.Tensor]],
    image: torch.Tensor,
    target: torch.Tensor,
    device: torch.device,
) -> dict[str, Callable[[int], None]]:
    """The pieces ES adds to a step, timed alone: their sum estimates the overhead."""
    n = len(image)
    probe = UNetPlusPlus(1, 2, widths=teacher.widths).to(device)
    sup = FeatureSupervisor(probe, teacher, levels="all")
    cache = sup.cache_teacher_features(pool, batch_size=8)
    if device.type == "cuda":
        cache = cache.to(device)
    with torch.no_grad():
        shapes = [f.shape for f in probe.encoder_features(image)]
    sup.close()
    teacher_features = [torch.rand(s, device=device) for s in shapes]
    student_features = [torch.rand(s, device=device, requires_grad=True) for s in shapes]

    def live_teacher(i: int) -> None:
        with torch.no_grad():
            teacher.encoder_features(one_hot(target, 2, dtype=image.dtype))

    def lookup(i: int) -> None:
        cache.lookup([(i * n + k) % CACHE_SAMPLES for k in range(n)], device=device)

    def loss(i: int) -> None:
        parts = [
            feature_loss(s, t) for s, t in zip(student_features, teacher_features, strict=True)
        ]
        (sum(parts) / len(parts)).backward()  # type: ignore[operator]

    return {
        "part: ES teacher pass": live_teacher,
        "part: ES cache lookup": lookup,
        "part: ES loss fwd+bwd": loss,
    }


def run(
    steps: dict[str, Callable[[int], None]], rounds: int, warmup: int, device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Interleaved, shuffled rounds; wall-clock and process CPU time of every call."""

    def timed(fn: Callable[[int], None], i: int) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    for i in range(warmup):
        for fn in steps.values():
            timed(fn, i)
    times: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    order = list(steps)
    rng = random.Random(0)
    for r in range(rounds):
        rng.shuffle(order)
        for name in order:
            wall, cpu = timed(steps[name], warmup + r)
            times["wall"].setdefault(name, []).append(wall)
            times["cpu"].setdefault(name, []).append(cpu)
    return {clock: {name: values[name] for name in steps} for clock, values in times.items()}


def summarise(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median time, median of per-round ratios to plain, ratio of minimums."""
    plain = times["UN (plain)"]
    rows: dict[str, dict[str, float]] = {}
    for name, values in times.items():
        ratios = [v / p for v, p in zip(values, plain, strict=True)]
        rows[name] = {
            "median_s": statistics.median(values),
            "ratio_median": statistics.median(ratios),
            "ratio_of_minimums": min(values) / min(plain),
            "ratio_low": min(ratios),
            "ratio_high": max(ratios),
        }
    loss = rows["part: ES loss fwd+bwd"]["ratio_median"]
    rows["ES live, from parts"] = {
        "ratio_median": 1 + rows["part: ES teacher pass"]["ratio_median"] + loss
    }
    rows["ES cached, from parts"] = {
        "ratio_median": 1 + rows["part: ES cache lookup"]["ratio_median"] + loss
    }
    return rows


def table(summary: dict[str, dict[str, dict[str, float]]], clocks: list[str]) -> None:
    head = f"{'variant':<24} {'median step (s)':>15}"
    for clock in clocks:
        head += f" {'x plain ' + clock:>12} {'[low, high]':>15} {'of minimums':>11}"
    print(head)
    for name, wall in summary["wall"].items():
        line = f"{name:<24} " + (f"{wall['median_s']:>15.4f}" if "median_s" in wall else " " * 15)
        for clock in clocks:
            row = summary[clock][name]
            line += f" {row['ratio_median']:>12.3f}"
            if "ratio_low" in row:
                spread = f"[{row['ratio_low']:.3f}, {row['ratio_high']:.3f}]"
                line += f" {spread:>15} {row['ratio_of_minimums']:>11.3f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--small", action="store_true", help=f"widths {SMALL} instead of {FULL}")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: expected a CUDA device, got none")
    widths = SMALL if args.small else FULL
    image, target = make_batch(args.batch, args.size)
    steps = build_steps(widths, image, target, device)
    times = run(steps, args.rounds, args.warmup, device)
    summary = {clock: summarise(values) for clock, values in times.items()}
    # process CPU time is robust to other processes only when this one runs one thread
    clocks = ["wall", "cpu"] if device.type == "cpu" and torch.get_num_threads() == 1 else ["wall"]

    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"training step, UNet++ widths {widths}, deep supervision, batch {args.batch}, "
        f"{args.size}x{args.size}, {args.device} ({machine}), {args.rounds} rounds"
    )
    table(summary, clocks)
    if args.json:
        payload = {
            "benchmark": "supervision_overhead",
            "device": args.device,
            "machine": machine,
            "torch": torch.__version__,
            "widths": list(widths),
            "size": args.size,
            "batch": args.batch,
            "rounds": args.rounds,
            "clocks": clocks,
            "summary": summary,
            "times": times,
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
