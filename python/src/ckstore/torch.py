"""Plain PyTorch loops: ``save`` a model, optimizer and scheduler as one checkpoint, ``load`` them back;
``save_sharded`` and ``load_sharded`` for state that many ranks save with torch.distributed.checkpoint.

The checkpoint is the folder a Hugging Face Trainer would write: ``model.safetensors`` (the model's state
dict, through safetensors), ``optimizer.pt``, ``scheduler.pt`` and ``extra.pt`` (as ``torch.save``
writes them), put into the store in one step. ckstore chunks the tensors inside both formats, so
unchanged weights and optimizer state cost nothing the next time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
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
         strict: bool = True, remote: Optional[str] = None) -> dict:
    """Restores checkpoint ``ref`` (``RUN@latest-valid``, ``RUN@STEP``, an id) into the objects given;
    returns ``extra`` (an empty dict when none was saved).

    ``RUN@latest-valid`` with a remote (``remote``, else the store's default remote) is the newest valid
    checkpoint of the store and the remote together, pulled when the remote's is newer."""
    torch = _torch()
    from safetensors.torch import load_model

    staging = tempfile.mkdtemp(prefix="ckstore-load-", dir=_staging_root(store))
    try:
        destination = os.path.join(staging, "checkpoint")
        _restore(store, ref, destination, remote)
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


def save_if_preempted(store: Store, run: str, step: int, model=None, optimizer=None, scheduler=None,
                      extra: Optional[Mapping[str, Any]] = None, push: Optional[str] = None, watcher=None) -> bool:
    """For a plain loop, at each step boundary: when a preemption notice (EC2, GCP, Azure, SIGTERM) has
    come, saves ``run@step`` with :func:`save`, pushes it to ``push``, logs when it is durable and returns
    True (stop training then); else returns False at once.

    ``watcher`` defaults to the process's :func:`ckstore.preemption.watch`."""
    from . import preemption

    watcher = watcher or preemption.watch()
    if not watcher.requested():
        return False
    save(store, run, step, model, optimizer, scheduler, extra=extra, push=push)
    import sys

    print(f"ckstore: {preemption.durable_message(run, step, push, watcher.notice)}", file=sys.stderr, flush=True)
    return True


def _restore(store: Store, ref: str, destination: str, remote: Optional[str]) -> None:
    """``ref`` into ``destination``; ``RUN@latest-valid`` with a remote resumes from the newest of both."""
    remote = remote or store.remote
    if remote is not None and ref.endswith("@latest-valid"):
        store.resume(ref[: -len("@latest-valid")], destination, remote=remote)
    else:
        store.get(ref, destination)


def _staging_root(store: Store) -> Optional[str]:
    """Where staging folders go: ``$CKSTORE_STAGING`` (put it on the store's file system when /tmp is
    small), else the system's temporary folder."""
    return os.environ.get("CKSTORE_STAGING") or None


# Sharded checkpoints: each rank saves its part with torch.distributed.checkpoint (DCP).


@dataclass(frozen=True)
class ShardedLoad:
    """What ``load_sharded`` loaded: the checkpoint's id, run and step."""
    id: str
    run: str
    step: int


def _distributed(process_group):
    """This process's rank and the world size (0 and 1 without an initialized process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(process_group), dist.get_world_size(process_group)
    return 0, 1


def save_sharded(store: Store, run: str, step: int, state_dict: Mapping[str, Any], *, push: Optional[str] = None,
                 metrics: Optional[Mapping[str, float]] = None, tags=(), process_group=None,
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> PutResult:
    """Saves this rank's part of ``state_dict`` with ``torch.distributed.checkpoint.save`` into a staging
    folder of its own and puts it as shard ``rank/world_size`` of checkpoint ``run@step`` (pushed to
    ``push`` when given). Every rank of the process group calls it, as it calls ``dcp.save``.

    DCP writes each rank's ``__<rank>_0.distcp`` and, on the coordinator (rank 0), the ``.metadata`` that
    names every item; ranks need no shared file system. The checkpoint becomes visible (``ls``,
    ``RUN@latest-valid``) only once every rank's shard is committed, in one store or on the remote, so a
    rank that dies before its put or push leaves it pending, never half-visible. No barrier is needed for
    that: whichever rank commits the last shard writes the checkpoint."""
    import torch.distributed.checkpoint as dcp

    found_rank, found_world = _distributed(process_group)
    rank = found_rank if rank is None else rank
    world_size = found_world if world_size is None else world_size
    staging = tempfile.mkdtemp(prefix=f"ckstore-{run}-{step}-rank{rank}-", dir=_staging_root(store))
    try:
        dcp.save(dict(state_dict), storage_writer=dcp.FileSystemWriter(staging), process_group=process_group)
        return store.put(staging, run=run, step=step, metrics=metrics, tags=tags, push=push, shard=(rank, world_size))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_sharded(store: Store, ref: str, state_dict: Mapping[str, Any], *, remote: Optional[str] = None,
                 process_group=None, discard_newer_pending: bool = True) -> ShardedLoad:
    """Loads checkpoint ``ref`` (``RUN@latest-valid``, ``RUN@STEP``, an id) into ``state_dict`` in place,
    with ``torch.distributed.checkpoint.load``: every rank of the process group calls it. The world size
    may differ from the one that saved (DCP reshards on load).

    The coordinator resolves ``ref`` (on ``remote`` when given) and every rank loads that checkpoint.
    Each rank restores only the files its own load plan reads, plus ``.metadata``, from its store or,
    with ``remote``, fetching only what those files need: a rank that loads what it saved fetches its
    own shard, not the whole checkpoint.

    A job that resumes from step S will save the steps after S again, and a crashed predecessor may have
    left some of them pending (a rank died before its shard was committed); their shards may differ from
    what this job writes, which would be a conflict. So, unless ``discard_newer_pending`` is false, each
    rank removes the run's pending checkpoints after S from its store, and the coordinator from the
    remote."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    rank, _ = _distributed(process_group)
    resolved: list = [None]
    if rank == 0:
        resolved[0] = _resolve(store, ref, remote)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(resolved, src=dist.get_global_rank(process_group, 0) if process_group is not None else 0, group=process_group)
    checkpoint = resolved[0]
    if discard_newer_pending:
        for pending in store.pending(checkpoint.run):
            if pending.step > checkpoint.step:
                store.rm_pending(checkpoint.run, pending.step)
        if rank == 0 and remote is not None:
            for pending in store.pending(checkpoint.run, remote=remote):
                if pending.step > checkpoint.step:
                    store.rm_pending(checkpoint.run, pending.step, remote=remote)
    staging = tempfile.mkdtemp(prefix=f"ckstore-load-rank{rank}-", dir=_staging_root(store))
    try:
        dcp.load(state_dict, storage_reader=_StoreReader(store, checkpoint.id, staging, remote), process_group=process_group)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return checkpoint


def _resolve(store: Store, ref: str, remote: Optional[str]) -> ShardedLoad:
    shown = store.show(ref, remote=remote)
    return ShardedLoad(id=shown["id"], run=shown["run"], step=int(shown["step"]))


def _store_reader_class():
    from torch.distributed.checkpoint import FileSystemReader

    class StoreReader(FileSystemReader):
        """DCP's file system reader over a folder that fills from the store as the load plan asks:
        ``.metadata`` first, then exactly the data files the plan's items are in."""

        def __init__(self, store: Store, checkpoint_id: str, folder: str, remote: Optional[str]):
            super().__init__(folder)
            self._store = store
            self._checkpoint = checkpoint_id
            self._folder = folder
            self._remote = remote
            self._fetched: set = set()

        def _fetch(self, files) -> None:
            wanted = sorted(set(files) - self._fetched)
            if wanted:
                self._store.get(self._checkpoint, self._folder, files=wanted, force=True, remote=self._remote)
                self._fetched.update(wanted)

        def read_metadata(self, *args, **kwargs):
            self._fetch([".metadata"])
            return super().read_metadata(*args, **kwargs)

        def read_data(self, plan, planner):
            self._fetch({self.storage_data[item.storage_index].relative_path for item in plan.items})
            return super().read_data(plan, planner)

    return StoreReader


def _StoreReader(store: Store, checkpoint_id: str, folder: str, remote: Optional[str]):
    return _store_reader_class()(store, checkpoint_id, folder, remote)
