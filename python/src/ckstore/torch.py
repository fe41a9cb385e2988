"""Plain PyTorch loops: ``save`` a model, optimizer and scheduler as one checkpoint, ``load`` them back.

The checkpoint is the folder a Hugging Face Trainer would write: ``model.safetensors`` (the model's state
dict, through safetensors), ``optimizer.pt``, ``scheduler.pt`` and ``extra.pt`` (as ``torch.save``
writes them), put into the store in one step. ckstore chunks the tensors inside both formats, so
unchanged weights and optimizer state cost nothing the next time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

from .store import PutResult, Store

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
EXTRA_FILE = "extra.pt"


def _torch():
    import torch  # the real one: this module is ckstore.torch

    return torch


def save(store: Store, run: str, step: int, model=None, optimizer=None, scheduler=None, extra: Optional[Mapping[str, Any]] = None,
         metrics: Optional[Mapping[str, float]] = None, tags=(), push: Optional[str] = None) -> PutResult:
    """Writes the model (safetensors), optimizer and scheduler state (``torch.save``) and ``extra`` into a
    staging folder and puts it as checkpoint ``run@step``; the folder is removed afterwards."""
    torch = _torch()
    from safetensors.torch import save_model

    staging = tempfile.mkdtemp(prefix=f"ckstore-{run}-{step}-", dir=_staging_root(store))
    try:
        if model is not None:
            # safetensors' own writer for modules: tied weights are saved once and re-tied on load.
            save_model(model, os.path.join(staging, MODEL_FILE), metadata={"format": "pt"}, force_contiguous=True)
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(staging, OPTIMIZER_FILE))
        if scheduler is not None:
            torch.save(scheduler.state_dict(), os.path.join(staging, SCHEDULER_FILE))
        if extra is not None:
            torch.save(dict(extra), os.path.join(staging, EXTRA_FILE))
        return store.put(staging, run=run, step=step, metrics=metrics, tags=tags, push=push)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load(store: Store, ref: str, model=None, optimizer=None, scheduler=None, map_location="cpu",
         strict: bool = True) -> dict:
    """Restores checkpoint ``ref`` (``RUN@latest-valid``, ``RUN@STEP``, an id) into the objects given;
    returns ``extra`` (an empty dict when none was saved)."""
    torch = _torch()
    from safetensors.torch import load_model

    staging = tempfile.mkdtemp(prefix="ckstore-load-", dir=_staging_root(store))
    try:
        destination = os.path.join(staging, "checkpoint")
        store.get(ref, destination)
        if model is not None:
            load_model(model, os.path.join(destination, MODEL_FILE), strict=strict, device=str(map_location))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(os.path.join(destination, OPTIMIZER_FILE), map_location=map_location, weights_only=True))
        if scheduler is not None:
            scheduler.load_state_dict(torch.load(os.path.join(destination, SCHEDULER_FILE), map_location=map_location, weights_only=True))
        extra_path = os.path.join(destination, EXTRA_FILE)
        return torch.load(extra_path, map_location=map_location, weights_only=False) if os.path.exists(extra_path) else {}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _staging_root(store: Store) -> Optional[str]:
    """Where staging folders go: ``$CKSTORE_STAGING`` (put it on the store's file system when /tmp is
    small), else the system's temporary folder."""
    return os.environ.get("CKSTORE_STAGING") or None
