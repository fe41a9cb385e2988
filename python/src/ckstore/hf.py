"""Hugging Face Trainer: ``CKStoreCallback`` stores every checkpoint Trainer saves, and ``resume`` brings
the newest valid one back for ``trainer.train(resume_from_checkpoint=...)``.

Built on what transformers (5.x) does: ``Trainer._save_checkpoint`` writes ``checkpoint-{global_step}``
(model, optimizer, scheduler, RNG state, ``trainer_state.json``) and rotates old folders by
``save_total_limit``, and only then calls ``on_save``. Its just-in-time checkpoint on SIGTERM
(``enable_jit_checkpoint``) calls ``_save_checkpoint`` directly, so ``on_save`` never sees it; while
it runs, the folder holds a ``checkpoint-is-incomplete.txt`` sentinel. The callback therefore also
stores complete folders it has not seen at the start and at the end of training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from typing import Optional, Union

from transformers import TrainerCallback

from .errors import CheckpointNotFound, CKStoreError, DamagedCheckpoint
from .store import Store

#: What transformers calls a checkpoint folder (``PREFIX_CHECKPOINT_DIR``), and its JIT sentinel.
_FOLDER = re.compile(r"^checkpoint-(\d+)$")
INCOMPLETE_SENTINEL = "checkpoint-is-incomplete.txt"
_COMPLETE_MARKER = "trainer_state.json"


def _checkpoint_folders(output_dir: str) -> list:
    """``(step, path)`` of every ``checkpoint-N`` folder, by step."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _FOLDER.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def _safetensors_whole(path: str) -> bool:
    """Whether a safetensors file is as long as its header says (a cut-short file is not)."""
    try:
        with open(path, "rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
            if header_length <= 0 or header_length > 100 << 20:
                return False
            header = json.loads(f.read(header_length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        return os.path.getsize(path) == 8 + header_length + end
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _is_complete(path: str) -> bool:
    """Whether Trainer finished writing a checkpoint folder: ``trainer_state.json`` is written last, a JIT
    checkpoint in progress has its sentinel, and every safetensors file has the length its header gives."""
    if not os.path.exists(os.path.join(path, _COMPLETE_MARKER)) or os.path.exists(os.path.join(path, INCOMPLETE_SENTINEL)):
        return False
    return all(_safetensors_whole(os.path.join(path, name)) for name in os.listdir(path) if name.endswith(".safetensors"))


def _stored_steps(store: Store, run: str) -> set:
    """Steps of the run in the store; none when the store does not exist yet (the first put makes it)."""
    try:
        return {checkpoint.step for checkpoint in store.ls(run)}
    except CheckpointNotFound:
        return set()


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CKStoreCallback(TrainerCallback):
    """Puts every checkpoint Trainer saves into ``store`` under ``run``.

    On the world's process zero (after a barrier when training is distributed, so every rank has
    finished writing), ``on_save`` puts ``checkpoint-{global_step}``, with step, epoch and metrics from
    its ``trainer_state.json``, optionally pushes it, applies the store's retention policy (``gc``), and
    removes local checkpoint folders beyond the newest ``keep_local`` (never the best model's, never one
    not yet stored). The store's policy replaces ``save_total_limit``: set
    ``store.set_policy(run, keep_last=..., keep_best=[...])`` and leave ``save_total_limit`` unset.
    """

    def __init__(self, store: Store, run: str, keep_local: int = 1, push: Optional[str] = None, gc: bool = True):
        if keep_local < 0:
            raise ValueError("keep_local must be 0 or more")
        self.store = store
        self.run = run
        self.keep_local = keep_local
        self.push = push
        self.gc = gc
        #: Steps this callback stored, newest last, for tests and logs.
        self.stored_steps: list = []

    # Trainer's events

    def on_train_begin(self, args, state, control, **kwargs):
        # Complete folders left by an earlier run (a JIT checkpoint, or a crash after Trainer's save but
        # before on_save) are stored before training writes more.
        if state.is_world_process_zero:
            self._sweep(args.output_dir, state)

    def on_save(self, args, state, control, **kwargs):
        _barrier()
        if not state.is_world_process_zero:
            return
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if _is_complete(path):
            self._put(path, state.global_step)
        self._trim(args.output_dir, state)

    def on_train_end(self, args, state, control, **kwargs):
        _barrier()
        if state.is_world_process_zero:
            self._sweep(args.output_dir, state)
            if self.push is not None and _stored_steps(self.store, self.run):
                self.store.push(run=self.run, remote=self.push)

    # The work

    def _stored_steps(self) -> set:
        return _stored_steps(self.store, self.run)

    def _put(self, path: str, step: int) -> None:
        result = self.store.put(path, run=self.run, step=step)
        self.stored_steps.append(step)
        if self.gc:
            self.store.gc(run=self.run)
        if self.push is not None:
            # Committed locally already: a remote that fails (a network blip) warns instead of ending
            # training, and the push at the end of training catches up.
            try:
                self.store.push([result.id], remote=self.push)
            except CKStoreError as error:
                warnings.warn(f"ckstore: checkpoint {self.run}@{step} is stored locally but its push failed: {error}")

    def _sweep(self, output_dir: str, state) -> None:
        stored = self._stored_steps()
        for step, path in _checkpoint_folders(output_dir):
            if step not in stored and _is_complete(path):
                self._put(path, step)
        self._trim(output_dir, state)

    def _trim(self, output_dir: str, state) -> None:
        folders = _checkpoint_folders(output_dir)
        if len(folders) <= self.keep_local:
            return
        stored = self._stored_steps()
        best = os.path.abspath(state.best_model_checkpoint) if getattr(state, "best_model_checkpoint", None) else None
        keep = {path for _, path in folders[len(folders) - self.keep_local:]} if self.keep_local else set()
        for step, path in folders:
            if path in keep or os.path.abspath(path) == best or step not in stored:
                continue
            shutil.rmtree(path, ignore_errors=True)


def resume(args_or_output_dir: Union[str, "os.PathLike", object], store: Store, run: str, remote: Optional[str] = None) -> Optional[str]:
    """Restores the run's newest valid checkpoint into ``output_dir/checkpoint-N`` and returns that path,
    for ``trainer.train(resume_from_checkpoint=path)``; None when there is no valid checkpoint.

    With ``remote`` (a remote's name or URL), a store that has no checkpoint of the run (a fresh machine)
    first pulls ``RUN@latest-valid`` from it.

    Pass the path explicitly: transformers' ``get_last_checkpoint`` would pick the highest-numbered
    folder even when it is half-written. A folder already at ``checkpoint-N`` is replaced by the
    verified copy from the store.
    """
    output_dir = getattr(args_or_output_dir, "output_dir", args_or_output_dir)
    output_dir = os.fspath(output_dir)
    # Complete folders the store lacks (a JIT checkpoint on SIGTERM, a crash between Trainer's save and
    # on_save) are stored first, so that the newest of them is where training resumes.
    stored = _stored_steps(store, run)
    for step, path in _checkpoint_folders(output_dir):
        if step not in stored and _is_complete(path):
            store.put(path, run=run, step=step)
    if remote is not None and not _stored_steps(store, run):
        try:
            store.pull(f"{run}@latest-valid", remote=remote)
        except CheckpointNotFound:
            pass
    try:
        shown = store.show(f"{run}@latest-valid")
    except (CheckpointNotFound, DamagedCheckpoint):
        return None
    step = int(shown["step"])
    path = os.path.join(output_dir, f"checkpoint-{step}")
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(output_dir, exist_ok=True)
    store.get(shown["id"], path)
    return path
