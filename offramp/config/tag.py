"""What a tagging run needs (`offramp tag`, jobs/tag_corpus.py): the input and output, the
exit settings, the stage layout, the audit and where Ray runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from offramp.config.base import ConfigError, MlflowConfig, check_dtype, require

EXIT_MODES = ("token", "sentence")  # sequence labeling: TOKEE, SENTEE
SENTENCE_POOLS = ("max", "mean")


def check_token_exit(mode: str, pool: str, window: int) -> None:
    """Token exit settings, checked where they enter (config, model, CLI)."""
    if mode not in EXIT_MODES:
        raise ConfigError(f"token exit mode {mode!r}: use one of {list(EXIT_MODES)} (token = TOKEE, sentence = SENTEE)")
    if pool not in SENTENCE_POOLS:
        raise ConfigError(f"sentence_pool {pool!r}: use one of {list(SENTENCE_POOLS)}")
    if window < 0:
        raise ConfigError(f"exit_window={window} must be >= 0 (words on each side of a word)")


@dataclass(frozen=True)
class TokenExitConfig:
    """Token models only: how words or sentences leave; None = the setting stored with the model."""

    mode: str | None = None
    """token (TOKEE: each word halts on its own) or sentence (SENTEE); None = stored."""
    window: int | None = None
    """TOKEE: words on each side a word's uncertainty is max-pooled over; None = stored."""
    sentence_pool: str | None = None
    """SENTEE: max or mean of the words' uncertainty; None = stored."""

    def __post_init__(self):
        check_token_exit(self.mode or "token", self.sentence_pool or "max", 0 if self.window is None else self.window)


@dataclass(frozen=True)
class ExitConfig:
    """Which exit criterion runs and where its thresholds come from."""

    policy: str | None = None
    """Exit policy name (see `offramp.policies.POLICIES`); None = the one stored with the model."""
    threshold: float | None = None
    """One threshold for every exit head; overrides the thresholds stored with the model."""
    thresholds: tuple[float, ...] | None = None
    """One threshold per exit head, in head order; overrides the stored ones."""
    disabled: bool = False
    """Run every row to full depth (the parity / full-depth baseline)."""
    skip_gates: bool = True
    """SmartBERT models: rows skip the layers their gates say to skip. False = every row runs
    every layer it reaches (with `disabled`, the every-layer baseline). Ignored without gates."""
    token: TokenExitConfig = field(default_factory=TokenExitConfig)
    """Token models: exit mode, window and sentence pooling."""

    def __post_init__(self):
        if self.threshold is not None and self.thresholds is not None:
            raise ConfigError("exit.threshold and exit.thresholds are both set; keep one of them")


@dataclass(frozen=True)
class StageConfig:
    """One actor pool holding a contiguous shard of layers [start, end)."""

    layers: tuple[int, int] | None = None
    """[start, end) layer range; None = split the model's layers evenly across stages."""
    min_actors: int | None = None
    """ActorPoolStrategy min_size; None = 1, except stage 0 on a CPU in a local run: one actor per
    core, each on one thread (pipelines.run.local_cpu_actors; 1.5x the docs/s of one 2-thread actor
    on the framework benchmark, BENCHMARKS.md)."""
    max_actors: int | None = None
    """ActorPoolStrategy max_size; None = sized from measured survival (stage 0: min_actors)."""
    batch_size: int | None = None
    """Rows per Ray batch; None = sized from measured survival so each forward pass gets about
    `TagConfig.batch_size` running rows (exited rows ride along without compute)."""
    num_cpus: float = 1.0
    """Logical CPUs each actor reserves (fractional allowed)."""
    num_gpus: float = 0.0
    """GPUs each actor reserves (fractional allowed; 0 on CPU)."""
    dtype: str | None = None
    """Compute dtype of this stage's layers: float32, float16 or bfloat16; None = the run's `dtype`."""
    torch_threads: int = 0
    """Intra-op threads per actor; 0 = Ray's rule on a cluster, the machine's cores shared on a local run."""
    max_tokens: int | None = None
    """Padded tokens per forward pass: a batch's running rows are sorted by length and cut into
    passes of at most this many (rows x longest row) tokens, so short rows are not padded to
    long ones; 0 = the whole batch in one pass; None = the device's budget (4096 on a CPU; on a
    GPU sized from its memory, see offramp.exits.stage.token_budget)."""

    def __post_init__(self):
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ConfigError(f"stage max_tokens={self.max_tokens} must be >= 0 (0 = one pass per batch)")
        if self.layers is not None:
            if len(self.layers) != 2 or self.layers[0] >= self.layers[1] or self.layers[0] < 0:
                raise ConfigError(f"stage layers {list(self.layers)} must be [start, end) with 0 <= start < end")
        low = 1 if self.min_actors is None else self.min_actors
        if low < 1 or (self.max_actors is not None and self.max_actors < low):
            raise ConfigError(
                f"stage actors min={self.min_actors} max={self.max_actors}: need 1 <= min_actors <= max_actors"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"stage batch_size={self.batch_size} must be >= 1")
        if self.num_gpus < 0 or self.num_cpus < 0:
            raise ConfigError("stage num_cpus/num_gpus must be >= 0")
        if self.dtype is not None:
            check_dtype(self.dtype, "stage dtype")


@dataclass(frozen=True)
class RayConfig:
    """How the driver connects to Ray."""

    address: str | None = None
    """None: join RAY_ADDRESS / a job's cluster if there is one, else start an embedded local Ray."""
    num_cpus: int | None = None
    """Logical CPUs of an embedded local Ray; None: the stage actors' reservations plus one per core
    for the read, tokenize and write tasks, and at least two per core (`pipelines.run.local_ray_cpus`).
    More than the cores, so read tasks and actors don't starve; not many more, since every logical CPU
    lets one more worker process boot on the same cores."""
    autoscaling: bool = False
    """The cluster adds nodes on demand (cluster.yaml's autoscaler): skip the start-time check
    that the stage actors fit the resources the cluster has now."""
    object_store_fraction: float = 0.1
    """Share of the cluster's object store a run's Ray Data execution may fill (its
    backpressure budget; Ray's own default is 0.5). Tokenized rows otherwise queue ahead of a
    slower stage until half the store is full: 525 bytes a row, 3 GiB on a 24 GiB machine
    (BENCHMARKS.md, "Scale")."""

    def __post_init__(self):
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"ray.num_cpus={self.num_cpus}: give at least 1, or leave it unset (sized from the stages)")
        if not 0 < self.object_store_fraction <= 1:
            raise ConfigError(f"ray.object_store_fraction={self.object_store_fraction}: use a share in (0, 1], "
                              "e.g. 0.1")


@dataclass(frozen=True)
class AuditConfig:
    """A random sample of rows that runs to full depth whatever the exits say, to check quality."""

    fraction: float = 0.01
    """Share of rows audited (0 = no audit). Chosen by a hash of (seed, row id): reproducible,
    independent of batching, and the same rows in every run with the same seed."""
    seed: int = 0
    """Seed of the row hash that picks the audited rows."""
    target_agreement: float | None = None
    """Minimum agreement with full depth; None = the one stored by jobs/calibrate.py (if any)."""
    confidence: float = 0.95
    """Confidence of the reported interval."""
    alarm: str = "estimate"
    """What fails the job under fail_below_target: `estimate` (the point estimate is below target,
    as the run's tag says) or `bound` (even the upper confidence bound is below: a significant drop)."""
    fail_below_target: bool = False
    """Exit with status 4 when the alarm fires, so a nightly scheduler notices."""

    def __post_init__(self):
        if not 0 <= self.fraction <= 1:
            raise ConfigError(f"audit.fraction={self.fraction} must be in [0, 1], e.g. 0.01 for 1% of rows")
        if self.target_agreement is not None and not 0 < self.target_agreement <= 1:
            raise ConfigError(f"audit.target_agreement={self.target_agreement} is a fraction, e.g. 0.97")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"audit.confidence={self.confidence} must be in (0, 1), e.g. 0.95")
        if self.alarm not in ("estimate", "bound"):
            raise ConfigError(f"audit.alarm {self.alarm!r}: use estimate or bound")


@dataclass(frozen=True)
class TagConfig:
    """Everything a tagging run (`offramp tag`, jobs/tag_corpus.py) needs."""

    input: str | None = None
    """Parquet / JSONL / text file or directory, local path or pyarrow-filesystem URI."""
    model: str | None = None
    """Early-exit model: a directory written by jobs/train_exits.py, or a registered version,
    models:/NAME/VERSION or models:/NAME@ALIAS (resolved in the MLflow store, mlflow.*)."""
    output: str | None = None
    """Output directory for the Parquet files."""
    input_format: str = "auto"
    """auto (from the file extension), parquet, jsonl or text."""
    text_column: str = "text"
    """Column holding each document's text."""
    words_column: str | None = None
    """Token models: a column holding each row's words (a list of str); None = split text_column
    into words by offramp.text.words.split_words (whitespace; punctuation and clitics apart)."""
    id_column: str | None = "id"
    """Id column; None = a row number is generated."""
    label_column: str | None = None
    """Gold label column; when set, accuracy is measured and logged (token models: a list of tags
    per row, word accuracy and, for BIO tags, entity F1)."""
    passthrough_columns: tuple[str, ...] = ()
    """Input columns copied to the output unchanged."""
    max_length: int = 128
    """Tokens per document (incl. [CLS]/[SEP]); longer documents are truncated and counted."""
    batch_size: int = 64
    """Running rows per forward pass that stage batch sizes aim for."""
    overwrite: bool = False
    """Replace an existing output directory instead of failing."""
    strict: bool = False
    """Refuse to start when the model's certificate does not cover this run: uncertified
    thresholds, other thresholds, policy, max_length or stage dtype than it was certified with."""
    fail_on_error_rows: bool = False
    """Exit with status 3 when any row could not be labeled (an error status in the output)."""
    resume: bool = False
    """Continue a run that was killed, into the same output: the rows it wrote are skipped
    (Ray Data checkpoints under <output>/_checkpoint), none is written twice."""
    max_errored_blocks: int = 0
    """Blocks whose step raised that the run skips before it fails (Ray Data's
    max_errored_blocks; -1 = no limit). Their rows are missing: the run then ends without a
    manifest, with exit status 5, and --resume retries only them."""
    min_rows_per_file: int | None = None
    """Output rows per Parquet file at least (fewer in the last files); None = 50,000, or
    max_rows_per_file when that is smaller (setting only the maximum is enough)."""
    max_rows_per_file: int = 500_000
    """Output rows per Parquet file at most: files stay a size readers and object stores like."""
    max_line_bytes: int = 16 * 2**20
    """A JSONL or text line longer than this is not held whole: a text line keeps its head
    (status truncated, counted), a JSONL line gets status too_long."""
    tokenize_batch_size: int = 256
    """Rows per tokenization task batch."""
    tokenize_concurrency: int | None = None
    """Tokenize tasks at once; None: the machine's cores on an embedded local Ray (every new task
    process imports the tokenizer stack: a dozen at start-up delayed the stage actors by 4-5 s on
    2 cores, BENCHMARKS.md), and no limit but Ray's CPUs on a cluster."""
    tokenize_cpus: float | None = None
    """CPUs a tokenize task asks Ray for; None: 1.0 beside GPU stages (a GPU actor's thread that
    launches kernels keeps a core), 0.5 otherwise. Ray Data's operator budget counts these: at 1.0
    it ran 9 tokenize tasks at once on a 16-CPU, 1-GPU node, at 0.5 up to 16
    (benchmarks/feed_concurrency.py). On the H200 0.5 made 3-6% more docs/s after start-up and cost
    6 s of start-up (BENCHMARKS.md, "GPU"), so 1.0 stays the GPU default."""
    stage_calls: int | None = None
    """Batches a stage actor takes at once (Ray Data's max_concurrent_calls_per_actor): while its
    model runs one, Ray Data turns the next input block into a batch and the last answer back into
    a block on the actor's other thread. The model still runs one batch at a time (Ray Data keeps
    a stage's calls single-threaded). None: 2 for GPU stages, whose CPU idles while kernels run;
    1 (Ray Data's default) for CPU stages, where the conversions would take the model's cores (on
    2 cores: 1,224-1,263 docs/s at 2 against 1,292-1,356 at 1, BENCHMARKS.md)."""
    num_stages: int = 1
    """Number of stages when `stages` is empty or gives no layer ranges."""
    layout: str = "balanced"
    """How layers are split when stages give no ranges: even, or balanced (equal expected
    work per stage from the model's measured survival; even when none was measured)."""
    stages: tuple[StageConfig, ...] = ()
    """Explicit per-stage layout; overrides num_stages."""
    rebatch: int = 0
    """0: one actor pool per stage. N >= 1: one pool whose actors hold every stage and take up to
    N input batches at once; at each stage boundary the survivors of those batches are merged, so
    a deeper stage runs passes of `batch_size` running rows (E3). Stage 0's actors and resources."""
    dtype: str = "float32"
    """Compute dtype of every stage that sets none: float32; bfloat16 on a CPU that computes it
    natively (AVX512-BF16 or AMX) tagged 1.5-1.7x faster at the same accuracy (BENCHMARKS.md,
    "bfloat16 on a CPU"); float16 on a GPU. A certificate covers runs in its own dtype: calibrate
    with the same --dtype."""
    carry_dtype: str = "float16"
    """Dtype of hidden states carried between stages."""
    full_depth_eval_rows: int = 0
    """With labels: also run about this many rows at full depth to log full-depth accuracy beside
    the exits' on the same rows (-1 = all). Sampled across the corpus by a hash of the id."""
    trend_runs: int = 14
    """Earlier finished runs of the MLflow experiment the report's trend compares this run with
    (0 = no trend)."""
    plan_target_docs_per_hour: float | None = None
    """Throughput the run report's capacity recommendation is for; None = this run's own rate."""
    exit: ExitConfig = field(default_factory=ExitConfig)
    """Exit policy, thresholds and token exit settings."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """Rows also run to full depth to measure agreement."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Which Ray cluster runs the stages."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Where the run is logged."""

    def __post_init__(self):
        if self.input_format not in ("auto", "parquet", "jsonl", "text"):
            raise ConfigError(f"input_format {self.input_format!r}: use auto, parquet, jsonl or text")
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} is too small; use at least 8 tokens")
        if self.layout not in ("even", "balanced"):
            raise ConfigError(f"layout {self.layout!r}: use even or balanced")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if self.trend_runs < 0:
            raise ConfigError(f"trend_runs={self.trend_runs} must be >= 0 (0 = no trend)")
        if self.num_stages < 1:
            raise ConfigError(f"num_stages={self.num_stages} must be >= 1")
        if self.tokenize_concurrency is not None and self.tokenize_concurrency < 1:
            raise ConfigError(f"tokenize_concurrency={self.tokenize_concurrency}: use 1 or more, or leave it unset "
                              "(the machine's cores on a local Ray)")
        if self.tokenize_cpus is not None and not self.tokenize_cpus > 0:
            raise ConfigError(f"tokenize_cpus={self.tokenize_cpus}: use a share of a CPU above 0 (e.g. 0.5 or 1), "
                              "or leave it unset (1.0 beside GPU stages, 0.5 otherwise)")
        if self.stage_calls is not None and self.stage_calls < 1:
            raise ConfigError(f"stage_calls={self.stage_calls}: use 1 (one batch at a time) or more (2: Ray Data "
                              "converts the next batch while the model runs one), or leave it unset")
        if self.rebatch < 0:
            raise ConfigError(f"rebatch={self.rebatch}: use 0 (a pool per stage) or the input batches an actor "
                              "merges survivors across (e.g. 4)")
        if self.max_errored_blocks < -1:
            raise ConfigError(f"max_errored_blocks={self.max_errored_blocks}: use -1 (no limit), 0 (fail at the first) or more")
        if not 1 <= self.rows_per_file[0] <= self.max_rows_per_file:
            raise ConfigError(f"rows per output file: need 1 <= min_rows_per_file ({self.min_rows_per_file}) "
                              f"<= max_rows_per_file ({self.max_rows_per_file})")
        if self.max_line_bytes < 2**16:
            raise ConfigError(f"max_line_bytes={self.max_line_bytes} is below 64 KiB; a document line needs more")
        check_dtype(self.dtype)
        check_dtype(self.carry_dtype, "carry_dtype")

    @property
    def rows_per_file(self) -> tuple[int, int]:
        """(min, max) output rows per Parquet file, the default minimum resolved."""
        low = self.min_rows_per_file if self.min_rows_per_file is not None else min(50_000, self.max_rows_per_file)
        return low, self.max_rows_per_file

    def require(self, *names: str) -> None:
        """Fail with the flag to set when a required field is missing."""
        require(self, *names)


# Flags the tagging command has had since before they were generated from the fields above;
# a (flag, value) pair is a flag that sets a fixed value.
FLAG_ALIASES = {
    "passthrough_columns": "--passthrough",
    "exit.policy": "--policy",
    "exit.threshold": "--threshold",
    "exit.disabled": ("--no-exits", True),
    "exit.skip_gates": ("--no-skip-gates", False),
    "exit.token.mode": "--exit-mode",
    "exit.token.window": "--window",
    "audit.fraction": "--audit-fraction",
    "audit.target_agreement": "--audit-target",
    "audit.fail_below_target": "--fail-below-target",
}
