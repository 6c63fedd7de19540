"""Stage actors report each batch's numbers to the run's collector without waiting for it, and
the driver reads the figures only once every stage's reports cover the rows written."""

import asyncio
import logging
import threading

import numpy as np
import ray

from actors.collector import MetricsCollector
from actors.stage import MAX_REPORTS_IN_FLIGHT, StageActor
from offramp.exits.stage import StageSpec
from offramp.tasks.sequence import tokenize_batch
from offramp.text.tokenize import load_tokenizer
from pipelines.run import settled_timings
from tests.conftest import NUM_LAYERS, TEXTS


@ray.remote
class HeldCollector(MetricsCollector):
    """The run's collector, except that `record` answers only after `release()`: a collector
    that has fallen behind. Async, so held reports do not occupy the threads `release` needs."""

    def __init__(self):
        super().__init__()
        self.gate = asyncio.Event()

    async def record(self, stats: dict) -> None:
        await self.gate.wait()
        super().record(stats)

    async def release(self) -> None:
        self.gate.set()


def batch(model_dir):
    return tokenize_batch({"id": np.arange(len(TEXTS)), "text": np.array(TEXTS, dtype=object)},
                          load_tokenizer(model_dir), "text", 64)


def call_in_thread(fn, times: int) -> threading.Thread:
    t = threading.Thread(target=lambda: [fn() for _ in range(times)], daemon=True)
    t.start()
    return t


def test_a_batch_does_not_wait_for_its_report_and_a_lagging_collector_is_bounded(local_ray, model_dir):
    collector = HeldCollector.remote()
    stage = StageActor(model_dir, StageSpec(0, 0, NUM_LAYERS), collector)
    rows = batch(model_dir)
    # while the collector answers nothing, the stage still finishes its batches, up to the bound
    first = call_in_thread(lambda: stage(rows), MAX_REPORTS_IN_FLIGHT)
    first.join(timeout=120)
    assert not first.is_alive(), "a stage waited for the collector's answer to a report"
    assert len(stage.reports.in_flight) == MAX_REPORTS_IN_FLIGHT
    # one more batch would leave more than the bound unanswered: that call waits for the oldest
    over = call_in_thread(lambda: stage(rows), 1)
    over.join(timeout=2)  # a bounded wait for something that must NOT happen: the call stays blocked
    assert over.is_alive(), "reports piled up past the bound without the stage waiting"
    ray.get(collector.release.remote())
    over.join(timeout=120)
    assert not over.is_alive()
    summary = settled_timings(collector, 1, len(TEXTS) * (MAX_REPORTS_IN_FLIGHT + 1))
    assert summary[0]["batches"] == MAX_REPORTS_IN_FLIGHT + 1  # every report arrived, none twice
    assert summary[0]["rows_seen"] == len(TEXTS) * (MAX_REPORTS_IN_FLIGHT + 1)


def report(collector, stage: int, rows: int) -> None:
    ray.get(collector.record.remote({"stage": stage, "rows_in": rows, "rows_exited": 0, "tokens_in": 0,
                                     "row_layers": 0, "seconds": 0.5, "audit_row_layers": 0,
                                     "skipped_row_layers": 0, "rows_seen": rows}))


def test_the_driver_waits_for_late_reports_and_names_a_stage_whose_reports_never_came(local_ray, caplog):
    collector = ray.remote(MetricsCollector).remote()
    report(collector, 0, 10)
    report(collector, 1, 6)
    late = threading.Timer(1.0, report, (collector, 1, 4))  # stage 1's last batch, still on its way
    late.start()
    timings = settled_timings(collector, 2, 10)
    assert timings[1]["rows_seen"] == 10 and timings[1]["seconds"] == 1.0, "the driver read the figures too early"
    late.join()

    caplog.set_level(logging.WARNING, logger="pipelines.run")
    timings = settled_timings(collector, 3, 10, wait_s=0.2)  # stage 2 never reported
    assert 2 not in timings
    assert "stage 2 reported 0 of the 10 rows written" in caplog.text and "stage 1" not in caplog.text
