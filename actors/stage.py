"""A pipeline stage: a Ray Data actor that holds one layer shard and its exit heads.

Plain callable class: heavy set-up in `__init__`, the work in `__call__`. The task's stage
runner (`offramp.exits`) does the work and checks the column contract at the boundary;
this class adds only what belongs to Ray: reporting each call's numbers to the driver's
collector. Unit-test it by calling it; the pipeline runs it under
`map_batches(StageActor, compute=ActorPoolStrategy(...))`.
"""

from __future__ import annotations

import dataclasses

import ray

from offramp.exits.stage import StageSpec
from offramp.tasks import get_task


class StageActor:
    def __init__(self, model_dir: str, spec: StageSpec, collector=None):
        self.spec = spec
        self.runner = get_task(spec.task).runner_cls()(model_dir, spec)
        self.collector = collector

    def __call__(self, batch: dict) -> dict:
        out, stats = self.runner(batch)
        if self.collector is not None:
            # a plain dict: unpickling the dataclass would import torch into the collector (0.45 GiB)
            ray.get(self.collector.record.remote(dataclasses.asdict(stats)))
        return out
