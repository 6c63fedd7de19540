"""One actor holding every stage, merging survivors of several input batches (E3).

The layout for a GPU where per-batch survivors make deep passes too small to fill it: the
actor runs `offramp.exits.rebatch.Rebatcher` over the input batches Ray Data has handed it and
not yet got back. Its `__call__` is async: Ray Data gives an async actor up to
`max_concurrent_calls_per_actor` batches at once (`pipelines.run.build_pipeline` sets it to
`TagConfig.rebatch`), each call waits until its own rows are answered, and one loop runs the
passes in a worker thread, so new batches arrive while a pass computes. A call returns exactly
the rows it received, so Ray Data's retries and checkpoints see a plain map; nothing is held
after the last call returns.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from actors.stage import Reports, finalized
from offramp.exits.rebatch import Part, Rebatcher, Ticket
from offramp.exits.stage import StageSpec
from offramp.tasks import get_task


class RebatchingStageActor:
    def __init__(self, model_dir: str, specs: list[StageSpec], pass_rows: int, collector=None,
                 keep_states: bool | None = None, finalize: dict | None = None):
        began = time.time()
        self.finalize = finalize  # the output table's arguments (`actors.stage.finalized`)
        runner_cls = get_task(specs[0].task).runner_cls()
        self.rebatcher = Rebatcher([runner_cls(model_dir, spec) for spec in specs], pass_rows, keep_states)
        self.reports = Reports(collector)
        self.reports.ready([spec.index for spec in specs], began)
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="offramp-rebatch")  # passes run one at a time
        self.waiting: dict[int, tuple[Ticket, asyncio.Future]] = {}  # id(ticket) -> (ticket, the call's answer)
        self.driver: asyncio.Task | None = None  # the loop running passes, while there is work

    async def __call__(self, batch: dict):
        loop = asyncio.get_running_loop()
        ticket = self.rebatcher.add(batch)
        answer = loop.create_future()
        self.waiting[id(ticket)] = (ticket, answer)
        self.settle()  # a batch with no runnable row is done already
        if self.driver is None:
            self.driver = loop.create_task(self.drive())
        return finalized(await answer, self.finalize)

    async def drive(self) -> None:
        """Run passes until no stage has rows waiting (calls run on one event loop: a batch added
        while a pass computes is seen by the next `next_stage`)."""
        loop = asyncio.get_running_loop()
        try:
            while (k := self.rebatcher.next_stage()) is not None:
                parts = self.rebatcher.take(k)
                since = self.rebatcher.carry.next_source
                try:
                    await loop.run_in_executor(self.compute, self.run_pass, k, parts)
                except Exception as e:  # noqa: BLE001 - the batches in this pass fail (Ray Data retries or counts them)
                    self.rebatcher.abandon(parts, since)
                    self.fail({id(p.ticket) for p in parts}, e)
                self.settle()
        finally:
            self.driver = None

    def run_pass(self, k: int, parts: list[Part]) -> None:
        """One pass of stage k, in the worker thread, and its reports."""
        for stats in self.rebatcher.run(k, parts):
            self.reports.send(stats)

    def settle(self) -> None:
        """Answer the calls whose rows have all finished."""
        for key, (ticket, answer) in list(self.waiting.items()):
            if ticket.done:
                del self.waiting[key]
                answer.set_result(ticket.result())

    def fail(self, keys: set[int], error: Exception) -> None:
        for key in keys:
            ticket, answer = self.waiting.pop(key)
            self.rebatcher.drop(ticket)
            answer.set_exception(error)
