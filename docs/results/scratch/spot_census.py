"""Scratch: on the look's 40 validation-type cases (split 0, fresh 5470-5509), which lesions
the model's components at 0.2 touch, and which the dark spots touch beside them."""
import json
import sys

import numpy as np
from scipy import ndimage

from featsup import data as fd
from featsup.inference import Cascade, load_cascade
from featsup.inference.bundle import cascade_arguments
from featsup.postprocess import dark_spots

cube = np.ones((3, 3, 3), bool)
saved = load_cascade("outputs/s54/r69_plain/cascade.pt", device="cpu")
c = Cascade(saved.liver_model, saved.tumour_model,
            **{**cascade_arguments(saved), "tumour_threshold": 0.2, "tumour_min_voxels": 0})
cases = fd.find_cases("outputs/s54/vsa/r69_plain/fresh")[470:510]
settings = [(t, d, m) for t in (10.0, 15.0, 25.0) for d, m in ((6, 500), (3, 500), (6, 2000))]
rows = {s: [0, 0, 0, 0] for s in settings}  # spots comps, comps on lesion, lesions new, voxels
lesions_total, lesions_model = 0, 0
sizes_new = {s: [] for s in settings}
for case in cases:
    loaded = fd.load_case(case)
    truth = np.asarray(loaded.labels)
    stage = c.liver_stage(np.asarray(loaded.volume))
    labels = c.tumour_stage(stage).labels
    les, n = ndimage.label(truth == 2, structure=cube)
    lesions_total += n
    hit_model = set(np.unique(les[labels == 2])) - {0}
    lesions_model += len(hit_model)
    for s in settings:
        sp = dark_spots(stage.image, stage.mask, s[0], window=c.tumour_preprocessing.hu_window,
                        depth=s[1], max_voxels=s[2]) & (labels == 1)
        comps, k = ndimage.label(sp, structure=cube)
        on = set(np.unique(comps[truth == 2])) - {0}
        hit = set(np.unique(les[sp])) - {0}
        new = hit - hit_model
        rows[s][0] += k; rows[s][1] += len(on); rows[s][2] += len(new); rows[s][3] += int(sp.sum())
        sizes_new[s] += [int((les == j).sum()) for j in new]
print(f"40 cases: {lesions_total} lesions, {lesions_model} touched by the model's components at 0.2")
for s, r in rows.items():
    print(f"spots {s[0]:g} HU, depth {s[1]} px, <= {s[2]} voxels: {r[0]} components ({r[1]} on a lesion), "
          f"{r[2]} lesions the model missed touched (sizes {sorted(sizes_new[s])}), {r[3]} voxels")
