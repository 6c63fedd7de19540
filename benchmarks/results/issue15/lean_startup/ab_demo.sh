#!/bin/bash
# A/B the demo's tagging step: lean stage (HEAD) vs stock (73757b5), interleaved.
cd /work/main
OUT=benchmarks/results/issue15/lean_startup
for r in 1 2 3; do
  for v in lean stock; do
    if [ $v = stock ]; then git checkout -q 73757b5 -- offramp; else git checkout -q HEAD -- offramp; fi
    git status --short offramp | head -3
    .venv/bin/python jobs/tag_corpus.py --config conf/demo.yaml > /tmp/exp/demo_${v}_$r.log 2>&1
    line=$(grep "^tagged" /tmp/exp/demo_${v}_$r.log); run=$(echo "$line" | grep -o "mlflow run [0-9a-f]*" | awk '{print $3}')
    .venv/bin/python - "$v" "$r" "$run" >> $OUT/demo_ab.jsonl <<'PY'
import json, sys, mlflow
v, r, run = sys.argv[1:]
mlflow.set_tracking_uri("sqlite:///mlflow.db")
m = mlflow.get_run(run).data.metrics
busy = sum(val for k, val in m.items() if k.startswith("stage") and k.endswith("_busy_seconds"))
keys = ["wall_seconds", "startup_seconds", "startup_actor_process_seconds", "startup_model_load_seconds", "startup_input_wait_seconds", "accuracy", "docs_per_second", "mean_layers"]
out = {"variant": v, "round": int(r), "run": run, "stage_busy_seconds": busy, "busy_share_of_wall": busy / m["wall_seconds"], **{k: m.get(k) for k in keys}}
print(json.dumps(out))
PY
    tail -1 $OUT/demo_ab.jsonl
  done
done
git checkout -q HEAD -- offramp
