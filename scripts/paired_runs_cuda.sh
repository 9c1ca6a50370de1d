#!/usr/bin/env bash
# Two settings of the example, paired by seed, on validation only, on one GPU; optionally
# the GPU checks that need the card to themselves. One call of a 15-minute lease
# (docs/cascade.md).
#
#   A="--liver-lesion-weight 1" B="--liver-lesion-weight 5" bash scripts/paired_runs_cuda.sh OUT
#   A="--variant ES-DS" B="--variant UN-DS" SEEDS="34 35 36" CHECKS=0 \
#       bash scripts/paired_runs_cuda.sh OUT
#
# 1. For each of SEEDS (fresh phantoms and splits), the example's CPU recipe
#    (--preset cpu) on the GPU with the flags A (run OUT/runs/a_sN) and B (OUT/runs/b_sN),
#    all runs at once, --validation-only: every number is a validation case's; no test case
#    is scored. With CHECKS=1 the CUDA tests run meanwhile (correctness only, so sharing
#    the card is fine).
# 2. benchmarks/liver_lesions.py scores each pair on its validation cases (SCORE=1).
# 3. PACK=1 packs each seed's two runs (cascade.pt, metrics.json, log) into OUT/sN.tar, to
#    score them elsewhere on the same phantom (it is rebuilt from --seed).
# 4. CHECKS=1: the CUDA benchmarks that time things, alone on the card:
#    scripts/cuda_checks.sh's pruning_3d and supervision steps.
set -u
out=${1:-outputs/paired}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
seeds=${SEEDS:-31 32 33}
a=${A:?set A to the flags of the first setting}
b=${B:?set B to the flags of the second setting}
limit=${RUN_LIMIT:-450}

"$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nproc
start=$SECONDS
checks=${CHECKS:-0}
[ "$checks" = 1 ] && STEPS=tests nice -n 5 bash scripts/cuda_checks.sh "$out" > "$out/tests.log" 2>&1 &
for s in $seeds; do
    for side in a b; do
        if [ $side = a ]; then flags=$a; else flags=$b; fi
        # shellcheck disable=SC2086  # the flags are words
        OMP_NUM_THREADS=2 timeout "$limit" "$py" examples/lits_cascade.py --device cuda \
            --preset cpu --validation-only --seed "$s" $flags \
            --out "$out/runs/${side}_s$s" > "$out/runs/${side}_s$s.log" 2>&1 &
    done
done
wait
echo "=== runs done in $((SECONDS - start))s (A: $a; B: $b)"
for f in "$out"/runs/*.log; do echo "--- $f"; tail -n 3 "$f"; done
pairs=()
for s in $seeds; do pairs+=("$out/runs/a_s$s:$out/runs/b_s$s"); done
if [ "${PACK:-1}" = 1 ]; then
    for s in $seeds; do
        tar -cf "$out/s$s.tar" -C "$out/runs" "a_s$s.log" "b_s$s.log" \
            $(cd "$out/runs" && ls -d {a,b}_s"$s"/{cascade.pt,metrics.json} 2>/dev/null)
    done
fi
if [ "${SCORE:-1}" = 1 ]; then
    echo "=== liver_lesions ($(date +%T))"
    OMP_NUM_THREADS=2 timeout "${SCORE_LIMIT:-90}" "$py" benchmarks/liver_lesions.py \
        --device cuda --workers 8 --pairs "${pairs[@]}" --json "$out/liver_lesions.json"
    echo "=== liver_lesions: rc=$? at $((SECONDS - start))s"
fi
[ "$checks" = 1 ] && STEPS="pruning_3d supervision" bash scripts/cuda_checks.sh "$out"
echo "=== all done at $((SECONDS - start))s"
