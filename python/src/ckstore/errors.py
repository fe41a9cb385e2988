"""Exceptions, one per kind of failure the CLI reports, mapped from its machine-readable ``code``."""

from __future__ import annotations


class CKStoreError(Exception):
    """A ckstore command failed. ``code`` is the CLI's error code (the README lists them), ``message``
    what the CLI said."""

    def __init__(self, message: str, code: str = "internal", exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code
        self.exit_code = exit_code


class BinaryNotFound(CKStoreError):
    """The ckstore binary is missing, cannot run, or is a version this package does not support."""

    def __init__(self, message: str):
        super().__init__(message, code="binary_not_found", exit_code=127)


class CheckpointNotFound(CKStoreError):
    """No such store, checkpoint, run, file or tensor (``not_found``)."""


class DamagedCheckpoint(CKStoreError):
    """Stored data failed a check or is missing (``damaged``)."""


class Conflict(CKStoreError):
    """The run already has different content at that step, or a concurrent gc took what a put needed
    (``conflict``)."""


class UsageError(CKStoreError):
    """A bad argument, value or reference (``usage``, ``invalid_input``, ``ambiguous_reference``)."""


class RemoteError(CKStoreError):
    """A remote refused a request or could not be reached (``remote``)."""


class BackgroundSaveError(CKStoreError):
    """A save that ran in the background failed (``ckstore.torch.save(..., background=True)``): raised by
    the next save or ``finish()``. ``cause`` is what the save raised (a :class:`RemoteError` for a refused
    push, say); ``code`` is its code."""

    def __init__(self, message: str, cause: BaseException, run: str, step: int):
        super().__init__(message, code=getattr(cause, "code", "internal"), exit_code=getattr(cause, "exit_code", 1))
        self.cause = cause
        self.run = run
        self.step = step


_BY_CODE = {
    "not_found": CheckpointNotFound,
    "damaged": DamagedCheckpoint,
    "conflict": Conflict,
    "usage": UsageError,
    "invalid_input": UsageError,
    "ambiguous_reference": UsageError,
    "remote": RemoteError,
}


def error_for(code: str, message: str, exit_code: int = 1) -> CKStoreError:
    """The exception for a CLI error code."""
    return _BY_CODE.get(code, CKStoreError)(message, code=code, exit_code=exit_code)
