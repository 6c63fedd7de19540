"""A pipeline stage: a Ray Data actor that holds one layer shard and its exit heads.

Plain callable class: heavy set-up in `__init__`, the work in `__call__`. The task's stage
runner (`offramp.exits`) does the work and checks the column contract at the boundary;
this class adds only what belongs to Ray: reporting each call's numbers to the driver's
collector. Unit-test it by calling it; the pipeline runs it under
`map_batches(StageActor, compute=ActorPoolStrategy(...))`.
"""

from __future__ import annotations

import dataclasses
import time

import ray

from offramp.exits.stage import StageBatchStats, StageSpec
from offramp.tasks import finalize_step, get_task

MAX_REPORTS_IN_FLIGHT = 16
"""Reports a stage sends without waiting for the collector's answer. A batch never waits on a
round trip to the collector (on a GPU a batch can take less than one); only a collector this far
behind makes the stage wait for its oldest report."""


class Reports:
    """A stage's reports to the run's collector, sent without waiting for its answer."""

    def __init__(self, collector=None):
        self.collector = collector
        self.in_flight: list = []  # refs of reports not yet answered, oldest first

    def send(self, stats: StageBatchStats) -> None:
        """Send one call's numbers. One sender's reports are answered in order, so the answered
        ones are a prefix of `in_flight`; the driver waits until every stage's reports cover the
        rows written (`pipelines.run.settled_timings`)."""
        if self.collector is None:
            return
        # a plain dict: unpickling the dataclass would import torch into the collector (0.45 GiB)
        self.in_flight.append(self.collector.record.remote(dataclasses.asdict(stats)))
        _, self.in_flight = ray.wait(self.in_flight, num_returns=len(self.in_flight), timeout=0, fetch_local=False)
        if len(self.in_flight) > MAX_REPORTS_IN_FLIGHT:
            ray.get(self.in_flight.pop(0))

    def ready(self, stages: list[int], began: float) -> None:
        """The actor's constructor ran from `began` (time.time()) until now: the driver splits a
        run's start-up into starting the actor's process (imports) and loading its model."""
        if self.collector is not None:
            self.in_flight.append(self.collector.ready.remote(stages, began, time.time()))


def finalized(batch: dict, finalize: dict | None):
    """The last stage's rows as the user's output table (`finalize_step`'s arguments in
    `finalize`), or the batch as it is for a deeper stage (`finalize` None).

    Why in the actor and not a task after it: a task per stage batch costs its scheduling, a
    worker's call and an object in the store for a few milliseconds of column work, on the same
    cores as the stages (BENCHMARKS.md, "Stop 39")."""
    return batch if finalize is None else finalize_step(batch, **finalize)


class StageActor:
    def __init__(self, model_dir: str, spec: StageSpec, collector=None, finalize: dict | None = None):
        began = time.time()
        self.spec = spec
        self.finalize = finalize
        self.runner = get_task(spec.task).runner_cls()(model_dir, spec)
        self.reports = Reports(collector)
        self.reports.ready([spec.index], began)

    def __call__(self, batch: dict):
        out, stats = self.runner(batch)
        if self.finalize is not None:  # the actor's time on the output table counts as its busy time
            t0 = time.perf_counter()
            out = finalized(out, self.finalize)
            stats = dataclasses.replace(stats, seconds=stats.seconds + time.perf_counter() - t0, ended=time.time())
        self.reports.send(stats)
        return out
