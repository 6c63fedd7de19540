"""Memory a Ray worker keeps for the corpus reader, and what --resume's checkpoint filter holds
(issue 14, BENCHMARKS.md "Scale").

    .venv/bin/python benchmarks/worker_memory.py --input DIR_OF_ONE_JSONL_FILE      # read worker
    .venv/bin/python benchmarks/worker_memory.py --filter-rows 1000000 5000000      # resume filter

* Read worker: one Ray task reads every file of --input with the pipeline's own datasource
  (`CorpusSource`), as a read task does, and reports its USS before the first byte (what its
  imports cost), after the last block, and after handing Arrow's idle heap back.
* Resume filter: Ray Data's checkpoint filter turns the committed ids into one sorted numpy
  array (`convert_and_sort_checkpointed_ids`) that each filter actor holds; this builds that
  array for N ids shaped like offramp's `source_row` and reports its size and the time taken.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402

MiB = 2**20


@ray.remote(num_cpus=1)
def read_everything(path: str) -> dict:
    from offramp.config import TagConfig
    from offramp.tasks import get_task
    from pipelines.read import corpus_source

    proc = psutil.Process()
    before = proc.memory_full_info().uss
    source = corpus_source(TagConfig(input=path, model="unused", output="unused"), get_task("sequence"))
    rows = 0
    for p in source.file_paths():
        with source._open_input_source(source._filesystem, p) as f:
            for block in source._read_stream(f, p):
                rows += block.num_rows
    return {"rows": rows, "uss_before_mib": before // MiB, "uss_after_mib": proc.memory_full_info().uss // MiB,
            "torch_imported": "torch" in sys.modules}


def filter_array(n: int) -> dict:
    from ray.data.checkpoint.checkpoint_filter import convert_and_sort_checkpointed_ids

    fn = getattr(convert_and_sort_checkpointed_ids, "_function", convert_and_sort_checkpointed_ids)
    ids = pa.table({"source_row": pa.array([f"part-{i // 50000:05d}.jsonl.gz:{i % 50000 + 1}" for i in range(n)])})
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    array, size = fn(ids, "source_row")
    return {"ids": n, "arrow_mib": ids.nbytes // MiB, "array_mib": size // MiB, "bytes_per_id": size / n,
            "rss_growth_mib": (psutil.Process().memory_info().rss - rss) // MiB, "seconds": time.perf_counter() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a directory or file the reader reads in one Ray task")
    p.add_argument("--filter-rows", type=int, nargs="*", default=[])
    args = p.parse_args()
    if args.input:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print("read worker:", ray.get(read_everything.remote(os.path.abspath(args.input))))
        ray.shutdown()
    for n in args.filter_rows:
        print("resume filter:", filter_array(n))


if __name__ == "__main__":
    main()
