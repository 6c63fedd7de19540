"""Answer texts over HTTP with an early-exit model on Ray Serve; blocks until Ctrl-C.

    python jobs/serve.py --model models/m [--config conf/serve.yaml]
    curl -s localhost:8000/v1/classify -H 'content-type: application/json' -d '{"texts": ["a text"]}'

The `offramp serve` command (pipelines/cli.py), runnable from a checkout.
"""

import sys

import _common  # noqa: F401  (puts the repo on sys.path)

from pipelines import cli


def main(argv=None) -> int:
    return cli.main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
