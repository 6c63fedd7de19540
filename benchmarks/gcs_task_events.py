"""How much the GCS keeps per task call, and where it stops (issue 14's scale run: gcs_server grew
0.06 -> 0.31 GiB over 5M rows).

    .venv/bin/python benchmarks/gcs_task_events.py --calls 50000 150000 300000
    RAY_task_events_max_num_task_in_gcs=1000 .venv/bin/python benchmarks/gcs_task_events.py --calls 50000

Each size starts its own local Ray, makes that many empty calls to one actor, each with a
stage report's dict (as a stage sends one per batch), and reads the gcs_server's USS before and
after.
"""

from __future__ import annotations

import argparse
import os
import time

import psutil
import ray


@ray.remote(num_cpus=0)
class Sink:
    def record(self, stats: dict) -> None:
        return None


def gcs_uss() -> int:
    session = ray._private.worker._global_node.get_session_dir_path()
    for p in psutil.process_iter(["name", "cmdline"]):
        if "gcs_server" in (p.info["name"] or "") and any(session in a for a in p.info["cmdline"] or []):
            return p.memory_full_info().uss
    raise SystemExit("this session's gcs_server was not found")


def measure(calls: int) -> tuple[int, int]:
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        sink = Sink.remote()
        ray.get(sink.record.remote({}))
        time.sleep(3)
        before = gcs_uss()
        stats = {"stage": 0, "rows_in": 64, "rows_exited": 10, "tokens_in": 6000, "row_layers": 200, "seconds": 0.1}
        for start in range(0, calls, 1000):
            ray.get([sink.record.remote(stats) for _ in range(min(1000, calls - start))])
        time.sleep(5)  # task events reach the GCS in periodic batches
        return before, gcs_uss()
    finally:
        ray.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, nargs="+", default=[50_000, 150_000, 300_000])
    args = p.parse_args()
    cap = os.environ.get("RAY_task_events_max_num_task_in_gcs", "Ray's default")
    for calls in args.calls:
        before, after = measure(calls)
        print(f"{calls} actor calls (task event cap: {cap}): gcs_server USS {before / 2**20:.0f} -> "
              f"{after / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
