#!/usr/bin/env bash
# Two settings of the example, paired by seed, on validation only, on one GPU; optionally
# the GPU checks that need the card to themselves. One call of a 15-minute lease
# (docs/cascade.md).
#
#   A="--liver-lesion-weight 1" B="--liver-lesion-weight 5" bash scripts/paired_runs_cuda.sh OUT
#   A="--variant ES-DS" B="--variant UN-DS" SEEDS="34 35 36" CHECKS=0 \
#       bash scripts/paired_runs_cuda.sh OUT
#   A="" B="--tumour-lesion-balance 0.5" C="--tumour-size 160" bash scripts/paired_runs_cuda.sh OUT
#
# 1. For each of SEEDS (fresh phantoms and splits), the example's CPU recipe
#    (--preset cpu) on the GPU with the flags A (run OUT/runs/a_sN), B (OUT/runs/b_sN) and,
#    if set, C (OUT/runs/c_sN), all runs at once, --validation-only: every number is a
#    validation case's; no test case is scored. A may be empty (the defaults). With CHECKS=1 the CUDA tests run meanwhile (correctness only, so sharing
#    the card is fine).
# 2. benchmarks/liver_lesions.py scores each pair (A:B, and A:C) on its validation cases
#    (SCORE=1).
# 3. PACK=1 packs the runs (cascade.pt, metrics.json, log; about 6 MB a run) into
#    OUT/packN.tar, each under 15 MiB (what a lent machine hands back), to score them
#    elsewhere on the same phantom (it is rebuilt from --seed).
# 4. CHECKS=1: the CUDA benchmarks that time things, alone on the card:
#    scripts/cuda_checks.sh's pruning_3d and supervision steps.
set -u
out=${1:-outputs/paired}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
seeds=${SEEDS:-31 32 33}
a=${A?set A to the flags of the first setting (empty: the defaults)}
b=${B:?set B to the flags of the second setting}
c=${C:-}
sides="a b"
[ -n "$c" ] && sides="a b c"
limit=${RUN_LIMIT:-450}

"$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
nproc
start=$SECONDS
checks=${CHECKS:-0}
[ "$checks" = 1 ] && STEPS=tests nice -n 5 bash scripts/cuda_checks.sh "$out" > "$out/tests.log" 2>&1 &
for s in $seeds; do
    for side in $sides; do
        case $side in a) flags=$a ;; b) flags=$b ;; *) flags=$c ;; esac
        # shellcheck disable=SC2086  # the flags are words
        OMP_NUM_THREADS=2 timeout "$limit" "$py" examples/lits_cascade.py --device cuda \
            --preset cpu --validation-only --seed "$s" $flags \
            --out "$out/runs/${side}_s$s" > "$out/runs/${side}_s$s.log" 2>&1 &
    done
done
wait
echo "=== runs done in $((SECONDS - start))s (A: $a; B: $b; C: $c)"
for f in "$out"/runs/*.log; do echo "--- $f"; tail -n 3 "$f"; done
pairs=()
for s in $seeds; do
    pairs+=("$out/runs/a_s$s:$out/runs/b_s$s")
    [ -n "$c" ] && pairs+=("$out/runs/a_s$s:$out/runs/c_s$s")
done
if [ "${PACK:-1}" = 1 ]; then  # runs in order, a new tar when the next would pass 15 MiB
    n=1 size=0 members=()
    for s in $seeds; do
        for side in $sides; do
            run=${side}_s$s
            files=("$run.log" $(cd "$out/runs" && ls -d "$run"/{cascade.pt,metrics.json} 2>/dev/null))
            bytes=$(cd "$out/runs" && du -cb "${files[@]}" | tail -n 1 | cut -f 1)
            if [ ${#members[@]} -gt 0 ] && [ $((size + bytes)) -gt 15728640 ]; then
                tar -cf "$out/pack$n.tar" -C "$out/runs" "${members[@]}"
                n=$((n + 1)) size=0 members=()
            fi
            members+=("${files[@]}") size=$((size + bytes))
        done
    done
    [ ${#members[@]} -gt 0 ] && tar -cf "$out/pack$n.tar" -C "$out/runs" "${members[@]}"
fi
if [ "${SCORE:-1}" = 1 ]; then
    echo "=== liver_lesions ($(date +%T))"
    OMP_NUM_THREADS=2 timeout "${SCORE_LIMIT:-90}" "$py" benchmarks/liver_lesions.py \
        --device cuda --workers 8 --pairs "${pairs[@]}" --json "$out/liver_lesions.json"
    echo "=== liver_lesions: rc=$? at $((SECONDS - start))s"
fi
[ "$checks" = 1 ] && STEPS="pruning_3d supervision" bash scripts/cuda_checks.sh "$out"
echo "=== all done at $((SECONDS - start))s"
