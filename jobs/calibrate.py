"""Certify exit thresholds for a quality target and write them into the model directory.

    python jobs/calibrate.py --model M --data calib.parquet --min-agreement 0.97 [--confidence 0.9]
    python jobs/calibrate.py --model M --data calib.parquet --label-column label --max-accuracy-drop 0.01
    python jobs/calibrate.py --model models:/NAME/3 --data calib.parquet --min-agreement 0.97   # registers version 4

With probability at least --confidence over the draw of the calibration rows, the
written threshold meets the target on the traffic those rows were drawn from (Learn
then Test, fixed-sequence, binomial bounds: see offramp/quality/calibration.py). Exit status 3
when not even the most conservative exiting threshold can be certified (the model is
left unchanged); the message says how many rows would be needed.

The `offramp calibrate` command (pipelines/cli.py), runnable from a checkout and under `ray job submit`.
"""

import sys

import _common  # noqa: F401  (puts the repo on sys.path)

from pipelines import cli


def main(argv=None) -> int:
    return cli.main(["calibrate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
