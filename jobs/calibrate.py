"""Certify exit thresholds for a quality target and write them into the model directory.

    python jobs/calibrate.py --model M --data calib.parquet --min-agreement 0.97 [--confidence 0.9]
    python jobs/calibrate.py --model M --data calib.parquet --label-column label --max-accuracy-drop 0.01

With probability at least --confidence over the draw of the calibration rows, the
written threshold meets the target on the traffic those rows were drawn from (Learn
then Test, fixed-sequence, binomial bounds: see offramp/calibration.py). Exit status 3
when not even the most conservative exiting threshold can be certified (the model is
left unchanged); the message says how many rows would be needed.
"""

import argparse
import sys

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import fail, setup_logging

from offramp.config import CalibrateConfig, ConfigError, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file; flags override it")
    p.add_argument("--model", help="model directory (thresholds are written into it)")
    p.add_argument("--data", help="calibration rows: Parquet / JSONL / CSV")
    p.add_argument("--text-column")
    p.add_argument("--label-column", help="gold labels (needed for --max-accuracy-drop)")
    p.add_argument("--max-accuracy-drop", type=float, help="target: at most this fraction below full depth")
    p.add_argument("--min-agreement", type=float, help="target: agree with full depth on at least this fraction")
    p.add_argument("--confidence", type=float, help="probability the target holds (default 0.9)")
    p.add_argument("--max-rows", type=int)
    p.add_argument("--dry-run", action="store_true", help="report and log; leave the model unchanged")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    return p.parse_args(argv)


def main(argv=None) -> int:
    setup_logging()
    args = parse_args(argv)
    overrides = {
        "model": args.model,
        "data": args.data,
        "text_column": args.text_column,
        "label_column": args.label_column,
        "max_accuracy_drop": args.max_accuracy_drop,
        "min_agreement": args.min_agreement,
        "confidence": args.confidence,
        "max_rows": args.max_rows,
        "dry_run": True if args.dry_run else None,
    }
    try:
        cfg = load_config(CalibrateConfig, args.config, overrides, args.set)
        from pipelines.calibrate import run_calibration

        outcome = run_calibration(cfg)
    except ConfigError as e:
        fail(str(e))
    print(outcome.summary)
    return 0 if outcome.calibration.certified else 3


if __name__ == "__main__":
    sys.exit(main())
