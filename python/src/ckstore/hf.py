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

from .errors import CheckpointNotFound, CKStoreError, DamagedCheckpoint, RemoteError
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


# Files one rank writes when a checkpoint is sharded: DCP data files (FSDP's SHARDED_STATE_DICT writes
# ``pytorch_model_fsdp_0/__<rank>_0.distcp`` and ``optimizer_0/__<rank>_0.distcp``), DeepSpeed ZeRO's
# ``global_stepN/*zero_pp_rank_<rank>_mp_rank_00_optim_states.pt``, and Trainer's ``rng_state_<rank>.pth``.
_SHARD_FILES = (re.compile(r"^__(\d+)_\d+\.distcp$"), re.compile(r"zero_pp_rank_(\d+)_"))
_RANK_FILES = _SHARD_FILES + (re.compile(r"^rng_state_(\d+)\.pth$"),)


def _rank_of(name: str, patterns=_RANK_FILES) -> Optional[int]:
    """The rank whose file ``name`` is, or None for a file of the whole checkpoint (rank 0 writes those)."""
    for pattern in patterns:
        match = pattern.search(name)
        if match:
            return int(match.group(1))
    return None


def _files(path: str) -> list:
    """Every file below ``path``, relative to it."""
    out = []
    for folder, _, names in os.walk(path):
        for name in names:
            out.append(os.path.relpath(os.path.join(folder, name), path))
    return sorted(out)


def _is_sharded(path: str) -> bool:
    """Whether ranks wrote their own parts of this checkpoint (FSDP's DCP files, DeepSpeed's ZeRO files)."""
    return any(_rank_of(os.path.basename(name), _SHARD_FILES) is not None for name in _files(path))


def _rank_shard(path: str, rank: int) -> list:
    """The files of checkpoint folder ``path`` that rank ``rank`` wrote: its own rank files, and on rank 0
    everything that is no rank's."""
    out = []
    for name in _files(path):
        owner = _rank_of(os.path.basename(name))
        if (0 if owner is None else owner) == rank:
            out.append(name)
    return out


def _log(message: str) -> None:
    """A line for the job's log: on standard error, and through logging's ``ckstore`` logger."""
    import logging
    import sys

    logging.getLogger("ckstore").warning(message)
    print(f"ckstore: {message}", file=sys.stderr, flush=True)


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

    def __init__(self, store: Store, run: str, keep_local: int = 1, push: Optional[str] = None, gc: bool = True,
                 preemption=False, stop_on_preemption: bool = True):
        if keep_local < 0:
            raise ValueError("keep_local must be 0 or more")
        self.store = store
        self.run = run
        self.keep_local = keep_local
        self.push = push
        self.gc = gc
        #: With ``preemption=True`` (or a :class:`ckstore.preemption.Watcher`), a preemption notice (EC2,
        #: GCP, Azure, or SIGTERM) makes the next step boundary save, put and push a checkpoint, and then
        #: stop training (unless ``stop_on_preemption=False``).
        self._watcher = None
        if preemption:
            from . import preemption as _preemption
            self._watcher = preemption if isinstance(preemption, _preemption.Watcher) else _preemption.watch()
        self.stop_on_preemption = stop_on_preemption
        #: The step saved because of a notice, and the message that said it was durable.
        self.preempted_step: Optional[int] = None
        self.durable_message: Optional[str] = None
        #: Steps this callback stored, newest last, for tests and logs.
        self.stored_steps: list = []
        #: Whether this job's checkpoints are sharded (each rank puts its own files).
        self._sharded = False

    # Trainer's events

    def on_train_begin(self, args, state, control, **kwargs):
        # Complete folders left by an earlier run (a JIT checkpoint, or a crash after Trainer's save but
        # before on_save) are stored before training writes more.
        if state.is_world_process_zero:
            self._sweep(args.output_dir, state)

    def on_step_end(self, args, state, control, **kwargs):
        if self._watcher is not None and self.preempted_step is None and self._watcher.requested():
            # The first step boundary after the notice: save now (on_save puts and pushes), then stop.
            self.preempted_step = state.global_step
            control.should_save = True
            if self.stop_on_preemption:
                control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if getattr(args, "world_size", 1) > 1 and _is_sharded(path):
            # FSDP and DeepSpeed: every rank puts its own files as its shard, with no barrier; the
            # checkpoint exists once the last rank's shard is committed (in a shared store or on the remote).
            self._sharded = True
            self._put_shard(path, state.global_step, args.process_index, args.world_size, state)
            return
        _barrier()
        if not state.is_world_process_zero:
            return
        if _is_complete(path):
            pushed = self._put(path, state.global_step)
            if self.preempted_step == state.global_step and self.durable_message is None:
                from .preemption import durable_message
                self.durable_message = durable_message(self.run, state.global_step, self.push if pushed else None, self._watcher.notice)
                _log(self.durable_message)
        self._trim(args.output_dir, state)

    def on_train_end(self, args, state, control, **kwargs):
        _barrier()
        if self._sharded and self.push is not None:
            # Every rank: shards whose push failed during training (the remote was down) go now, and
            # complete their checkpoints on the remote if they were the last.
            try:
                self.store.push(run=self.run, remote=self.push)
            except RemoteError as error:
                warnings.warn(f"ckstore: the shards of {self.run} stored locally could not be pushed: {error}")
        if state.is_world_process_zero:
            self._sweep(args.output_dir, state)
            if self.push is not None and _stored_steps(self.store, self.run):
                # The work is done and stored locally: a remote that refuses (another machine pushed a
                # different checkpoint at one of these steps) or fails warns, and every local checkpoint
                # stays; training never ends with an exception after it finished.
                try:
                    self.store.push(run=self.run, remote=self.push)
                except CKStoreError as error:
                    warnings.warn(f"ckstore: the checkpoints of {self.run} are stored locally in {self.store.path}, but pushing "
                                  f"them to {self.push} failed: {error}")

    # The work

    def _stored_steps(self) -> set:
        return _stored_steps(self.store, self.run)

    def _put(self, path: str, step: int) -> bool:
        """Puts and pushes; False when the push failed (the checkpoint is then stored locally only)."""
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
                return False
        return True

    def _put_shard(self, path: str, step: int, rank: int, world_size: int, state) -> None:
        """Puts what rank ``rank`` wrote of checkpoint folder ``path`` as its shard (hard links in a staging
        folder, so nothing is copied), pushing it to ``push`` in the same call."""
        if rank == 0 and not _is_complete(path):
            return
        staging = os.path.join(os.path.dirname(os.path.abspath(path)), f".ckstore-shard-{step}-{rank}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for name in _rank_shard(path, rank):
                target = os.path.join(staging, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    os.link(os.path.join(path, name), target)
                except OSError:
                    shutil.copy2(os.path.join(path, name), target)
            try:
                result = self.store.put(staging, run=self.run, step=step, shard=(rank, world_size), push=self.push)
            except RemoteError as error:
                # Committed locally before the push: the remote failing warns instead of ending training.
                warnings.warn(f"ckstore: shard {rank}/{world_size} of {self.run}@{step} is stored locally but its push failed: {error}")
                return
            self.stored_steps.append(step)
            if rank == 0 and result.checkpoint is not None:
                if self.gc:
                    self.store.gc(run=self.run)
                self._trim(os.path.dirname(os.path.abspath(path)), state)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _sweep(self, output_dir: str, state) -> None:
        stored = self._stored_steps()
        for step, path in _checkpoint_folders(output_dir):
            # A sharded folder is put by its ranks, each its own files (on_save), never whole.
            if step not in stored and _is_complete(path) and not _is_sharded(path):
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

    With ``remote`` (a remote's name or URL), the newest valid checkpoint of the store and the remote
    together: a fresh machine, or one whose store stops at an older step, pulls the remote's newer one
    (only what the store lacks).

    Pass the path explicitly: transformers' ``get_last_checkpoint`` would pick the highest-numbered
    folder even when it is half-written. A folder already at ``checkpoint-N`` is replaced by the
    verified copy from the store.
    """
    output_dir = getattr(args_or_output_dir, "output_dir", args_or_output_dir)
    output_dir = os.fspath(output_dir)
    rank = getattr(args_or_output_dir, "process_index", 0)
    world_size = getattr(args_or_output_dir, "world_size", 1)
    if world_size > 1:
        return _resume_sharded(output_dir, store, run, remote, rank, world_size)
    # Complete folders the store lacks (a JIT checkpoint on SIGTERM, a crash between Trainer's save and
    # on_save) are stored first, so that the newest of them is where training resumes.
    stored = _stored_steps(store, run)
    for step, path in _checkpoint_folders(output_dir):
        if step not in stored and _is_complete(path):
            store.put(path, run=run, step=step)
    staging = os.path.join(output_dir, ".ckstore-resume")
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(output_dir, exist_ok=True)
    try:
        # The newest valid checkpoint of this store and the remote together: a machine that comes back
        # with an older store resumes from the step another machine reached, not from its own.
        result = store.resume(run, staging, remote=remote)
    except (CheckpointNotFound, DamagedCheckpoint):
        shutil.rmtree(staging, ignore_errors=True)
        return None
    path = os.path.join(output_dir, f"checkpoint-{result.step}")
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(staging, path)
    return path


def _resume_sharded(output_dir: str, store: Store, run: str, remote: Optional[str], rank: int, world_size: int) -> Optional[str]:
    """``resume`` on every rank of a distributed job: the coordinator picks the checkpoint, and each rank
    restores its own part of it into ``checkpoint-N`` (the whole checkpoint on rank 0 when the world size
    changed, for the framework to reshard), then all meet at a barrier."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    chosen = [None]
    if rank == 0 or not distributed:
        # A store that has no checkpoint of the run (a fresh machine) resumes from the remote's newest.
        source = remote if remote is not None and not _stored_steps(store, run) else None
        try:
            shown = store.show(f"{run}@latest-valid", remote=source)
            chosen[0] = (shown["id"], int(shown["step"]), shown.get("shard_count"))
        except (CheckpointNotFound, DamagedCheckpoint):
            chosen[0] = None
    if distributed:
        dist.broadcast_object_list(chosen, src=0)
    if chosen[0] is None:
        return None
    checkpoint, step, shard_count = chosen[0]
    # This rank's store may lack what the coordinator's has: then it fetches from the remote.
    try:
        local = any(entry.id == checkpoint for entry in store.ls(run))
    except CheckpointNotFound:
        local = False
    source = None if local or remote is None else remote
    # The steps after this one will be saved again: what a crashed predecessor left pending there goes.
    for pending in store.pending(run):
        if pending.step > step:
            store.rm_pending(run, pending.step)
    if rank == 0 and remote is not None:
        for pending in store.pending(run, remote=remote):
            if pending.step > step:
                store.rm_pending(run, pending.step, remote=remote)
    path = os.path.join(output_dir, f"checkpoint-{step}")
    os.makedirs(path, exist_ok=True)
    if shard_count == world_size:
        # Each rank fetches only its own part (from the remote: only what its files need).
        store.get(checkpoint, path, shard=(rank, world_size), force=True, remote=source)
    elif rank == 0:
        store.get(checkpoint, path, force=True, remote=source)
    _barrier()
    return path
