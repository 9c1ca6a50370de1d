"""Scratch (2026-12-08): run a saved cascade on the look block's 40 cases (5470-5509) and keep
what grow_look.py needs.

    python docs/results/scratch/grow_look_cache.py outputs/s55/run70 outputs/s54/vsa/r69_plain/fresh outputs/s56/grow/s0
"""
import sys, numpy as np, time
from featsup import data as fd
from featsup.inference import load_cascade
run, fresh, out = sys.argv[1], sys.argv[2], sys.argv[3]
c = load_cascade(run + "/cascade.pt", device="cpu")
cases = fd.find_cases(fresh)[470:510]
t0 = time.time()
for case in cases:
    loaded = fd.load_case(case)
    hu = np.asarray(loaded.volume, np.float32)
    r = c(hu)
    np.savez_compressed(f"{out}/{case.case_id}.npz", labels=r.labels, p=r.tumour_probability.astype(np.float16),
                        liver_mask=r.liver_mask, truth=np.asarray(loaded.labels, np.uint8), hu=hu.astype(np.int16),
                        spacing=np.asarray(loaded.spacing, float))
    print(case.case_id, f"{time.time()-t0:.0f}s", flush=True)
