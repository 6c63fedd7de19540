#!/bin/bash
# demo tag step, finalize in actor (new) vs separate task (old), in turn
# Ran while the toggle existed (OFFRAMP_FINALIZE_TASK=1: the finalize task after the stages, as before);
# removed once measured, before commit f42bf07. Results: finalize_ab_demo.jsonl.
cd /work/main
for i in 1 2 3; do
  for mode in new old; do
    if [ $mode = old ]; then export OFFRAMP_FINALIZE_TASK=1; else unset OFFRAMP_FINALIZE_TASK; fi
    .venv/bin/python jobs/tag_corpus.py --config conf/demo.yaml --full-depth-eval-rows 0 > /tmp/exp39/ab_$mode.log 2>&1
    .venv/bin/python - "$mode" <<'PY'
import sys, json, mlflow
mlflow.set_tracking_uri('sqlite:///mlflow.db')
x = mlflow.search_runs(search_all_experiments=True, order_by=['start_time DESC'], max_results=1).iloc[0]
busy = x['metrics.stage0_busy_seconds'] + x['metrics.stage1_busy_seconds']
rec = dict(mode=sys.argv[1], docs_per_s=x['metrics.docs_per_second'], wall=x['metrics.wall_seconds'],
           startup=x['metrics.startup_seconds'], busy=busy, busy_share=busy / x['metrics.wall_seconds'],
           accuracy=x['metrics.accuracy'])
print(json.dumps(rec))
open('/tmp/exp39/ab_demo.jsonl', 'a').write(json.dumps(rec) + '\n')
PY
  done
done
