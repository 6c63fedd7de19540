"""A real S3-compatible server on loopback for the tests: moto's server mode in its own process.

Nothing is mocked: pyarrow's S3FileSystem (in the driver and in Ray's workers) talks HTTP to
`python -m moto.server` on 127.0.0.1. The fixture sets the same environment a user sets for an
S3-compatible store (README, "Object storage"): AWS_ENDPOINT_URL with its http:// scheme,
credentials and a region. A Ray cluster started after it (the `local_ray` fixture, which must
come after `s3_server` in a test's fixtures) inherits it in every worker.

    from tests.s3_server import s3_server  # noqa: F401  (a module-scoped fixture)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

BUCKET = "offramp-test"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    env: dict  # the environment the fixture set (and a user would set)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key.lstrip('/')}"

    def filesystem(self) -> pafs.S3FileSystem:
        """A client of the server, built without the environment (to check what the job wrote)."""
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint, access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.env["AWS_SECRET_ACCESS_KEY"], region=REGION, allow_bucket_creation=True,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(endpoint: str, proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}: {Path(log_path).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=1) as r:  # ListBuckets
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server on {endpoint} did not answer in {START_TIMEOUT_S:.0f} s")


def s3_environment(endpoint: str) -> dict[str, str]:
    """What pyarrow (AWS SDK for C++) reads: the endpoint (its scheme says http), fixed
    credentials, a region, and no instance-metadata lookups."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free loopback port with one bucket; the S3 environment set for this
    process and the processes it starts (Ray) until the module ends. Yields an S3Server."""
    import ray

    if ray.is_initialized():  # its workers would not see the endpoint
        raise RuntimeError("s3_server must start before Ray: list it before local_ray in the fixtures")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = str(tmp_path_factory.mktemp("moto") / "server.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until_up(endpoint, proc, log_path)
        env = s3_environment(endpoint)
        with pytest.MonkeyPatch.context() as mp:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                mp.delenv(name, raising=False)
            for name, value in env.items():
                mp.setenv(name, value)
            server = S3Server(endpoint, BUCKET, env)
            server.filesystem().create_dir(BUCKET)
            yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
