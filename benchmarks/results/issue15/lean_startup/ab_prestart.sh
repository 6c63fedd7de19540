#!/bin/bash
# the demo's tagging step with Ray's worker prestart on (default) and off, interleaved
cd /work/main
OUT=benchmarks/results/issue15/lean_startup
for r in 1 2 3; do
  for v in default noprestart; do
    if [ $v = noprestart ]; then export RAY_prestart_worker_first_driver=0 RAY_enable_worker_prestart=0; else unset RAY_prestart_worker_first_driver RAY_enable_worker_prestart; fi
    .venv/bin/python jobs/tag_corpus.py --config conf/demo.yaml > /tmp/exp/p_${v}_$r.log 2>&1
    run=$(grep "^tagged" /tmp/exp/p_${v}_$r.log | grep -o "mlflow run [0-9a-f]*" | awk '{print $3}')
    .venv/bin/python - "$v" "$r" "$run" >> $OUT/prestart_ab.jsonl <<'PY'
import json, sys, mlflow
v, r, run = sys.argv[1:]
mlflow.set_tracking_uri("sqlite:///mlflow.db")
m = mlflow.get_run(run).data.metrics
busy = sum(val for k, val in m.items() if k.startswith("stage") and k.endswith("_busy_seconds"))
print(json.dumps({"variant": v, "round": int(r), "run": run, "stage_busy_seconds": busy, "busy_share_of_wall": busy / m["wall_seconds"], "wall_seconds": m["wall_seconds"], "startup_seconds": m["startup_seconds"], "accuracy": m["accuracy"]}))
PY
  done
done
