"""The endpoint's batching, no cluster (the deployment's class run on this event loop): a text
that exits early is answered while the rest of its batch runs on, and a batch that fails fails
only the requests it had not answered yet."""

import asyncio
import threading
from types import SimpleNamespace

import pytest
from ray import serve

from actors.endpoint import Endpoint
from offramp.config import ServeConfig
from offramp.exits.stage import StageSpec
from offramp.serving.tagger import ServingPlan
from tests.conftest import LABELS, NUM_LAYERS, TEXTS

# the deployment's own class, under the ASGI wrapper that @serve.ingress puts around it
REPLICA = next(c for c in Endpoint.func_or_class.__mro__ if "tag_rows" in vars(c))
WAIT_S = 30  # far above a tiny model's batch on a busy 2-core machine; only a broken endpoint waits it out


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """What @serve.batch reads of its replica outside Serve: the deployment's max_ongoing_requests."""
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=4096))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: @serve.batch keeps one queue per method, in the loop of its
    first call (in Serve, a replica's process has one)."""
    loop = asyncio.new_event_loop()
    yield loop
    # The queue lives in the method's closure, on the class: drop it (and its task) so that the
    # class pickles again when a later test deploys it on real Serve.
    lazy = REPLICA.tag_rows.set_max_batch_size.__self__
    if lazy._queue is not None and lazy._queue._handle_batch_task is not None:
        lazy._queue._handle_batch_task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
    lazy._queue = None
    loop.close()


def endpoint(model_dir, answer_at_exit=True):
    plan = ServingPlan(model_dir, "sequence", tuple(LABELS), StageSpec(0, 0, NUM_LAYERS), 64, {"text_column": "text"})
    # a long batch wait and a large batch: the two requests below share one batch
    cfg = ServeConfig(model=model_dir, max_batch_tokens=4096, batch_wait_timeout_s=0.2, answer_at_exit=answer_at_exit)
    return REPLICA(plan, cfg)


def early_and_late(ep) -> tuple[str, str]:
    """A text that exits at layer 1 and one that runs to the last layer."""
    answers, _ = ep.tagger.run(ep.tagger.tokenize(list(TEXTS)))
    layer = {t: a["exit_layer"] for t, a in zip(TEXTS, answers)}
    return next(t for t in TEXTS if layer[t] == 1), next(t for t in TEXTS if layer[t] == NUM_LAYERS)


def hold_last_layer(ep, action):
    """Run `action` as the batch's rows start the model's last layer (in the worker thread)."""
    def hook(module, args) -> None:  # a pre-hook that returns something replaces the layer's input
        action()

    return ep.tagger.runner.shard.layers[-1].register_forward_pre_hook(hook)


def test_a_text_that_exits_early_is_answered_while_its_batch_runs_on(model_dir, loop):
    async def scenario():
        ep = endpoint(model_dir)
        early, late = early_and_late(ep)
        released = threading.Event()
        hook = hold_last_layer(ep, lambda: released.wait(WAIT_S))  # the late row waits here for the early answer
        try:
            first = asyncio.ensure_future(ep.answer([early]))
            second = asyncio.ensure_future(ep.answer([late]))
            got_early = await asyncio.wait_for(first, WAIT_S)  # times out if answers wait for the batch's end
            assert not second.done(), "the late text is still in its last layer"
            released.set()
            got_late = await asyncio.wait_for(second, WAIT_S)
        finally:
            released.set()
            hook.remove()
        assert got_early["results"][0]["exit_layer"] == 1 and got_late["results"][0]["exit_layer"] == NUM_LAYERS
        stats = ep.stats.to_dict()  # each answer is counted as it is given
        assert stats["texts"] == stats["requests"] == 2 and stats["exit_layers"] == {"1": 1, str(NUM_LAYERS): 1}
        for _ in range(WAIT_S * 100):  # the batch's own counts come when its call returns, just after
            if ep.stats.batches:
                break
            await asyncio.sleep(0.01)
        assert ep.stats.to_dict()["largest_batch_texts"] == 2, "the two requests shared one batch"
        return got_early, got_late

    got_early, got_late = loop.run_until_complete(scenario())
    assert got_early["results"][0]["status"] == got_late["results"][0]["status"] == "ok"


def test_by_default_a_batch_answers_its_texts_when_it_ends(model_dir, loop):
    """answer_at_exit false (the default, measured faster under load): the early text waits for its batch."""
    async def scenario():
        ep = endpoint(model_dir, answer_at_exit=False)
        early, late = early_and_late(ep)
        entered, released = threading.Event(), threading.Event()
        hook = hold_last_layer(ep, lambda: (entered.set(), released.wait(WAIT_S)))
        try:
            first = asyncio.ensure_future(ep.answer([early]))
            second = asyncio.ensure_future(ep.answer([late]))
            while not entered.is_set():  # the batch is in its last layer, the early row long answered inside it
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert not first.done(), "the early text waits for its batch's end"
            released.set()
            got = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
        finally:
            released.set()
            hook.remove()
        assert [g["results"][0]["exit_layer"] for g in got] == [1, NUM_LAYERS]

    loop.run_until_complete(scenario())


def test_a_failed_batch_fails_the_requests_it_had_not_answered_and_the_endpoint_carries_on(model_dir, loop):
    async def scenario():
        ep = endpoint(model_dir)
        early, late = early_and_late(ep)

        def fail():
            raise RuntimeError("the last layer broke")

        hook = hold_last_layer(ep, fail)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(ep.answer([early]), ep.answer([early, late]), return_exceptions=True), WAIT_S)
        finally:
            hook.remove()
        answered, failed = results
        assert answered["results"][0]["exit_layer"] == 1, "answered before the batch failed"
        assert isinstance(failed, RuntimeError) and "the last layer broke" in str(failed)
        again = await asyncio.wait_for(ep.answer([late]), WAIT_S)
        assert again["results"][0]["exit_layer"] == NUM_LAYERS

    loop.run_until_complete(scenario())
