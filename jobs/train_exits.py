"""Fine-tune an early-exit classifier or tagger and save it for tag_corpus.py.

    python jobs/train_exits.py --train train.parquet --eval dev.parquet --output models/m \
        [--mechanism deebert|pabee|berxit|de3|smartbert] [--base-model DIR | --init-from MODEL] \
        [--config conf/train.yaml] [--set stage1_epochs=1]

Sequence labeling (a list of tags per row, e.g. ../shared/data/debian_pos) is detected from the
label column, or forced with --task token:

    python jobs/train_exits.py --train train.parquet --eval dev.parquet --output models/pos \
        --text-column tokens --label-column pos [--set token.exit_mode=sentence]

The `offramp train` command (pipelines/cli.py), runnable from a checkout and under `ray job submit`.
"""

import sys

import _common  # noqa: F401  (puts the repo on sys.path)

from pipelines import cli


def main(argv=None) -> int:
    return cli.main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
