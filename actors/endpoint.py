"""The online endpoint: a Ray Serve deployment that answers texts with the tagging run's
early-exit execution (`offramp.serving.tagger`: the same tokenize step, stage runner and
finalize step as a stage actor's pipeline).

Routes, under the application's route prefix:

    POST /v1/classify  {"texts": [...]} -> {"model", "task", "results": [one answer per text]}
    GET  /healthz      the replica's process answers
    GET  /readyz       the model is loaded and has run a warm-up text (503 before)
    GET  /v1/stats     this replica's counts since it started (offramp.serving.stats)

A deployment handle answers the same as the HTTP route: `handle.classify.remote(texts)`.

Batching: a request's texts are tokenized when it arrives and queued one row each;
`@serve.batch` joins rows of concurrent requests until their tokens would pass
`max_batch_tokens` (its `batch_size_fn`), runs the batch in a worker thread, so the event loop
keeps taking requests and filling the next batch meanwhile, and hands each row's answer back to
its own request. Exits are per row inside the batch, as in a stage actor. A bad request gets a
4xx with a message (`offramp.serving.requests`); a batch that fails answers its requests with a
500 and the replica carries on.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' parameter types
# (`request: Request`) from their annotations, and Serve's class-based view cannot resolve
# them as strings (the request would be taken for a missing query parameter: 422).
import asyncio
import collections
import logging
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.util.metrics import Counter

from offramp.config import ServeConfig
from offramp.exits.stage import StageBatchStats
from offramp.serving.requests import RequestError, check_body_size, check_texts, parse_body
from offramp.serving.stats import ReplicaStats
from offramp.serving.tagger import OnlineTagger, Row, ServingPlan, batch_tokens

logger = logging.getLogger(__name__)
api = FastAPI(title="offramp", description="Early-exit BERT: a label (or a tag per word) per text")


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


# The options (replicas, max_ongoing_requests, resources) come from the config in
# pipelines/serve.py: Serve's default max_ongoing_requests of 5 would cap every batch at 5 requests.
@serve.deployment
@serve.ingress(api)
class Endpoint:
    def __init__(self, plan: ServingPlan, cfg: ServeConfig):
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
        rows = self.tagger.tokenize(texts)
        self.stats.requests += 1
        results = await asyncio.gather(*(self.tag_rows(row) for row in rows))
        return {"model": os.path.basename(self.plan.model_dir), "task": self.plan.task, "results": list(results)}

    @serve.batch(max_batch_size=ServeConfig.max_batch_tokens, batch_wait_timeout_s=ServeConfig.batch_wait_timeout_s,
                 batch_size_fn=batch_tokens)
    async def tag_rows(self, rows: list[Row]) -> list[dict]:
        """Rows of concurrent requests, at most max_batch_tokens tokens -> their answers, in order."""
        answers, stage = await asyncio.to_thread(self.tagger.run, rows)
        self.record(answers, batch_tokens(rows), stage)
        return answers

    def record(self, answers: list[dict], tokens: int, stage: StageBatchStats) -> None:
        self.stats.add_batch(answers, tokens, stage)
        app = self.cfg.name
        for (layer, status), n in collections.Counter((a["exit_layer"], a["status"]) for a in answers).items():
            self.texts_counter.inc(n, tags={"app": app, "layer": str(layer), "status": status})
        if stage.row_layers:  # a Ray counter takes only positive steps
            self.layers_counter.inc(stage.row_layers, tags={"app": app})
