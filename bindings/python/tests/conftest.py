"""Shared fixtures: the running server (started by
scripts/test.d/40-bindings.sh, which exports WAYPOST_URL and WAYPOST_BIN),
token minting through `waypost token --dev`, trail reads, and polling."""

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request
import uuid

import pytest


def _env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run scripts/test.d/40-bindings.sh (it starts a server)")
    return value


class Server:
    def __init__(self):
        self.url = _env("WAYPOST_URL")
        self.bin = _env("WAYPOST_BIN")

    def token(self, sub, role, channels=(), ttl="10m"):
        cmd = [self.bin, "token", "--dev", "--sub", sub, "--role", role, "--ttl", ttl]
        if channels:
            cmd += ["--channels", ",".join(channels)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[-1]

    def get_json(self, path):
        req = urllib.request.Request(
            self.url + path, headers={"Authorization": "Bearer " + self.token("py-tests", "service")}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def post_json(self, path, body):
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": "Bearer " + self.token("py-tests", "service"),
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)

    def post_fix(self, driver_id, token, seq):
        """One fix of `driver_id` (seq `seq`, now) straight to the ingest."""
        body = {"device_id": "py", "fixes": [{"seq": seq, "ts": int(time.time() * 1000), "lat": 52.5, "lon": 13.4}]}
        req = urllib.request.Request(
            self.url + f"/v1/drivers/{driver_id}/locations",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200, resp.status

    def trail(self, driver_id):
        return self.get_json(f"/v1/drivers/{driver_id}/trail?limit=1000")["fixes"]


class OwnServer(Server):
    """`waypost serve --dev` of a test's own on a free loopback port, with
    extra arguments (e.g. a short `--online-ttl`); same dev signing key as
    the shared server. Use as a context manager: it is stopped on exit."""

    def __init__(self, *args):
        super().__init__()
        self._log = tempfile.NamedTemporaryFile(prefix="waypost-server-", suffix=".log", delete=False)
        self._proc = subprocess.Popen(
            [self.bin, "serve", "--dev", "--listen", "127.0.0.1:0", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            with open(self._log.name, encoding="utf-8", errors="replace") as f:
                found = re.search(r"^listening on (\S+)$", f.read(), re.M)
            if found:
                self.url = f"http://{found.group(1)}"
                return
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                with open(self._log.name, encoding="utf-8", errors="replace") as f:
                    raise RuntimeError(f"the server did not start: {f.read()}")
            time.sleep(0.05)

    def close(self):
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture(scope="session")
def server():
    return Server()


@pytest.fixture
def unique():
    """unique("d") -> an id no other test (or earlier run) uses."""
    return lambda prefix: f"{prefix}-py-{uuid.uuid4().hex[:8]}"


def wait_for(what, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}")
        time.sleep(0.02)
