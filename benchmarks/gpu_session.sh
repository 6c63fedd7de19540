#!/usr/bin/env bash
# One lent-GPU call of the issue-15 measurements, through this workplace's `device` tool; what
# `benchmarks/device_carry.sh MODEL_DIR` prepared travels in `carry` (see its header). Each step
# has its own time limit, and its results are copied to $OUT as soon as it ends, so that a step
# cut short loses only itself.
#
#   call 1, carry [.devwhl, .devdata, .devmodel/meta]:  bash benchmarks/gpu_session.sh bert
#     sets up Ray (kept in /tmp while the machine stays warm), then the BERT-base-shaped model:
#     (a)-(d) on short texts, (a)/(b) again with cuDNN's SDPA kept on, and profile_stage.py
#   call 2 at once, carry [.devmodel/minilm]:           bash benchmarks/gpu_session.sh minilm
#     the benchmark model: (a)-(d) short and long, and the GPU layouts on short texts
#   train, carry [.devmodel/base] (the base MiniLM-L6 in float16, by device_carry.sh): training,
#     calibration and the audit on the GPU (benchmarks/gpu_training.py), after a call that set up Ray
#   steady-bert, then steady-minilm (the same carries; ROWS=1000000): a start-up probe, then (a),
#     (b) and the faster layouts on a million short texts, where start-up weighs little; steady-minilm
#     runs (a) and (b) with tokenize tasks at 1.0 and 0.5 CPU, then counts the tokenize tasks Ray
#     Data runs at once beside a GPU stage (benchmarks/feed_concurrency.py)
#   lean (call 1's carry): the start-up probe, then (a) and (b) with stages on the lean modules and on
#     transformers' own (OFFRAMP_STOCK_LAYERS=1), in turn, twice: what stop 37's lean stages change on a GPU
#   CUDNN=0 skips bert's cuDNN-SDPA A/B, PROBE=0 steady-bert's start-up probe (both measured at stop 34).
#   Stop 36 ran: CUDNN=0 bert; train; steady-minilm; then, on a fresh node, PROBE=0 steady-bert
#   (BENCHMARKS.md, "Stop 36"): about 1,250 s of device time with the start-ups.
#
# Outside the workplace, on a GPU node with Ray installed: the same steps, with OUT set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
ROWS=${ROWS:-200000}
LONG_ROWS=${LONG_ROWS:-30000}
W=/tmp/gpu
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled
if [ -d .devwhl ] && [ ! -d /tmp/site/ray ]; then
  mkdir -p /tmp/site && tar -xJf .devwhl/ray.tar.xz -C /tmp/site &&
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .devwhl/*.whl || exit 1
fi
if [ -d .devwhl/extra ] && [ ! -f /tmp/site/.extra ]; then  # what training reads data with, where the machine lacks it
  for w in .devwhl/extra/*.whl; do
    mod=$(basename "$w" | cut -d- -f1 | sed 's/^python_dateutil$/dateutil/')
    python3 -c "import $mod" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site "$w"
  done
  touch /tmp/site/.extra
fi
[ -d .devdata ] && [ ! -d /tmp/devdata ] && cp -r .devdata /tmp/devdata
export PYTHONPATH=/tmp/site:$PWD
DATA=/tmp/devdata/debian_sections
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import ray, torch, transformers; print('ray', ray.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" || exit 1
python3 -c "import datasets, pandas; print('datasets', datasets.__version__, 'pandas', pandas.__version__)"

step() {  # step NAME LIMIT_S RESULT_DIR COMMAND...: run, then copy RESULT_DIR/gpu_results.json to $OUT/NAME.json
  local name=$1 limit=$2 dir=$3
  shift 3
  echo "=== $name (limit ${limit}s) $(date +%T)"
  timeout -k 10 "$limit" "$@" 2>&1 | grep -v -e 'Loading weights' -e 'Writing model' -e 'it/s\]' | tee "$OUT/$name.log" | tail -40
  [ -f "$dir/gpu_results.json" ] && cp "$dir/gpu_results.json" "$OUT/$name.json"
  [ -f "$dir/ray_stats.txt" ] && cp "$dir/ray_stats.txt" "$OUT/ray_stats_$name.txt" && rm "$dir/ray_stats.txt"
  rm -f "$dir/gpu_results.json"
  pkill -9 -f -e 'raylet|gcs_server|ray::|default_worker' >/dev/null 2>&1  # what a step cut short left
}

BENCH=(python3 benchmarks/bench_gpu.py --device cuda --dtype float16 --data-dir "$DATA" --rows "$ROWS")
case ${1:-} in
  bert)
    step bert_base "${BERT_LIMIT:-280}" $W "${BENCH[@]}" --model .devmodel/meta --only-bert-base --long-rows 0 \
      --out $W
    [ "${CUDNN:-1}" = 1 ] && step bert_base_cudnn 140 $W "${BENCH[@]}" --model .devmodel/meta --only-bert-base --long-rows 0 \
      --variants a,b --cudnn-sdp --out $W
    echo "=== profile_stage $(date +%T)"
    timeout -k 10 90 python3 benchmarks/profile_stage.py --model $W/bert_base_random --data $DATA/dev.parquet \
      --device cuda --rows 4096 2>&1 | grep -v 'Loading weights' | tee "$OUT/profile_stage_bert_base.txt" | tail -45
    ;;
  minilm)
    step minilm "${MINILM_LIMIT:-330}" $W "${BENCH[@]}" --model .devmodel/minilm --long-rows "$LONG_ROWS" --out $W
    step minilm_layouts 200 $W "${BENCH[@]}" --model .devmodel/minilm --long-rows 0 --layouts \
      --variants a_2actors,a_2stages,a_2rebatch,a_2rebatch3 --out $W
    ;;
  train)  # carry [.devmodel/base]: training, calibration and the audit on the GPU (benchmarks/gpu_training.py)
    echo "=== gpu_training $(date +%T)"
    timeout -k 10 "${TRAIN_LIMIT:-540}" python3 benchmarks/gpu_training.py --device cuda --base .devmodel/base \
      --data-dir $DATA --out $W/training 2>&1 | grep -v -e 'Loading weights' -e 'it/s\]' | tee "$OUT/gpu_training.log" | tail -60
    cp $W/training/gpu_training.json "$OUT/" 2>/dev/null
    pkill -9 -f -e 'raylet|gcs_server|ray::|default_worker' >/dev/null 2>&1
    ;;
  steady-bert)  # call 1's carry: start-up probed, then long runs (ROWS=1000000) where start-up weighs little
    [ "${PROBE:-1}" = 1 ] && echo "=== startup_probe $(date +%T)" &&
    timeout -k 10 90 python3 benchmarks/startup_probe.py --device cuda 2>&1 | grep -v -e '^20' -e WARN |
      tee "$OUT/startup_probe.txt" | tail -12
    step bert_base_steady "${BERT_LIMIT:-470}" $W "${BENCH[@]}" --model .devmodel/meta --only-bert-base --long-rows 0 \
      --layouts --variants a,b,a_2actors,a_2rebatch --out $W
    ;;
  steady-minilm)  # call 2's carry: the feed-bound model; tokenize tasks at 1.0 and at 0.5 CPU, side by side
    step minilm_steady "${MINILM_LIMIT:-400}" $W "${BENCH[@]}" --model .devmodel/minilm --long-rows 0 --layouts \
      --variants a,a_tok05,b,b_tok05,a_2actors --out $W
    for c in 1.0 0.5; do  # tokenize tasks Ray Data runs at once beside a GPU stage, work taken out (~40 s each)
      echo "=== feed_cpus_$c $(date +%T)"
      timeout -k 5 80 python3 benchmarks/feed_concurrency.py --cpus "$(nproc)" --tokenize-cpus $c \
        --out "$OUT/feed_cpus_$c.json" 2>&1 | grep '^{'
      pkill -9 -f -e 'raylet|gcs_server|ray::|default_worker' >/dev/null 2>&1
    done
    ;;
  lean)  # call 1's carry: a stage on the lean modules against the stock ones (OFFRAMP_STOCK_LAYERS=1), in turn
    echo "=== startup_probe $(date +%T)"
    timeout -k 10 90 python3 benchmarks/startup_probe.py --device cuda 2>&1 | grep -v -e '^20' -e WARN |
      tee "$OUT/startup_probe.txt" | tail -12
    for r in 1 2; do
      for stock in 0 1; do
        export OFFRAMP_STOCK_LAYERS=$stock
        step "lean_stock${stock}_$r" 150 $W "${BENCH[@]}" --model .devmodel/meta --only-bert-base --long-rows 0 \
          --variants a,b --out $W
      done
    done
    unset OFFRAMP_STOCK_LAYERS
    ;;
  *)
    echo "usage: gpu_session.sh bert|minilm|train|steady-bert|steady-minilm|lean" >&2
    exit 2
    ;;
esac
echo "=== done $(date +%T)"
