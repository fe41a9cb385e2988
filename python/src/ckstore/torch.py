"""Plain PyTorch loops: ``save`` a model, optimizer and scheduler as one checkpoint, ``load`` them back;
``save_sharded`` and ``load_sharded`` for state that many ranks save with torch.distributed.checkpoint.

The checkpoint is the folder a Hugging Face Trainer would write: ``model.safetensors`` (the model's state
dict, through safetensors), ``optimizer.pt``, ``scheduler.pt`` and ``extra.pt`` (as ``torch.save``
writes them), put into the store in one step without being written anywhere else: the state is
snapshotted into memory and the store reads the files from the snapshot (``ckstore._snapshot``), in the
foreground or, with ``background=True``, while training goes on. ckstore chunks the tensors inside both
formats, so unchanged weights and optimizer state cost nothing the next time.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .errors import BackgroundSaveError, CKStoreError
from .store import PutResult, Store

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
EXTRA_FILE = "extra.pt"


def _torch():
    import torch  # the real one: this module is ckstore.torch

    return torch


def save(store: Store, run: str, step: int, model=None, optimizer=None, scheduler=None, extra: Optional[Mapping[str, Any]] = None,
         metrics: Optional[Mapping[str, float]] = None, tags=(), push: Optional[str] = None, *, background: bool = False,
         max_in_flight: int = 1):
    """Saves the model (``model.safetensors``, as safetensors' ``save_model`` writes it), the optimizer and
    scheduler state and ``extra`` (``optimizer.pt``, ``scheduler.pt``, ``extra.pt``, as ``torch.save``
    writes them to a file) as checkpoint ``run@step``, pushed to ``push`` when given.

    No file is written outside the store: the state is snapshotted into memory (tensors copied from the
    GPU if they are there, into reused pinned buffers) and the store reads the files from the snapshot
    (see :mod:`ckstore._snapshot`); it receives exactly what a put of a folder of those files would.

    Without ``background``, returns the :class:`PutResult` (with ``push`` set when pushed) once the
    checkpoint is committed and pushed. With ``background=True``, returns a :class:`SaveHandle` as soon
    as the snapshot is taken, and training may change the model at once; the put and push run in the
    background, in order. At most ``max_in_flight`` saves hold snapshots: a further save waits for one to
    be committed. A background failure raises from the next ``save`` or :func:`finish`, unless its
    handle's ``committed()`` or ``uploaded()`` raised it first."""
    files = []
    if model is not None:
        from ._snapshot import safetensors_state

        tensors, metadata = safetensors_state(model)
        files.append(SavedFile(MODEL_FILE, tensors, "safetensors", metadata))
    if optimizer is not None:
        files.append(SavedFile(OPTIMIZER_FILE, optimizer.state_dict()))
    if scheduler is not None:
        files.append(SavedFile(SCHEDULER_FILE, scheduler.state_dict()))
    if extra is not None:
        files.append(SavedFile(EXTRA_FILE, dict(extra)))
    handle = _SAVER.save(store, run, step, files, metrics=metrics, tags=tuple(tags), push=push, max_in_flight=max_in_flight)
    if background:
        return handle
    result = handle.committed()
    pushed = handle.uploaded()
    return result if pushed is None else PutResult(**{**result.__dict__, "push": pushed})


def finish(release: bool = True) -> None:
    """Waits for every save in flight to be committed and pushed; raises the first background failure
    not raised yet. With ``release``, frees the snapshot buffers (the next save allocates them again)."""
    _SAVER.finish(release=release)


@dataclass
class SavedFile:
    """One file of a save: ``state`` as ``torch.save`` writes it (``kind="torch"``), or a dict of tensors as
    safetensors writes it (``kind="safetensors"``, with ``metadata``)."""
    path: str
    state: Any
    kind: str = "torch"
    metadata: Optional[Mapping[str, str]] = None


class SaveHandle:
    """A save in flight: ``committed()`` returns its :class:`PutResult` once it is in the store,
    ``uploaded()`` its :class:`PushResult` once it is on the remote (None when it is not pushed); both
    wait, and raise what the save raised."""

    def __init__(self, run: str, step: int, push: Optional[str]):
        self.run = run
        self.step = step
        self.push = push
        self._put: Future = Future()
        self._pushed: Future = Future()
        self._delivered = False

    def committed(self, timeout: Optional[float] = None) -> PutResult:
        try:
            return self._put.result(timeout)
        except BaseException:
            self._delivered = True
            raise

    def uploaded(self, timeout: Optional[float] = None):
        try:
            return self._pushed.result(timeout)
        except BaseException:
            self._delivered = True
            raise

    def done(self) -> bool:
        """Whether it is committed and, when pushed, uploaded (or failed)."""
        return self._put.done() and self._pushed.done()

    def __repr__(self) -> str:
        state = "done" if self.done() else ("committed" if self._put.done() else "in flight")
        return f"<ckstore.torch.SaveHandle {self.run}@{self.step} {state}>"


class _Saver:
    """The process's saves: snapshots in at most ``max_in_flight`` reused arenas, puts in order on one
    thread, pushes in order on another (a push never holds a snapshot)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._limit = 0
        self._slots: "queue.Queue" = queue.Queue()
        self._arenas: list = []
        self._handles: list = []
        self._putter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckstore-put")
        self._pusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckstore-push")
        self.in_flight = 0
        #: The most snapshots held at once since the process started (what ``max_in_flight`` bounds).
        self.peak_in_flight = 0

    def _resize(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_in_flight is at least 1, not {limit}")
        if limit == self._limit:
            return
        self._wait()
        self._release()
        self._limit = limit
        self._slots = queue.Queue()
        for _ in range(limit):
            self._slots.put(None)

    def save(self, store: Store, run: str, step: int, files, *, metrics=None, tags=(), meta=None, epoch=None, push=None,
             max_in_flight: int = 1, on_committed=None, warn_on_push_failure: bool = False, shard=None,
             serialize_now: bool = False) -> SaveHandle:
        """Snapshots the files' states and queues their put (and push). ``on_committed(result, states)``
        runs on the put's thread once committed, while the snapshot (``states``, by file) is still held.
        ``serialize_now``: the files are serialized here rather than on the put's thread (DCP, whose
        planning is collective). A shard (``shard=(rank, world_size)``) is pushed by its put."""
        from ._snapshot import Arena, LayoutBuilder, snapshot

        self._raise_undelivered()
        self._resize(int(max_in_flight))
        arena = self._slots.get() or Arena()
        try:
            taken = snapshot([saved.state for saved in files], arena)
            layout = LayoutBuilder(taken)
            if serialize_now:
                self._serialize(layout, files, taken.state)
        except BaseException:
            self._slots.put(arena)
            raise
        with self._lock:
            if arena not in self._arenas:
                self._arenas.append(arena)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        handle = SaveHandle(run, step, push)
        self._handles.append(handle)
        options = {"metrics": dict(metrics or {}), "tags": tuple(tags), "meta": dict(meta or {}), "epoch": epoch, "shard": shard}
        if shard is not None:
            options["push"] = push
        self._putter.submit(self._persist, handle, store, taken, layout, files, options, None if shard is not None else push,
                            on_committed, warn_on_push_failure, serialize_now)
        return handle

    @staticmethod
    def _serialize(layout, files, states) -> None:
        for saved, state in zip(files, states):
            if saved.kind == "safetensors":
                layout.add_safetensors(saved.path, state, dict(saved.metadata) if saved.metadata else None)
            elif saved.kind == "dcp":
                layout.add_dcp(state, process_group=(saved.metadata or {}).get("process_group"))
            else:
                layout.add_torch_save(saved.path, state)

    def _persist(self, handle: SaveHandle, store: Store, taken, layout, files, options, push, on_committed, warn_on_push_failure,
                 serialized: bool) -> None:
        arena = taken.arena
        try:
            if not serialized:
                self._serialize(layout, files, taken.state)
            result = store.put_layout(layout.layout(), run=handle.run, step=handle.step, pass_fds=arena.pass_fds, **options)
            if on_committed is not None:
                on_committed(result, {saved.path: state for saved, state in zip(files, taken.state)})
        except BaseException as error:
            handle._put.set_exception(error)
            handle._pushed.set_exception(error)
            return
        else:
            # Committed (or failed) before the snapshot is given back: a save waiting for it sees this one done.
            handle._put.set_result(result)
        finally:
            del taken, layout
            with self._lock:
                self.in_flight -= 1
            self._slots.put(arena)
        if push is not None:
            self._pusher.submit(self._upload, handle, store, result.id, push, warn_on_push_failure)
        elif result.push is not None and "push" in options:
            handle._pushed.set_result(result.push)
        else:
            handle._pushed.set_result(None)

    @staticmethod
    def _upload(handle: SaveHandle, store: Store, checkpoint: str, push: str, warn: bool) -> None:
        try:
            handle._pushed.set_result(store.push([checkpoint], remote=push))
        except CKStoreError as error:
            if not warn:
                handle._pushed.set_exception(error)
                return
            # Committed locally already: a remote that fails, or holds another machine's checkpoint at this
            # step, warns instead of ending training.
            warnings.warn(f"ckstore: checkpoint {handle.run}@{handle.step} is stored locally but its push failed: {error}")
            handle._pushed.set_result(None)
        except BaseException as error:
            handle._pushed.set_exception(error)

    def _wait(self) -> None:
        for handle in list(self._handles):
            for future in (handle._put, handle._pushed):
                try:
                    future.result()
                except BaseException:
                    pass

    def _raise_undelivered(self) -> None:
        failed = []
        for handle in self._handles:
            if not handle.done():
                continue
            for future in (handle._put, handle._pushed):
                error = future.exception()
                if error is not None and not handle._delivered:
                    failed.append((handle, error))
                    break
        self._handles = [handle for handle in self._handles if not handle.done()]
        if failed:
            handle, error = failed[0]
            handle._delivered = True
            more = f" (and {len(failed) - 1} later saves failed too)" if len(failed) > 1 else ""
            raise BackgroundSaveError(f"the background save of {handle.run}@{handle.step} failed{more}: {error}", error,
                                      handle.run, handle.step) from error

    def _release(self) -> None:
        with self._lock:
            for arena in self._arenas:
                arena.close()
            self._arenas = []

    def finish(self, release: bool) -> None:
        self._wait()
        try:
            self._raise_undelivered()
        finally:
            if release:
                limit = self._limit
                self._release()
                self._limit = 0
                if limit:
                    self._resize(limit)


_SAVER = _Saver()


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
                 rank: Optional[int] = None, world_size: Optional[int] = None, background: bool = False,
                 max_in_flight: int = 1):
    """Saves this rank's part of ``state_dict`` as ``torch.distributed.checkpoint.save`` writes it and puts
    it as shard ``rank/world_size`` of checkpoint ``run@step`` (pushed to ``push`` when given). Every rank
    of the process group calls it, as it calls ``dcp.save``.

    DCP writes each rank's ``__<rank>_0.distcp`` and, on the coordinator (rank 0), the ``.metadata`` that
    names every item; ranks need no shared file system. The checkpoint becomes visible (``ls``,
    ``RUN@latest-valid``) only once every rank's shard is committed, in one store or on the remote, so a
    rank that dies before its put or push leaves it pending, never half-visible. No barrier is needed for
    that: whichever rank commits the last shard writes the checkpoint.

    As in :func:`save`, nothing is written outside the store: the state is snapshotted into memory and
    DCP's own writer writes the files into the snapshot's layout. DCP's planning is collective, so it
    runs in the caller, on every rank in the same order; with ``background=True`` only the put (and push)
    runs in the background, and a :class:`SaveHandle` is returned."""
    found_rank, found_world = _distributed(process_group)
    rank = found_rank if rank is None else rank
    world_size = found_world if world_size is None else world_size
    handle = _SAVER.save(store, run, step, [SavedFile("", dict(state_dict), "dcp", {"process_group": process_group})],
                         metrics=metrics, tags=tuple(tags), push=push, max_in_flight=max_in_flight, shard=(rank, world_size),
                         serialize_now=True)
    if background:
        return handle
    result = handle.committed()
    pushed = handle.uploaded()
    return result if pushed is None else PutResult(**{**result.__dict__, "push": pushed})


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
