#!/usr/bin/env bash
# featsup installed from its built wheel (not the source tree) in a fresh virtual environment:
# `featsup predict` with a cascade the example trained (a short run) writes outputs aligned
# with their inputs, and `featsup evaluate` reproduces the example's per-case Dice.
#   scripts/check_wheel_predict.sh [WORKDIR]      (needs the package index for the extras)
set -euo pipefail
work=${1:-$(mktemp -d)}
cd "$(dirname "$0")/.."; repo=$(pwd)
rm -rf $work/dist $work/venv $work/run $work/pred
python3 -m pip wheel --no-deps -w $work/dist . -q
python3 -m venv $work/venv
. $work/venv/bin/activate
pip install -q "$(ls $work/dist/featsup-*.whl)[all]"
cd $work   # not the source tree
python -c "import featsup, sys; print('featsup from', featsup.__file__); assert 'site-packages' in featsup.__file__"
# a short training run of the example (the example lives in the repo, not in the wheel)
OMP_NUM_THREADS=2 python $repo/examples/lits_cascade.py --out $work/run --cases 6 \
  --phantom-shape 24 128 128 --size 64 --tumour-size 64 --steps 60 --teacher-steps 60 \
  --widths 4 8 16 32 64 --batch-size 4 --crf none --val-cases 2 > $work/example.log 2>&1
test_ids=$(python -c "import json; print(' '.join(json.load(open('$work/run/metrics.json'))['split']['test']))")
mkdir -p $work/in $work/truth
for i in $test_ids; do
  cp $work/run/phantom/volume-$i.nii.gz $work/in/
  cp $work/run/phantom/segmentation-$i.nii.gz $work/truth/
done
featsup --help | head -5
featsup predict --model $work/run/cascade.pt --input $work/in --output $work/pred --device cpu
featsup evaluate --prediction $work/pred --truth $work/truth --json $work/eval.json
WORK=$work python - <<'PY'
import json, nibabel as nib, numpy as np, glob, os
w = os.environ['WORK']
ex = json.load(open(w + '/run/metrics.json'))
ev = json.load(open(w + '/eval.json'))
for c in ex["cases"]:
    e = next(r for r in ev["cases"] if r["case"].endswith(f"-{c['case']}"))
    print(c["case"], "example liver/tumour", round(c["liver"]["dice"], 6), round(c["tumour"]["dice"], 6),
          "| featsup evaluate", round(e["liver"]["dice"], 6), round(e["tumour"]["dice"], 6))
    assert abs(c["liver"]["dice"] - e["liver"]["dice"]) < 1e-9 and abs(c["tumour"]["dice"] - e["tumour"]["dice"]) < 1e-9
for p in sorted(glob.glob(w + '/pred/*.nii.gz')):
    src = w + '/in/' + os.path.basename(p).replace('segmentation', 'volume')
    a, b = nib.load(p), nib.load(src)
    labels = sorted(np.unique(np.asarray(a.dataobj)).tolist())
    print(os.path.basename(p), "affine equal:", np.allclose(a.affine, b.affine), "labels:", labels)
    assert np.allclose(a.affine, b.affine) and a.shape == b.shape and set(labels) <= {0, 1, 2}
print("per-case Dice of featsup evaluate == the example's: OK")
PY
