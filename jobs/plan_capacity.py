"""Size the actor pools for a throughput target or a GPU/CPU budget, from a measured tagging run.

    python jobs/plan_capacity.py --run-id ID --target-docs-per-hour 5000000
    python jobs/plan_capacity.py --run-id ID --budget-gpus 8 [--headroom 1.25] [--json plan.json] [--log]

The `offramp plan` command (pipelines/cli.py), runnable from a checkout and under `ray job submit`.
"""

import sys

import _common  # noqa: F401  (puts the repo on sys.path)

from pipelines import cli


def main(argv=None) -> int:
    return cli.main(["plan", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
