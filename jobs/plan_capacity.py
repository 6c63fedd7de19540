"""Size the actor pools for a throughput target or a GPU/CPU budget, from a measured tagging run.

    python jobs/plan_capacity.py --run-id ID --target-docs-per-hour 5000000
    python jobs/plan_capacity.py --run-id ID --budget-gpus 8 [--headroom 1.25] [--json plan.json] [--log]
"""

import argparse
import json
import sys

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import fail, setup_logging

from offramp.planning.capacity import format_plan, load_run_summary, log_plan, plan_capacity
from offramp.config import ConfigError, MlflowConfig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-id", required=True, help="MLflow run id of a tagging run (jobs/tag_corpus.py prints it)")
    p.add_argument("--tracking-uri", help="MLflow store; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-docs-per-hour", type=float, help="actors needed for this throughput")
    goal.add_argument("--budget-gpus", type=float, help="the most throughput this many GPUs buy")
    goal.add_argument("--budget-cpus", type=float, help="the most throughput this many CPUs buy")
    p.add_argument("--headroom", type=float, default=1.25, help="plan actors this much faster than needed")
    p.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    p.add_argument("--log", action="store_true", help="attach capacity_plan.json to the measured MLflow run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    from pipelines.tracking import tracking_uri

    uri = tracking_uri(MlflowConfig(tracking_uri=args.tracking_uri))
    try:
        summary = load_run_summary(args.run_id, uri)
        plan = plan_capacity(
            summary,
            target_docs_per_hour=args.target_docs_per_hour,
            budget_gpus=args.budget_gpus,
            budget_cpus=args.budget_cpus,
            headroom=args.headroom,
        )
    except ConfigError as e:
        fail(str(e))
    print(format_plan(plan))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(plan.to_dict(), f, indent=2)
    if args.log:
        log_plan(plan, args.run_id, uri)
        print(f"logged capacity_plan.json to mlflow run {args.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
