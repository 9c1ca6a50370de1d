"""Scratch (2026-12-08, the look before rule AP): grow the cascade's tumour components by HU on
cached look-block outputs (grow_look_cache.py, grow_look_filter_cache.py), print the missed
voxels of found lesions by HU and every variant's per-case / global Dice.

    python docs/results/scratch/grow_look.py outputs/s56/grow/s0 outputs/s56/grow/s42f
"""
import sys, glob, numpy as np
from scipy import ndimage
cube = np.ones((3, 3, 3), bool)
plane = np.zeros((3, 3, 3), bool); plane[1] = True

def counts(pred, true):
    return (int((pred & true).sum()), int(pred.sum()), int(true.sum()))

def crit(rows):
    rows = np.asarray(rows, float)
    pc = [1.0 if b + c == 0 else 2 * a / (b + c) for a, b, c in rows]
    return float(np.mean(pc)), float(2 * rows[:, 0].sum() / (rows[:, 1].sum() + rows[:, 2].sum()))

def grow(d, smooth=1, delta=15.0, iters=5, frac=0.5, bright=False, struct=plane, min_size=0):
    pred = d["labels"] == 2
    if not pred.any():
        return pred
    hu = d["hu"].astype(np.float32)
    s = ndimage.uniform_filter(hu, size=(1, 2 * smooth + 1, 2 * smooth + 1)) if smooth else hu
    organ = d["labels"] > 0
    liver = organ & ~pred
    if not liver.any():
        return pred
    lm = float(np.median(s[liver]))
    comps, n = ndimage.label(pred, structure=cube)
    out = pred.copy()
    for j in range(1, n + 1):
        m = comps == j
        if m.sum() < min_size:
            continue
        cm = float(np.median(s[m]))
        if cm < lm - delta:
            allowed = s < cm + frac * (lm - cm)
        elif bright and cm > lm + delta:
            allowed = s > cm - frac * (cm - lm)
        else:
            continue
        allowed &= ndimage.binary_dilation(organ, plane)
        g = ndimage.binary_dilation(m, struct, iterations=iters, mask=allowed | m) if iters else m
        out |= g
    return out

def main():
    for folder in sys.argv[1:]:
        files = sorted(glob.glob(folder + "/*.npz"))
        data = []
        for f in files:
            z = np.load(f)
            data.append({k: z[k] for k in z.files})
        true = [d["truth"] == 2 for d in data]
        base = [counts(d["labels"] == 2, t) for d, t in zip(data, true)]
        b = crit(base)
        # oracle: found lesions completed
        orc = []
        for d, t in zip(data, true):
            les, n = ndimage.label(t, structure=cube)
            pred = d["labels"] == 2
            hit = np.unique(les[pred & t]); hit = hit[hit > 0]
            orc.append(counts(pred | np.isin(les, hit), t))
        o = crit(orc)
        print(f"{folder}: {len(data)} cases; base {b[0]:.3f} / {b[1]:.3f}; oracle (found lesions completed) {o[0]:.3f} / {o[1]:.3f}")
        rows_d = []
        for d, t in zip(data, true):
            les, n = ndimage.label(t, structure=cube)
            pred = d["labels"] == 2
            sm = ndimage.uniform_filter(d["hu"].astype(np.float32), size=(1, 3, 3))
            liv = d["truth"] == 1
            for j in np.unique(les[pred & t]):
                if j == 0:
                    continue
                m = les == j
                ring = ndimage.binary_dilation(m, cube, iterations=3) & liv
                miss, hit = m & ~pred, m & pred
                if miss.sum() == 0 or not ring.any():
                    continue
                rows_d.append((int(m.sum()), int(miss.sum()), float(np.median(sm[hit])), float(np.median(sm[miss])), float(np.median(sm[ring]))))
        a = np.array(rows_d)
        tot = a[:, 1].sum()
        print(f"  found lesions with missed voxels: {len(a)}, missed voxels {tot:.0f}; voxel-weighted: missed darker than ring by >20 HU: {a[a[:,3] < a[:,4]-20, 1].sum()/tot:.2f}, within 20: {a[abs(a[:,3]-a[:,4])<=20, 1].sum()/tot:.2f}, brighter: {a[a[:,3] > a[:,4]+20, 1].sum()/tot:.2f}")
        for r in sorted(rows_d, key=lambda r: -r[1])[:8]:
            print(f"    lesion {r[0]} vox, missed {r[1]}, hit HU {r[2]:.0f}, missed HU {r[3]:.0f}, ring HU {r[4]:.0f}")
        variants = []
        for ms in (200, 500, 1000, 2000):
            for iters in (2, 5, 20):
                variants.append(dict(smooth=1, delta=20.0, iters=iters, frac=0.5, min_size=ms))
        for smooth in (1, 2):
            for delta in (10.0, 20.0):
                for iters in (2, 5, 20):
                    for frac in (0.5, 0.7):
                        variants.append(dict(smooth=smooth, delta=delta, iters=iters, frac=frac))

        variants.append(dict(smooth=1, delta=15.0, iters=5, frac=0.5, bright=True))
        variants.append(dict(smooth=1, delta=15.0, iters=3, frac=0.5, struct=cube))
        for v in variants:
            rows = [counts(grow(d, **v), t) for d, t in zip(data, true)]
            r = crit(rows)
            name = ",".join(f"{k}={('3d' if val is cube else val) if k == 'struct' else val}" for k, val in v.items())
            print(f"  {name:55s} {r[0]:.3f} / {r[1]:.3f}   d {r[0]-b[0]:+.3f} / {r[1]-b[1]:+.3f}")

main()
