"""Running the ``ckstore`` binary: finding it, checking its version, and turning its JSON errors into
exceptions. Nothing here parses a human message: failures are mapped from the CLI's ``code``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Optional, Sequence

from .errors import BinaryNotFound, CKStoreError, error_for

#: The ckstore releases this package speaks to: their ``--json`` fields and error codes are the ones it
#: reads. A binary outside the range is refused with what to do.
SUPPORTED = ((0, 6, 0), (0, 99, 99))


def _parse_version(text: str) -> tuple:
    parts = text.strip().split("-")[0].split(".")
    try:
        return tuple(int(p) for p in parts[:3])
    except ValueError:
        return ()


#: Where a wheel built by ``make wheel`` carries the binary, inside this package.
BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bin", "ckstore")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _is_script(path: str) -> bool:
    """Whether ``path`` is a script (``#!``), such as the ``ckstore`` command a pip install of this package
    puts on ``PATH``, which runs this package and must never be taken for the binary it looks for."""
    try:
        with open(path, "rb") as file:
            return file.read(2) == b"#!"
    except OSError:
        return False


def locate_binary() -> tuple:
    """The ``ckstore`` binary and where it was found: ``("CKSTORE_BIN", path)`` when that is set, else
    ``("bundled", path)`` for the one a wheel carries, else ``("PATH", path)`` for the first on ``PATH``."""
    explicit = os.environ.get("CKSTORE_BIN")
    if explicit:
        if _executable(explicit):
            return "CKSTORE_BIN", explicit
        raise BinaryNotFound(f"CKSTORE_BIN is {explicit!r}, which is not an executable file; "
                             "point it at the ckstore binary, or unset it to use the one this package carries")
    if _executable(BUNDLED):
        return "bundled", BUNDLED
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", "ckstore")
        if _executable(candidate) and not _is_script(candidate):
            return "PATH", candidate
    raise BinaryNotFound("no ckstore binary: this install of the package carries none, CKSTORE_BIN is not set and "
                         "none is on PATH; install the wheel (`make wheel`, then `pip install python/dist/ckstore-*.whl`), "
                         "or `make install [PREFIX=~/.local]` from the ckstore repository, or set CKSTORE_BIN")


def find_binary() -> str:
    """The ``ckstore`` binary: ``$CKSTORE_BIN``, else the one this package carries, else the first on ``PATH``."""
    return locate_binary()[1]


def binary_info() -> dict:
    """Which ``ckstore`` binary the package runs: ``{"path": …, "source": "CKSTORE_BIN" | "bundled" | "PATH",
    "version": …}``. Raises :class:`ckstore.BinaryNotFound` when there is none, or it is a version this package
    does not support."""
    source, path = locate_binary()
    return {"path": path, "source": source, "version": check_version(path)}


def main() -> None:
    """The ``ckstore`` command a pip install puts on ``PATH``: runs the binary :func:`find_binary` finds, with
    this command's arguments, in this process (so signals and the exit status are the binary's own)."""
    try:
        binary = find_binary()
    except BinaryNotFound as error:
        print(f"ckstore: {error}", file=sys.stderr)
        raise SystemExit(127)
    os.execv(binary, [binary] + sys.argv[1:])


_checked: dict = {}


def check_version(binary: str) -> str:
    """Checks once per binary that its version is one this package supports; returns the version."""
    if binary in _checked:
        return _checked[binary]
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as error:
        raise BinaryNotFound(f"cannot run {binary}: {error}") from error
    version = done.stdout.strip()
    parsed = _parse_version(version)
    low, high = SUPPORTED
    if done.returncode != 0 or not parsed or not (low <= parsed <= high):
        want = ".".join(map(str, low))
        raise BinaryNotFound(f"{binary} is ckstore {version or '(unknown version)'}; this Python package needs "
                             f"ckstore {want} or newer (below 1.0): rebuild and reinstall it with `make install`")
    _checked[binary] = version
    return version


class Runner:
    """Runs ckstore commands against one store, with ``--json``."""

    def __init__(self, store: Optional[str], binary: Optional[str] = None, env: Optional[dict] = None):
        self.binary = binary or find_binary()
        self.version = check_version(self.binary)
        self.store = store
        self.env = dict(os.environ if env is None else env)

    def run(self, arguments: Sequence[str], json_output: bool = True, timeout: Optional[float] = None,
            report_on_failure: bool = False, input: Optional[str] = None, pass_fds: Sequence[int] = ()) -> Any:
        """Runs ``ckstore ARGUMENTS --store STORE --json``; returns the parsed output.

        With ``report_on_failure``, exit status 1 with a JSON report on standard output (``verify`` that
        found damage) returns the report instead of raising. ``input`` goes to its standard input;
        ``pass_fds`` are descriptors it inherits under the same numbers."""
        command = [self.binary, *arguments]
        if self.store is not None:
            command += ["--store", self.store]
        if json_output:
            command.append("--json")
        done = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=timeout, input=input,
                              pass_fds=tuple(pass_fds))
        if done.returncode == 1 and report_on_failure and done.stdout.strip().startswith("{"):
            return json.loads(done.stdout)
        if done.returncode != 0:
            raise self._error(done)
        if not json_output:
            return done.stdout
        text = done.stdout.strip()
        return json.loads(text) if text else None

    @staticmethod
    def _error(done: subprocess.CompletedProcess) -> CKStoreError:
        # With --json a failure is one JSON line on standard error: {"error": {"code", "message", ...}}.
        for line in reversed(done.stderr.strip().splitlines()):
            try:
                payload = json.loads(line)
            except ValueError:
                continue
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                error = payload["error"]
                return error_for(error.get("code", "internal"), error.get("message", ""), done.returncode)
        return CKStoreError(done.stderr.strip() or f"ckstore exited with {done.returncode}", code="internal",
                            exit_code=done.returncode)
