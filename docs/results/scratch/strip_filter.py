"""Scratch: a finished run's folder copied with its cascade as saved without a tumour filter.

The run's tuning before the filter (threshold, smallest tumour) is read from its log line
"... CRF X, tumour probability > T, tumours of >= N voxels, ..." (the example prints it
before adding the filter); models, heads, CRFs and TTA are the saved cascade's.
"""
import re
import shutil
import sys
from pathlib import Path

from featsup.inference import Cascade, load_cascade
from featsup.inference.bundle import cascade_arguments

run, log, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
text = log.read_text().replace("\r", "\n")
m = re.search(r"tumour probability > ([0-9.]+), tumours of >= (\d+) voxels", text)
threshold, min_voxels = float(m.group(1)), int(m.group(2))
out.mkdir(parents=True, exist_ok=True)
for item in run.iterdir():
    if item.name in ("cascade.pt",):
        continue
    target = out / item.name
    if not target.exists():
        target.symlink_to(item.resolve())
saved = load_cascade(run / "cascade.pt", device="cpu")
plain = Cascade(saved.liver_model, saved.tumour_model,
                **{**cascade_arguments(saved), "tumour_filter": None,
                   "tumour_threshold": threshold, "tumour_min_voxels": min_voxels})
plain.training_summary = saved.training_summary
plain.save(out / "cascade.pt")
print(f"{out}: threshold {threshold}, smallest tumour {min_voxels}, no filter")
