"""s3:// input and output end to end against a real S3-compatible server on loopback (moto's
server mode, tests/s3_server.py): the tagging job reads and writes through pyarrow's
S3FileSystem, configured only by the environment a user sets (AWS_ENDPOINT_URL, credentials,
region), in the driver and in every Ray worker."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray

from offramp.config import AuditConfig, ConfigError, MlflowConfig, RayConfig, TagConfig
from pipelines import run_tagging
from pipelines.output import write_manifest
from pipelines.storage import check_bucket, filesystem
from tests.s3_server import free_port, s3_server  # noqa: F401  (s3_server: a fixture)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _s3_then_ray(s3_server, local_ray):  # noqa: F811
    """The server and its environment first, then the module's Ray, whose workers inherit it."""


def config(tmp_path, input_path, model_dir, output, **kw) -> TagConfig:
    base = dict(
        input=input_path,
        model=model_dir,
        output=output,
        id_column="id",
        text_column="text",
        max_length=64,
        tokenize_batch_size=8,
        batch_size=8,
        num_stages=1,  # one stage pool: what is under test is reading and writing the store
        stages=(),
        audit=AuditConfig(fraction=0.3, seed=1),
        mlflow=MlflowConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test"),
        ray=RayConfig(),
    )
    base.update(kw)
    return TagConfig(**base)


def read_s3(server, key: str) -> pa.Table:
    """The job's output read back from the server with a client of its own."""
    return pads.dataset(f"{server.bucket}/{key}", format="parquet", filesystem=server.filesystem()).to_table()


def labels(table: pa.Table) -> dict:
    """id -> (label, exit layer, status)."""
    rows = table.select(["id", "label", "exit_layer", "status"]).to_pylist()
    return {r["id"]: (r["label"], r["exit_layer"], r["status"]) for r in rows}


@pytest.fixture(scope="module")
def uploaded(s3_server, corpus_parquet):  # noqa: F811
    """The tests' corpus in the bucket as Parquet (in/parquet/) and as JSONL (in/jsonl/)."""
    fs = s3_server.filesystem()
    table = pq.read_table(corpus_parquet)
    pq.write_table(table, f"{s3_server.bucket}/in/parquet/part-0.parquet", filesystem=fs)
    lines = "\n".join(json.dumps({"id": r["id"], "text": r["text"]}) for r in table.to_pylist()) + "\n"
    with fs.open_output_stream(f"{s3_server.bucket}/in/jsonl/part-0.jsonl") as f:
        f.write(lines.encode())
    return table


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, model_dir, corpus_parquet):
    """The same job on local paths: the labels S3 runs must reproduce."""
    tmp = tmp_path_factory.mktemp("local")
    cfg = config(tmp, corpus_parquet, model_dir, str(tmp / "out"))
    run_tagging(cfg)
    return pq.read_table(cfg.output)


def test_ray_workers_see_the_endpoint(s3_server):  # noqa: F811
    """A worker started by the module's Ray inherited the environment (how a user's local run works)."""
    assert ray.get(ray.remote(lambda: os.environ.get("AWS_ENDPOINT_URL")).remote()) == s3_server.endpoint
    fs, path = filesystem(s3_server.uri("in"))
    assert isinstance(fs, pafs.S3FileSystem) and path == f"{s3_server.bucket}/in"


def assert_like_the_local_run(out: pa.Table, uploaded: pa.Table, local_run: pa.Table) -> None:
    """One output row per input row, the same ids, and each row's label, exit layer and status
    those of the same job on local paths."""
    assert out.num_rows == uploaded.num_rows
    assert sorted(out.column("id").to_pylist()) == sorted(uploaded.column("id").to_pylist())
    assert labels(out) == labels(local_run)
    assert set(out.column("status").to_pylist()) == {"ok"}


def test_parquet_on_s3_tagged_to_s3_gives_the_local_runs_labels(tmp_path, model_dir, s3_server, uploaded, local_run):  # noqa: F811
    cfg = config(tmp_path, s3_server.uri("in/parquet/"), model_dir, s3_server.uri("out/parquet"))
    result = run_tagging(cfg)
    out = read_s3(s3_server, "out/parquet")
    assert_like_the_local_run(out, uploaded, local_run)
    assert result.metrics["rows"] == out.num_rows  # the driver read the output back from the store
    # the run's record and Ray Data's checkpoints live in the bucket too; the manifest goes last
    fs, root = s3_server.filesystem(), f"{s3_server.bucket}/out/parquet"
    assert result.complete and result.rows_in == out.num_rows
    assert fs.get_file_info(f"{root}/_checkpoint").type == pafs.FileType.Directory
    write_manifest(cfg, result.started, result, None, None)
    with fs.open_input_stream(f"{root}/_manifest.json") as f:
        manifest = json.loads(f.read())
    assert manifest["rows_out"] == manifest["rows_in"] == out.num_rows
    assert fs.get_file_info(f"{root}/_checkpoint").type == pafs.FileType.NotFound
    assert read_s3(s3_server, "out/parquet").num_rows == out.num_rows  # readers skip the _ files


def test_existing_s3_output_is_refused_unless_overwrite(tmp_path, model_dir, s3_server, uploaded, local_run):  # noqa: F811
    """An output already in the bucket stops the run at start; with --overwrite it is replaced
    (JSONL input here: read as raw bytes from the store and split into rows by the reader)."""
    fs = s3_server.filesystem()
    stale = f"{s3_server.bucket}/out/jsonl/stale.parquet"
    pq.write_table(pa.table({"id": ["old"]}), stale, filesystem=fs)
    cfg = config(tmp_path, s3_server.uri("in/jsonl"), model_dir, s3_server.uri("out/jsonl"))
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        run_tagging(cfg)
    assert fs.get_file_info(stale).is_file, "nothing was touched"
    result = run_tagging(dataclasses.replace(cfg, overwrite=True))
    assert fs.get_file_info(stale).type == pafs.FileType.NotFound, "--overwrite replaced the old output"
    out = read_s3(s3_server, "out/jsonl")
    assert_like_the_local_run(out, uploaded, local_run)
    assert result.metrics["rows"] == out.num_rows


def test_a_missing_bucket_or_input_fails_at_start(tmp_path, model_dir, s3_server, uploaded, command):  # noqa: F811
    ok_in, ok_out = s3_server.uri("in/parquet"), s3_server.uri("out/never")
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket' .*does not exist"):
        run_tagging(config(tmp_path, "s3://no-such-bucket/in/", model_dir, ok_out))
    with pytest.raises(ConfigError, match=r"input s3://.*/in/nothing-here does not exist"):
        run_tagging(config(tmp_path, s3_server.uri("in/nothing-here"), model_dir, ok_out))
    with pytest.raises(ConfigError, match=r"bucket 'no-such-bucket' .*does not exist"):
        run_tagging(config(tmp_path, ok_in, model_dir, "s3://no-such-bucket/out"))
    # the command line: exit status 2 and the message, no traceback
    status, _, err = command("tag", "--input", ok_in, "--model", model_dir, "--output", "s3://no-such-bucket/out",
                             "--id-column", "id", "--mlflow.tracking-uri", f"sqlite:///{tmp_path}/mlflow.db")
    assert status == 2 and "no-such-bucket" in err and "Traceback" not in err
    assert s3_server.filesystem().get_file_info(f"{s3_server.bucket}/out/never").type == pafs.FileType.NotFound


def test_an_unreachable_store_is_a_config_error():
    """A store that does not answer (nothing listens on the port) fails naming the settings to
    check. This is the check filesystem() makes, on a client without retries (the default
    client's three attempts take 6 s to give up); a URI pyarrow rejects is a ConfigError too."""
    fs = pafs.S3FileSystem(endpoint_override=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    with pytest.raises(ConfigError, match=r"cannot reach .*127\.0\.0\.1.*AWS_ENDPOINT_URL"):
        check_bucket(fs, "unreachable-bucket/in", "s3://unreachable-bucket/in")
    with pytest.raises(ConfigError, match="not a URI pyarrow can open"):
        filesystem("s3://bucket/in?no_such_option=1")  # before: silently a local path named s3:/bucket/in
