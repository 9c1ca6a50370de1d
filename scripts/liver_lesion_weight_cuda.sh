#!/usr/bin/env bash
# The liver stage's lesion weight on validation, paired by seed, on one GPU; then the GPU
# checks that need the card to themselves. One call of a 15-minute lease (docs/cascade.md).
#
#   bash scripts/liver_lesion_weight_cuda.sh OUT_DIR
#   SEEDS="31 32 33" CHECKS=0 SCORE=0 bash scripts/liver_lesion_weight_cuda.sh OUT_DIR  # runs only
#
# 1. For each of SEEDS (fresh phantoms and splits), the example's CPU recipe
#    (--preset cpu) twice on the GPU, --liver-lesion-weight 1 (the paper) and WEIGHT, all
#    runs at once, --validation-only: every number is a validation case's; no test case is
#    scored. Meanwhile the CUDA tests run (correctness only, so sharing the card is fine).
# 2. benchmarks/liver_lesions.py scores each pair on its validation cases.
# 3. The CUDA benchmarks that time things, alone on the card: scripts/cuda_checks.sh's
#    pruning_3d and supervision steps.
set -u
out=${1:-outputs/llw}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
seeds=${SEEDS:-31 32 33 34}
weight=${WEIGHT:-5}
limit=${RUN_LIMIT:-300}

"$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nproc
start=$SECONDS
checks=${CHECKS:-1}
[ "$checks" = 1 ] && STEPS=tests nice -n 5 bash scripts/cuda_checks.sh "$out" > "$out/tests.log" 2>&1 &
for s in $seeds; do
    for w in 1 "$weight"; do
        OMP_NUM_THREADS=2 timeout "$limit" "$py" examples/lits_cascade.py --device cuda \
            --preset cpu --validation-only --seed "$s" --liver-lesion-weight "$w" \
            --out "$out/runs/w${w}_s$s" > "$out/runs/w${w}_s$s.log" 2>&1 &
    done
done
wait
echo "=== runs and tests done in $((SECONDS - start))s"
for f in "$out"/runs/*.log; do echo "--- $f"; tail -n 4 "$f"; done
pairs=()
for s in $seeds; do pairs+=("$out/runs/w1_s$s:$out/runs/w${weight}_s$s"); done
if [ "${SCORE:-1}" = 1 ]; then
    echo "=== liver_lesions ($(date +%T))"
    OMP_NUM_THREADS=2 timeout "${SCORE_LIMIT:-90}" "$py" benchmarks/liver_lesions.py \
        --device cuda --workers 8 --pairs "${pairs[@]}" --json "$out/liver_lesions.json"
    echo "=== liver_lesions: rc=$? at $((SECONDS - start))s"
fi
[ "$checks" = 1 ] && STEPS="pruning_3d supervision" bash scripts/cuda_checks.sh "$out"
echo "=== all done at $((SECONDS - start))s"
