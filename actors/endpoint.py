"""The online endpoint: a Ray Serve deployment that answers texts with the tagging run's
early-exit execution (`offramp.serving.tagger`: the same tokenize step, stage runner and
finalize step as a stage actor's pipeline).

Routes, under the application's route prefix:

    POST /v1/classify  {"texts": [...]} -> {"model", "task", "results": [one answer per text]}
    GET  /healthz      the replica's process answers
    GET  /readyz       the model is loaded and has run a warm-up text (503 before)
    GET  /v1/stats     this replica's counts since it started (offramp.serving.stats)

A deployment handle answers the same as the HTTP route: `handle.classify.remote(texts)`.

Batching: a request's texts are tokenized when it arrives and queued one row each, each with a
future for its answer; `@serve.batch` joins rows of concurrent requests until their tokens
would pass `max_batch_tokens` (its `batch_size_fn`) and runs the batch in a worker thread, so
the event loop keeps taking requests and filling the next batch meanwhile. Exits are per row
inside the batch, as in a stage actor. With `answer_at_exit`, a row that exits is answered at
once: the worker thread resolves its future right after its exit layer (`OnlineTagger.run`'s
`on_answer`) while the rest of the batch runs on, so a request whose texts all exit early is
answered before the batch ends (a tagger's row leaves when its last word halts); by default
every row is answered when its batch ends, which measured faster under load. A bad request gets a 4xx
with a message (`offramp.serving.requests`); a batch that fails answers the requests it had not
answered yet with a 500, and the replica carries on.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' parameter types
# (`request: Request`) from their annotations, and Serve's class-based view cannot resolve
# them as strings (the request would be taken for a missing query parameter: 422).
import asyncio
import dataclasses
import logging
import os
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.util.metrics import Counter

from offramp.config import ServeConfig
from offramp.exits.stage import StageBatchStats
from offramp.serving.requests import RequestError, check_body_size, check_texts, parse_body
from offramp.serving.stats import ReplicaStats
from offramp.serving.tagger import OnlineTagger, Row, ServingPlan, batch_tokens
from pipelines.registry import resolve

logger = logging.getLogger(__name__)
api = FastAPI(title="offramp", description="Early-exit BERT: a label (or a tag per word) per text")


def replica_plan(plan: ServingPlan, cfg: ServeConfig) -> ServingPlan:
    """The plan with a model directory this replica's node has: a registered version that the
    driver downloaded into a cache this node does not mount is downloaded again here, the same
    version (`plan.source` is pinned), into this node's cache."""
    if plan.source and not os.path.isdir(plan.model_dir):
        logger.info("%s is not on this node: downloading %s", plan.model_dir, plan.source)
        return dataclasses.replace(plan, model_dir=resolve(plan.source, cfg.mlflow).path)
    return plan


async def read_body(request: Request, cfg: ServeConfig) -> bytes:
    """The request's body, refused (413) as soon as it passes max_body_bytes: the declared
    Content-Length before any byte is read, then the bytes as they arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        check_body_size(int(declared), cfg)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        check_body_size(len(body), cfg)
    return bytes(body)


@dataclass(frozen=True)
class QueuedRow:
    """A request's row in the batch queue, with the future its answer is given through."""

    row: Row
    answer: asyncio.Future  # of the request's event loop

    @property
    def tokens(self) -> int:  # what `batch_tokens` counts
        return self.row.tokens

    def give(self, answer: dict) -> None:
        """Answer the row (on its event loop); a request that is gone or already failed takes none."""
        if not self.answer.done():
            self.answer.set_result(answer)


def settle(queued: QueuedRow):
    """A done-callback for the batch call of `queued`: a row the batch did not answer (the batch
    failed, or the call was cancelled) fails with the batch's error, so its request gets a 500."""
    def done(call: asyncio.Future) -> None:
        if queued.answer.done():
            if not call.cancelled():
                call.exception()  # retrieved: the row's request has its answer already
            return
        if call.cancelled():
            queued.answer.cancel()
        else:
            queued.answer.set_exception(call.exception() or RuntimeError("the batch ended without answering a row"))
    return done


# The options (replicas, max_ongoing_requests, resources) come from the config in
# pipelines/serve.py: Serve's default max_ongoing_requests of 5 would cap every batch at 5 requests.
@serve.deployment
@serve.ingress(api)
class Endpoint:
    def __init__(self, plan: ServingPlan, cfg: ServeConfig):
        plan = replica_plan(plan, cfg)
        self.plan, self.cfg, self.ready = plan, cfg, False
        self.tagger = OnlineTagger(plan)
        # @serve.batch's numbers are fixed where the class is defined; the config's replace them
        # before the first call creates the queue
        self.tag_rows.set_max_batch_size(cfg.max_batch_tokens)
        self.tag_rows.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.stats = ReplicaStats()
        self.texts_counter = Counter("offramp_serve_texts", "Texts answered, by exit layer (0: did not run) and status",
                                     tag_keys=("app", "layer", "status"))
        self.layers_counter = Counter("offramp_serve_row_layers", "Row-layers (token-layers for taggers) computed",
                                      tag_keys=("app",))
        self.tagger.run(self.tagger.tokenize(["warm up"]))  # the first request pays no lazy set-up
        self.ready = True

    # ------------------------------------------------------------ routes

    @api.post("/v1/classify")
    async def classify_http(self, request: Request) -> JSONResponse:
        try:
            texts = parse_body(await read_body(request, self.cfg), self.cfg)
        except RequestError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        try:
            return JSONResponse(await self.answer(texts))
        except Exception as e:  # a failed batch fails its requests, not the replica
            logger.exception("a batch failed")
            return JSONResponse({"error": f"the model failed on this request's batch: {e!r}"}, status_code=500)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Ready: the model is loaded and has answered a warm-up text; and what it serves. Serve
        routes requests to a replica only once its constructor has returned, so a replica that
        answers is ready: the route is for load balancers and orchestrators that probe readiness
        apart from liveness (/healthz)."""
        p = self.plan
        info = {"ready": self.ready, "model": os.path.basename(p.model_dir), "task": p.task,
                "num_layers": p.num_layers, "labels": list(p.labels), "max_length": p.max_length}
        return JSONResponse(info, status_code=200 if self.ready else 503)

    @api.get("/v1/stats")
    async def stats_route(self) -> dict:
        """This replica's counts; `replica` is its Serve replica id (its Ray actor's name)."""
        return {"replica": serve.get_replica_context().replica_id.to_full_id_str(), **self.stats.to_dict()}

    # ------------------------------------------------------------ the work

    async def classify(self, texts: list[str]) -> dict:
        """The handle's face of POST /v1/classify: the same answer, a RequestError for a bad request."""
        return await self.answer(check_texts(texts, self.cfg))

    async def answer(self, texts: list[str]) -> dict:
        """The answers of a request's texts, each awaited as its row is answered inside its batch
        (not when the batch ends)."""
        loop = asyncio.get_running_loop()
        queued = [QueuedRow(row, loop.create_future()) for row in self.tagger.tokenize(texts)]
        self.stats.requests += 1
        calls = [asyncio.ensure_future(self.tag_rows(q)) for q in queued]  # queued now; held until answered
        for q, call in zip(queued, calls):
            call.add_done_callback(settle(q))
        try:  # every row's outcome, so no failed row's error goes unretrieved; the first error fails the request
            results = await asyncio.gather(*(q.answer for q in queued), return_exceptions=True)
        except asyncio.CancelledError:  # the request is gone: Serve drops its rows not yet batched
            for call in calls:
                call.cancel()
            raise
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed
        return {"model": os.path.basename(self.plan.model_dir), "task": self.plan.task, "results": list(results)}

    @serve.batch(max_batch_size=ServeConfig.max_batch_tokens, batch_wait_timeout_s=ServeConfig.batch_wait_timeout_s,
                 batch_size_fn=batch_tokens)
    async def tag_rows(self, queued: list[QueuedRow]) -> list[dict]:
        """Rows of concurrent requests, at most max_batch_tokens tokens: each answered through its
        future as soon as it is done (from the worker thread, onto its request's event loop);
        returns their answers, in order, once the whole batch is done."""
        def on_answer(i: int, answer: dict) -> None:
            q = queued[i]
            q.answer.get_loop().call_soon_threadsafe(self.give, q, answer)

        rows = [q.row for q in queued]
        if self.cfg.answer_at_exit:
            answers, stage = await asyncio.to_thread(self.tagger.run, rows, on_answer)
        else:  # every row when the batch ends
            answers, stage = await asyncio.to_thread(self.tagger.run, rows)
            for q, a in zip(queued, answers):
                self.give(q, a)
        self.record(len(queued), batch_tokens(queued), stage)
        return answers

    def give(self, queued: QueuedRow, answer: dict) -> None:
        """A row's answer, on the event loop: counted (so the stats hold every answer a client
        has), then handed to its request."""
        self.stats.add_answer(answer)
        tags = {"app": self.cfg.name, "layer": str(answer["exit_layer"]), "status": answer["status"]}
        self.texts_counter.inc(1, tags=tags)
        queued.give(answer)

    def record(self, texts: int, tokens: int, stage: StageBatchStats) -> None:
        """A batch done: the counts that are the batch's, not one answer's."""
        self.stats.add_batch(texts, tokens, stage)
        if stage.row_layers:  # a Ray counter takes only positive steps
            self.layers_counter.inc(stage.row_layers, tags={"app": self.cfg.name})
