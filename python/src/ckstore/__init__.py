"""ckstore for Python: a content-addressed checkpoint store for machine-learning training.

``ckstore.Store`` drives the ``ckstore`` binary through its ``--json`` output; ``ckstore.hf``
(Hugging Face Trainer), ``ckstore.lightning`` (PyTorch Lightning) and ``ckstore.torch`` (plain loops)
build on it. Nothing here imports torch, transformers or lightning until those modules are used.
"""

from .errors import (
    BackgroundSaveError,
    BinaryNotFound,
    CheckpointNotFound,
    CKStoreError,
    Conflict,
    DamagedCheckpoint,
    RemoteError,
    UsageError,
)
from ._cli import binary_info
from .store import Advice, AdviceInterval, Checkpoint, PendingCheckpoint, PullResult, PushResult, PutResult, RestoreResult, ResumeResult, Store

__all__ = [
    "Store", "Advice", "AdviceInterval", "Checkpoint", "PendingCheckpoint", "PutResult", "RestoreResult", "PushResult", "PullResult", "ResumeResult",
    "binary_info", "CKStoreError", "BinaryNotFound", "CheckpointNotFound", "DamagedCheckpoint", "Conflict", "UsageError", "RemoteError",
    "BackgroundSaveError",
]
__version__ = "0.9.0"
