"""Label every document of a corpus with an early-exit model on Ray Data; log the run to MLflow.

    python jobs/tag_corpus.py --input corpus/ --model models/m --output out/ [--config conf/tag.yaml]
    RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/tag_corpus.py --config conf/<job>.yaml

The `offramp tag` command (pipelines/cli.py), runnable from a checkout and under `ray job submit`.
"""

import sys

import _common  # noqa: F401  (puts the repo on sys.path)

from pipelines import cli


def main(argv=None) -> int:
    return cli.main(["tag", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
