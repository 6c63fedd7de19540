"""The online endpoint's driver: plan the replica from the config, build the Serve
application, start it and block (`offramp serve`, jobs/serve.py).

    python jobs/serve.py --model models/m [--config conf/serve.yaml]
    serve run pipelines.serve:app_builder model=models/m [max_batch_tokens=4096 ...]

The plan is the tagging run's: `check_model` and `make_plan` of `pipelines/run.py` resolve
the thresholds, policy and certificate and lay the model out as one stage over every layer,
so the endpoint and a one-stage tagging run execute the same `StageSpec`. Configuration errors
surface here, before Ray or Serve start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import time

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from actors.endpoint import Endpoint
from offramp.config import AuditConfig, ServeConfig, StageConfig, TagConfig, load_config
from offramp.serving.tagger import ID, TEXT, ServingPlan
from pipelines.registry import local_model
from pipelines.run import check_model, init_ray, make_plan

logger = logging.getLogger(__name__)


def tag_config(cfg: ServeConfig) -> TagConfig:
    """The tagging run the endpoint answers like: one stage over every layer, no audit."""
    stage = StageConfig(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, dtype=cfg.dtype, torch_threads=cfg.torch_threads)
    return TagConfig(model=cfg.model, id_column=ID, text_column=TEXT, max_length=cfg.max_length, strict=cfg.strict,
                     stages=(stage,), exit=cfg.exit, audit=AuditConfig(fraction=0.0), ray=cfg.ray)


def serving_plan(cfg: ServeConfig) -> ServingPlan:
    """What each replica runs; fails with the fix on a bad model directory or exit setting."""
    cfg.require("model")
    tag = tag_config(cfg)
    info, task = check_model(tag, cfg.model)
    stage = make_plan(tag, info, task, keep_types={}).stages[0]
    # a replica's threads follow its own setting, not the local run's share of this machine's cores
    spec = dataclasses.replace(stage.spec, torch_threads=cfg.torch_threads)
    return ServingPlan(info.path, task.name, tuple(info.labels), spec, cfg.max_length, task.tokenize_kwargs(tag))


def deployment_options(cfg: ServeConfig) -> dict:
    """Serve's options for the Endpoint deployment: replicas (fixed or autoscaled), resources,
    and max_ongoing_requests, which bounds how many requests' texts one batch can hold."""
    opts = dict(
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    )
    if cfg.max_replicas is None:
        opts["num_replicas"] = cfg.num_replicas
    else:
        opts["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                      "target_ongoing_requests": cfg.target_ongoing_requests}
    return opts


def build_app(cfg: ServeConfig) -> Application:
    """The Serve application for `cfg` (not started): `serve.run(build_app(cfg))`. A models:/ model
    is resolved here, once, to its version and that version's directory in the model cache; a
    replica on a node that does not see that directory downloads the same version to its own."""
    cfg, registered = local_model(cfg)
    plan = serving_plan(cfg)
    if registered:
        plan = dataclasses.replace(plan, source=f"models:/{registered.name}/{registered.version}")
    return Endpoint.options(**deployment_options(cfg)).bind(plan, cfg)


def app_builder(args: dict) -> Application:
    """`serve run pipelines.serve:app_builder model=DIR [config=conf/serve.yaml] [key=value ...]`:
    Serve's application-builder face; keys as in --config (dotted inside a section), values
    as strings. host and port are then Serve's own (`serve run --address`, its HTTP options)."""
    args = dict(args)
    return build_app(load_config(ServeConfig, args.pop("config", None), args))


def deploy(cfg: ServeConfig, app: Application) -> DeploymentHandle:
    """Start Ray (joining RAY_ADDRESS's cluster if set) and Serve's HTTP proxy on
    cfg.host:cfg.port, deploy `app` and wait until its replicas are up."""
    init_ray(cfg.ray)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(app, name=cfg.name, route_prefix=cfg.route_prefix)


def start(cfg: ServeConfig) -> DeploymentHandle:
    """Validate `cfg`, then deploy the endpoint (configuration errors before Ray starts)."""
    return deploy(cfg, build_app(cfg))


def url(cfg: ServeConfig, path: str = "v1/classify") -> str:
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}/{path}"


@contextlib.contextmanager
def stop_signals():
    """Inside: SIGINT (Ctrl-C) and SIGTERM (a process manager) append their number to the
    yielded list instead of ending the process, so that Serve is shut down however far it had
    started. The previous handlers are restored on leaving."""
    stopped: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_serve(cfg: ServeConfig) -> None:
    """Start the endpoint and block until interrupted, then shut Serve down."""
    app = build_app(cfg)  # configuration errors before Ray starts or any signal is taken over
    with stop_signals() as stopped:  # taken before Serve starts: a Ctrl-C during start-up still shuts it down
        deploy(cfg, app)
        try:
            logger.info("serving %s: POST %s {\"texts\": [...]}; health %s, readiness %s, stats %s",
                        cfg.model, url(cfg), url(cfg, "healthz"), url(cfg, "readyz"), url(cfg, "v1/stats"))
            while not stopped:
                time.sleep(0.5)
            logger.info("got %s: shutting Serve down", signal.Signals(stopped[0]).name)
        finally:
            serve.shutdown()
