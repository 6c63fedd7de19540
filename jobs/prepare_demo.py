"""Prepare the embedded demo: a real-text corpus from apt's package lists and a model for it.

    python jobs/prepare_demo.py [--dir demo]

Writes DIR/data/{train,dev,test}.parquet (Debian package descriptions labeled by
section, split by source package) and trains DIR/model with conf/demo_train.yaml
unless it is already there. Nothing is downloaded: apt's lists are on every Debian
machine (run `apt-get update` once if they are missing).
"""

import argparse
import os
import subprocess

import _common
from _common import fail, setup_logging

from offramp.config import ConfigError
from offramp.demo import APT_LISTS, build_demo_corpus


def main(argv=None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="demo")
    p.add_argument("--lists", default=APT_LISTS, help="apt lists directory")
    args = p.parse_args(argv)
    data = os.path.join(args.dir, "data")
    if not os.path.isfile(os.path.join(data, "test.parquet")):
        try:
            counts = build_demo_corpus(data, args.lists)
        except FileNotFoundError as e:
            fail(str(e))
        print(f"demo corpus in {data}: {counts}")
    model = os.path.join(args.dir, "model")
    if not os.path.isfile(os.path.join(model, "config.json")):
        cmd = [
            os.sys.executable, os.path.join(_common.REPO, "jobs", "train_exits.py"),
            "--config", os.path.join(_common.REPO, "conf", "demo_train.yaml"),
            "--train", os.path.join(data, "train.parquet"),
            "--eval", os.path.join(data, "dev.parquet"),
            "--output", model,
        ]
        if subprocess.run(cmd).returncode != 0:
            fail("training the demo model failed (see above)")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except ConfigError as e:
        fail(str(e))
