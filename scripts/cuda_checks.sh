#!/usr/bin/env bash
# Every check that needs a GPU, in one go: the CUDA tests, the CUDA benchmarks (pruned-head
# speed in fp32 and bf16, 3D at 128^3 against MONAI, supervision overhead, the torch CRF backend) and a short cascade
# run on the GPU. Each step has its own time limit so that one slow step cannot eat the rest.
#
#   bash scripts/cuda_checks.sh [OUT_DIR]        # logs and JSON land in OUT_DIR
#   STEPS="tests pruning_3d" bash scripts/cuda_checks.sh OUT   # only the steps named
#
# Needs featsup importable (installed, or PYTHONPATH=src) and the test extra.
set -u
out=${1:-outputs/cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to stdout, report the status
    local name=$1 limit=$2
    shift 2
    case " ${STEPS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== $name (limit ${limit}s, $(date +%T))"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1
    echo "=== $name: rc=$? in $((SECONDS - start))s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
"$py" -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"

step tests 100 "$py" -m pytest -m cuda -q -p no:cacheprovider -rs tests
step pruning_fp32 75 "$py" benchmarks/pruning_speed.py --device cuda --batch 1 8 \
    --repeats 30 --warmup 5 --json "$out/pruning_fp32.json"
step pruning_bf16 75 "$py" benchmarks/pruning_speed.py --device cuda --amp bf16 --batch 1 8 \
    --repeats 30 --warmup 5 --json "$out/pruning_bf16.json"
step pruning_3d 90 "$py" benchmarks/pruning_speed.py --dims 3 --device cuda --repeats 20 \
    --warmup 3 --json "$out/pruning_3d.json"
step supervision 75 "$py" benchmarks/supervision_overhead.py --device cuda --rounds 15 \
    --warmup 3 --json "$out/supervision.json"
step crf 75 "$py" benchmarks/crf_speed.py --device cuda --repeats 5 --json "$out/crf.json"
step cascade "${CASCADE_LIMIT:-160}" "$py" examples/lits_cascade.py --device cuda \
    --out "${CASCADE_OUT:-$out/cascade}" --cases 12 --phantom-shape 48 256 256 --size 256 --tumour-size 128 \
    --steps 400 --teacher-steps 100
m=${CASCADE_OUT:-$out/cascade}/metrics.json
[ -f "$m" ] && cp "$m" "$out/cascade_metrics.json"
exit 0
