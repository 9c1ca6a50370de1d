"""Scratch: the lesions the model's components at 0.2 miss on the look's 40 cases: size,
contrast to the liver around them, depth inside the reference liver, peak probability."""
import numpy as np
from scipy import ndimage

from featsup import data as fd
from featsup.inference import Cascade, load_cascade
from featsup.inference.bundle import cascade_arguments

cube = np.ones((3, 3, 3), bool)
saved = load_cascade("outputs/s54/r69_plain/cascade.pt", device="cpu")
c = Cascade(saved.liver_model, saved.tumour_model,
            **{**cascade_arguments(saved), "tumour_threshold": 0.2, "tumour_min_voxels": 0})
cases = fd.find_cases("outputs/s54/vsa/r69_plain/fresh")[470:510]
rows = []
for case in cases:
    loaded = fd.load_case(case)
    truth, hu = np.asarray(loaded.labels), np.asarray(loaded.volume, np.float32)
    sp = np.asarray(loaded.spacing, float)
    r = c(hu)
    les, n = ndimage.label(truth == 2, structure=cube)
    depth = ndimage.distance_transform_edt(truth > 0, sampling=sp)
    liver = truth == 1
    for j in range(1, n + 1):
        m = les == j
        ring = ndimage.binary_dilation(m, cube, iterations=3) & liver
        contrast = float(hu[m].mean() - (hu[ring].mean() if ring.any() else np.nan))
        inside = float((r.liver_mask[m]).mean())
        rows.append((case.case_id, int(m.sum()), contrast, float(depth[m].max()),
                     float(r.tumour_probability[m].max()), bool((r.labels[m] == 2).any()), inside))
rows.sort(key=lambda t: t[1])
found = [t for t in rows if t[5]]
missed = [t for t in rows if not t[5]]
print(f"{len(rows)} lesions, {len(found)} touched by the cascade (threshold 0.2, CRFs, no filter), {len(missed)} missed")
def summary(ts, name):
    a = np.array([t[1:5] + (t[6],) for t in ts], float)
    print(f"{name}: voxels median {np.median(a[:,0]):.0f} (<100: {(a[:,0]<100).sum()}, 100-499: {((a[:,0]>=100)&(a[:,0]<500)).sum()}, >=500: {(a[:,0]>=500).sum()}); "
          f"contrast HU median {np.nanmedian(a[:,1]):.0f} (darker than -20: {(a[:,1]<-20).sum()}, -20..+20: {((a[:,1]>=-20)&(a[:,1]<=20)).sum()}, brighter: {(a[:,1]>20).sum()}); "
          f"deepest mm median {np.median(a[:,2]):.1f} (<5 mm: {(a[:,2]<5).sum()}); peak prob median {np.median(a[:,3]):.3f}; in the liver mask median {np.median(a[:,4]):.2f} (<0.5: {(a[:,4]<0.5).sum()})")
summary(found, "found")
summary(missed, "missed")
for t in missed:
    print(f"  case {t[0]}: {t[1]} voxels, contrast {t[2]:+.0f} HU, {t[3]:.1f} mm deep, peak p {t[4]:.3f}, in mask {t[6]:.2f}")
