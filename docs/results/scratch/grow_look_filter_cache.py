"""Scratch (2026-12-08): b_s42's saved cascade with today's default filter (as tumour_filter.py builds it), then
cached outputs on the look block's 40 cases (grow_look_cache.py's layout).

    python docs/results/scratch/grow_look_filter_cache.py outputs/s54/b_s42 outputs/s54/vsa/b_s42/fresh outputs/s56/grow/s42f
"""
import json, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, "benchmarks")
from tumour_filter import crf_stages, run_cases
from featsup import data as fd
from featsup.inference import add_lesion_filter, load_cascade, tune_on_validation
run, fresh, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
metrics = json.loads((run / "metrics.json").read_text())
seed = metrics["settings"].get("train_seed") or metrics["settings"]["seed"]
saved = load_cascade(run / "cascade.pt", device="cpu")
cases = run_cases(run)
val = [fd.load_case(c) for c in cases["val"]]
train = fd.LazyCases(cases["train"][:80])
tuning = tune_on_validation(saved, val, heads=(saved.liver_head, saved.tumour_head), crf=crf_stages(saved),
                            liver_crf=saved.liver_crf, tumour_crf=saved.tumour_crf,
                            tumour_threshold=saved.tumour_threshold, tumour_min_voxels=saved.tumour_min_voxels,
                            criterion=metrics["settings"]["tumour_criterion"], tumour_tta=saved.tumour_tta)
t0 = time.time()
filtered, info = add_lesion_filter(tuning, train, val, steps=800, seed=seed, keeps=0.9, liver="model-no-crf",
                                   tumour_crf=False, threshold=0.2)
c = filtered.cascade
print("filter", f"{time.time()-t0:.0f}s", c.tumour_threshold, c.tumour_min_voxels, c.tumour_filter_keep, flush=True)
for case in fd.find_cases(fresh)[470:510]:
    loaded = fd.load_case(case)
    hu = np.asarray(loaded.volume, np.float32)
    r = c(hu)
    np.savez_compressed(f"{out}/{case.case_id}.npz", labels=r.labels, p=r.tumour_probability.astype(np.float16),
                        liver_mask=r.liver_mask, truth=np.asarray(loaded.labels, np.uint8), hu=hu.astype(np.int16),
                        spacing=np.asarray(loaded.spacing, float))
    print(case.case_id, f"{time.time()-t0:.0f}s", flush=True)
