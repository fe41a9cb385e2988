"""Preemption notices: act on the cloud's warning, not only on SIGTERM.

A spot or preemptible machine is told it will be taken away before the process is: EC2 announces a spot
interruption through the instance metadata service about two minutes ahead (``spot/instance-action``),
GCP sets ``instance/preempted`` 30 seconds ahead, Azure posts a ``Preempt`` scheduled event at least 30
seconds ahead. The process itself gets SIGTERM only at the end. ``Watcher`` polls what the machine's
cloud offers, as each cloud recommends (EC2 every 5 s, Azure every second, GCP's ``wait_for_change``
long poll), and catches SIGTERM everywhere else; ``requested()`` turns true on the first notice.

Off-cloud nothing answers and nothing happens: detection costs one short request per cloud, in
parallel, under a second. Endpoints can be moved for tests and odd platforms the way the SDKs allow:
``AWS_EC2_METADATA_SERVICE_ENDPOINT`` and ``AWS_EC2_METADATA_DISABLED=true`` (as the AWS SDKs),
``GCE_METADATA_HOST`` (as Google's client libraries), and ``CKSTORE_AZURE_METADATA_ENDPOINT``;
``CKSTORE_PREEMPTION_CLOUDS`` (``ec2,gcp,azure`` or ``none``) limits which are asked.

``CKStoreCallback(preemption=True)`` (Trainer), ``ckstore.lightning.PreemptionCallback`` and
``ckstore.torch.save_if_preempted`` (plain loops) save, push and stop at the first step boundary after a
notice.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

#: How often each cloud is asked, in seconds, as its documentation recommends.
EC2_POLL = 5.0
AZURE_POLL = 1.0


@dataclass(frozen=True)
class Notice:
    """A preemption notice: where it came from, when this process saw it (``time.time()``), and when the
    machine goes (``deadline``, Unix seconds; None when the cloud does not say)."""
    source: str
    seen_at: float
    deadline: Optional[float] = None
    detail: str = ""

    def seconds_left(self, now: Optional[float] = None) -> Optional[float]:
        return None if self.deadline is None else self.deadline - (time.time() if now is None else now)


def _parse_time(text: str) -> Optional[float]:
    """An ISO 8601 UTC time (EC2's ``2026-12-07T08:22:00Z``) or an RFC 1123 one (Azure's ``NotBefore``)."""
    if not text:
        return None
    for parse in (lambda t: datetime.datetime.fromisoformat(t.replace("Z", "+00:00")),
                  lambda t: datetime.datetime.strptime(t, "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=datetime.timezone.utc)):
        try:
            value = parse(text)
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        except ValueError:
            continue
    return None


def _request(method: str, url: str, headers: Mapping[str, str], timeout: float):
    """``(status, headers, body)``; status 0 when nothing answered."""
    request = urllib.request.Request(url, method=method, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers or {}), error.read() if error.fp else b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, {}, b""


class _EC2:
    name = "ec2"
    poll = EC2_POLL

    def __init__(self, env: Mapping[str, str], rebalance: bool):
        self.base = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or "http://169.254.169.254").rstrip("/")
        self.disabled = env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
        self.rebalance = rebalance
        self.token: Optional[str] = None
        self.token_expires = 0.0

    def _token(self, timeout: float) -> Optional[str]:
        if self.token and time.time() < self.token_expires - 60:
            return self.token
        status, _, body = _request("PUT", self.base + "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "21600"}, timeout)
        if status != 200:
            return None
        self.token, self.token_expires = body.decode().strip(), time.time() + 21600
        return self.token

    def _get(self, path: str, timeout: float):
        token = self._token(timeout)
        if token is None:
            return 0, b""
        status, _, body = _request("GET", self.base + path, {"X-aws-ec2-metadata-token": token}, timeout)
        if status == 401:  # the token expired or was revoked
            self.token = None
            token = self._token(timeout)
            status, _, body = _request("GET", self.base + path, {"X-aws-ec2-metadata-token": token or ""}, timeout)
        return status, body

    def detect(self, timeout: float) -> bool:
        return not self.disabled and self._token(timeout) is not None

    def check(self, timeout: float) -> Optional[Notice]:
        status, body = self._get("/latest/meta-data/spot/instance-action", timeout)
        if status == 200:
            try:
                action = json.loads(body)
            except ValueError:
                action = {}
            return Notice("ec2 spot " + str(action.get("action", "interruption")), time.time(), _parse_time(str(action.get("time", ""))), body.decode(errors="replace"))
        if self.rebalance:
            status, body = self._get("/latest/meta-data/events/recommendations/rebalance", timeout)
            if status == 200:
                return Notice("ec2 rebalance recommendation", time.time(), None, body.decode(errors="replace"))
        return None


class _GCP:
    name = "gcp"
    poll = 0.0  # a long poll: the request itself waits for a change

    def __init__(self, env: Mapping[str, str]):
        host = env.get("GCE_METADATA_HOST") or "metadata.google.internal"
        self.base = host.rstrip("/") if "://" in host else "http://" + host.rstrip("/")

    def detect(self, timeout: float) -> bool:
        status, headers, _ = _request("GET", self.base + "/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"}, timeout)
        return status == 200 and any(k.lower() == "metadata-flavor" and v == "Google" for k, v in headers.items())

    def check(self, timeout: float) -> Optional[Notice]:
        # Blocks until the value changes (or the server's own timeout), then answers the new value.
        status, _, body = _request("GET", self.base + "/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec=30",
                                   {"Metadata-Flavor": "Google"}, 35)
        if status == 200 and body.decode().strip().upper() == "TRUE":
            # Spot VMs get 30 seconds from ACPI soft off.
            return Notice("gcp preemption", time.time(), time.time() + 30, "instance/preempted TRUE")
        if status != 200:
            time.sleep(1)
        return None


class _Azure:
    name = "azure"
    poll = AZURE_POLL
    PATH = "/metadata/scheduledevents?api-version=2020-07-01"

    def __init__(self, env: Mapping[str, str]):
        self.base = (env.get("CKSTORE_AZURE_METADATA_ENDPOINT") or "http://169.254.169.254").rstrip("/")

    def _events(self, timeout: float):
        status, _, body = _request("GET", self.base + self.PATH, {"Metadata": "true"}, timeout)
        if status != 200:
            return None
        try:
            return json.loads(body).get("Events", [])
        except (ValueError, AttributeError):
            return None

    def detect(self, timeout: float) -> bool:
        return self._events(timeout) is not None

    def check(self, timeout: float) -> Optional[Notice]:
        for event in self._events(timeout) or []:
            if event.get("EventType") == "Preempt":
                return Notice("azure preempt", time.time(), _parse_time(event.get("NotBefore", "")), json.dumps(event))
        return None


class Watcher:
    """Watches for a preemption notice in a background thread (one per cloud that answers), and for
    SIGTERM; ``requested()`` is true from the first notice on. Has no effect off-cloud but SIGTERM's."""

    def __init__(self, clouds: Optional[List[str]] = None, rebalance: bool = False, poll: Optional[float] = None,
                 signals=(signal.SIGTERM,), env: Optional[Mapping[str, str]] = None, detect_timeout: float = 0.5):
        env = dict(os.environ if env is None else env)
        chosen = clouds if clouds is not None else [c for c in (env.get("CKSTORE_PREEMPTION_CLOUDS") or "ec2,gcp,azure").split(",") if c and c != "none"]
        known = {"ec2": lambda: _EC2(env, rebalance), "gcp": lambda: _GCP(env), "azure": lambda: _Azure(env)}
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise ValueError(f"unknown clouds {unknown}; ckstore knows ec2, gcp and azure")
        self._candidates = [known[c]() for c in chosen]
        self._poll = poll
        self._signals = tuple(signals)
        self._detect_timeout = detect_timeout
        self._notice: Optional[Notice] = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._previous: Dict[int, object] = {}
        self._listeners: List[Callable[[Notice], None]] = []
        #: The clouds that answered detection.
        self.clouds: List[str] = []

    def start(self) -> "Watcher":
        for number in self._signals:
            try:
                self._previous[number] = signal.signal(number, self._on_signal)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        found = [None] * len(self._candidates)

        def probe(index, cloud):
            found[index] = cloud.detect(self._detect_timeout)

        probes = [threading.Thread(target=probe, args=(i, c), daemon=True) for i, c in enumerate(self._candidates)]
        for thread in probes:
            thread.start()
        for thread in probes:
            thread.join(self._detect_timeout * 2 + 0.5)
        for cloud, present in zip(self._candidates, found):
            if present:
                self.clouds.append(cloud.name)
                thread = threading.Thread(target=self._watch, args=(cloud,), name=f"ckstore-preemption-{cloud.name}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for number, previous in self._previous.items():
            try:
                signal.signal(number, previous)
            except (ValueError, TypeError):
                pass
        self._previous.clear()

    def requested(self) -> bool:
        return self._notice is not None

    @property
    def notice(self) -> Optional[Notice]:
        return self._notice

    def on_notice(self, listener: Callable[[Notice], None]) -> None:
        """Calls ``listener(notice)`` once, from the watching thread, when the first notice comes."""
        self._listeners.append(listener)

    def _record(self, notice: Notice) -> None:
        with self._lock:
            if self._notice is not None:
                return
            self._notice = notice
        for listener in self._listeners:
            try:
                listener(notice)
            except Exception:  # a listener's failure must not stop the watch
                pass

    def _on_signal(self, number, frame) -> None:
        self._record(Notice(signal.Signals(number).name, time.time(), None, "signal"))

    def _watch(self, cloud) -> None:
        interval = self._poll if self._poll is not None else cloud.poll
        while not self._stop.is_set() and self._notice is None:
            notice = cloud.check(max(1.0, self._detect_timeout))
            if notice is not None:
                self._record(notice)
                return
            if interval:
                self._stop.wait(interval)


_default: Optional[Watcher] = None
_default_lock = threading.Lock()


def watch(**options) -> Watcher:
    """The process's watcher, started on first use (``options`` as for :class:`Watcher`)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Watcher(**options).start()
        return _default


def requested() -> bool:
    """Whether a preemption notice (or SIGTERM) has come; starts the process's watcher on first call.
    Poll it at step boundaries."""
    return watch().requested()


def notice() -> Optional[Notice]:
    return watch().notice


def durable_message(run: str, step: int, remote: Optional[str], notice: Notice, now: Optional[float] = None) -> str:
    """``checkpoint RUN@STEP durable on REMOTE, N s after the notice, M s before the deadline``."""
    now = time.time() if now is None else now
    where = remote if remote is not None else "the local store (no remote)"
    left = notice.seconds_left(now)
    tail = f", {left:.1f} s before the deadline" if left is not None else ""
    return f"checkpoint {run}@{step} durable on {where}, {now - notice.seen_at:.1f} s after the notice ({notice.source}){tail}"
