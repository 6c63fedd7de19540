"""jobs/serve.py as a user runs it: a bad model fails at start with the fix; a good one serves
over HTTP until interrupted, then shuts Serve down and exits 0."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import LABELS, NUM_LAYERS, TEXTS

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"jobs/serve.py exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as r:
                return json.load(r)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise AssertionError(f"not ready within {seconds} s")


@pytest.mark.slow  # a job subprocess
def test_the_serve_job_refuses_a_bad_model_before_starting(tmp_path):
    r = subprocess.run([sys.executable, "jobs/serve.py", "--model", str(tmp_path)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "not a model directory" in r.stderr and "--model" in r.stderr


@pytest.mark.slow
@pytest.mark.ray  # the job starts its own local Ray and Serve
def test_the_serve_job_answers_over_http_until_interrupted(model_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "jobs/serve.py", "--model", model_dir, "--port", str(port),
                             "--max-length", "64", "--set", "ray.num_cpus=4"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_ready(base, proc, 240)["ready"]
        body = json.dumps({"texts": [TEXTS[0], ""]}).encode()
        request = urllib.request.Request(f"{base}/v1/classify", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answers = json.load(r)["results"]
        assert answers[0]["label"] in LABELS and 1 <= answers[0]["exit_layer"] <= NUM_LAYERS
        assert answers[1]["status"] == "empty"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
