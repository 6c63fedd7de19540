"""What the online endpoint needs (`offramp serve`, jobs/serve.py): the model and its exit
settings, how Ray Serve deploys it, how requests are batched, and what one request may hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from offramp.config.base import ConfigError, MlflowConfig, check_dtype, require
from offramp.config.tag import FLAG_ALIASES as TAG_ALIASES
from offramp.config.tag import ExitConfig, RayConfig


@dataclass(frozen=True)
class ServeConfig:
    """Everything the online endpoint (`offramp serve`, jobs/serve.py) needs."""

    model: str | None = None
    """Early-exit model: a directory written by jobs/train_exits.py, or a registered version,
    models:/NAME/VERSION or models:/NAME@ALIAS (resolved in the MLflow store, mlflow.*)."""
    name: str = "offramp"
    """Serve application name (several models can be served side by side under different names)."""
    route_prefix: str = "/"
    """HTTP path the routes hang under: <prefix>v1/classify, <prefix>healthz, <prefix>readyz, <prefix>v1/stats."""
    host: str = "127.0.0.1"
    """Address Serve's HTTP proxy listens on; 0.0.0.0 for every interface. Ignored under `serve run`."""
    port: int = 8000
    """Port of Serve's HTTP proxy. Ignored under `serve run`."""
    num_replicas: int = 1
    """Replicas, each holding the whole model, when not autoscaling (max_replicas unset)."""
    min_replicas: int = 1
    """Autoscaling: the fewest replicas kept (0 lets the endpoint scale to zero)."""
    max_replicas: int | None = None
    """Autoscaling: the most replicas; None = a fixed num_replicas."""
    target_ongoing_requests: float = 32.0
    """Autoscaling: requests per replica the autoscaler aims for (a replica batches many at once)."""
    num_cpus: float = 1.0
    """Logical CPUs each replica reserves."""
    num_gpus: float = 0.0
    """GPUs each replica reserves (fractional allowed); above 0 the model runs on cuda."""
    dtype: str = "float32"
    """Compute dtype of the layers: float32, float16 or bfloat16 (float16 on a GPU; bfloat16 on a
    CPU with AVX512-BF16 or AMX). A certificate covers the dtype it was calibrated in."""
    torch_threads: int = 0
    """Intra-op threads per replica; 0 = Ray's rule (the replica's num_cpus)."""
    max_length: int = 128
    """Tokens per text (incl. [CLS]/[SEP]); longer texts are truncated, with status truncated."""
    max_batch_tokens: int = 8192
    """Tokens one batch holds at most: texts from concurrent requests are batched until their
    token count would pass this (Serve's batch_size_fn), not by a count of texts."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits for more texts after its first one arrives."""
    answer_at_exit: bool = False
    """Answer each text right after the layer its row exits at, while its batch runs on; false
    (the default): every text of a batch when the batch ends. Measured on 2 CPU cores with
    closed-loop clients (BENCHMARKS.md), answering at the exit gave lower throughput and higher
    p50 from 4 clients up: early-answered clients send their next text mid-batch, so batches
    fill less."""
    max_ongoing_requests: int = 128
    """Requests a replica holds at once; a batch holds texts of at most this many requests."""
    max_texts_per_request: int = 64
    """Texts in one request at most; more get HTTP 413."""
    max_chars_per_text: int = 20_000
    """Characters in one text at most; longer ones get HTTP 413 (within it, texts over max_length
    tokens are truncated, as in a tagging run)."""
    max_body_bytes: int = 2**20
    """Bytes of one request body at most; larger bodies get HTTP 413 before they are parsed."""
    strict: bool = False
    """Refuse to start when the model's certificate does not cover these settings (as `offramp tag --strict`)."""
    exit: ExitConfig = field(default_factory=ExitConfig)
    """Exit policy, thresholds and token exit settings (as in a tagging run)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Which Ray cluster Serve runs on (none given: an embedded local Ray)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """The MLflow store a models:/ model is resolved in (tracking_uri, model_cache); serving logs no run."""

    def __post_init__(self):
        self._check_deployment()
        self._check_batching()
        for name in ("max_texts_per_request", "max_chars_per_text", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")

    def _check_deployment(self) -> None:
        if not self.route_prefix.startswith("/"):
            raise ConfigError(f"route_prefix {self.route_prefix!r} must start with '/', e.g. / or /offramp")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port={self.port} is not a TCP port; use 1..65535, e.g. 8000")
        if self.num_replicas < 1:
            raise ConfigError(f"num_replicas={self.num_replicas} must be >= 1 (autoscale with max_replicas)")
        if self.max_replicas is not None:
            if self.num_replicas != 1:
                raise ConfigError("num_replicas (a fixed count) and max_replicas (autoscaling) are both set; keep one")
            if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
                raise ConfigError(f"autoscaling min_replicas={self.min_replicas} max_replicas={self.max_replicas}: "
                                  "need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.target_ongoing_requests <= 0:
            raise ConfigError(f"target_ongoing_requests={self.target_ongoing_requests} must be > 0")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("num_cpus/num_gpus per replica must be >= 0")
        check_dtype(self.dtype)

    def _check_batching(self) -> None:
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too small; use at least 8 tokens")
        if self.max_batch_tokens < self.max_length:
            # Serve fails a request whose one item is over the batch budget
            raise ConfigError(f"max_batch_tokens={self.max_batch_tokens} is below max_length={self.max_length}: "
                              "a text of max_length tokens must fit one batch; raise max_batch_tokens")
        if self.batch_wait_timeout_s < 0:
            raise ConfigError(f"batch_wait_timeout_s={self.batch_wait_timeout_s} must be >= 0")
        # A replica holds at most max_ongoing_requests requests, so a batch of one-text requests
        # never holds more texts than that, whatever the token budget says (DESIGN.md).
        full = self.max_batch_tokens // self.max_length
        if self.max_ongoing_requests < full:
            raise ConfigError(
                f"max_ongoing_requests={self.max_ongoing_requests} caps a batch below the {full} one-text requests "
                f"of max_length tokens that max_batch_tokens={self.max_batch_tokens} holds; raise "
                f"max_ongoing_requests to at least {full} or lower max_batch_tokens"
            )

    def require(self, *names: str) -> None:
        """Fail with the flag to set when a required field is missing."""
        require(self, *names)


# The exit flags of `offramp tag` (--policy, --threshold, --no-exits, ...) mean the same here.
FLAG_ALIASES = {key: flag for key, flag in TAG_ALIASES.items() if key.startswith("exit.")}
