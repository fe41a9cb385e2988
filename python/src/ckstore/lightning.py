"""PyTorch Lightning: ``CKStoreCheckpointIO``, a ``CheckpointIO`` plugin that stores every checkpoint
Lightning saves in a ckstore store, and loads ``ckstore://RUN@latest-valid`` (or any reference).

``Trainer(plugins=[CKStoreCheckpointIO(store, run)])``: ``ModelCheckpoint`` decides when to save and
what to keep as usual; each save is stored as the file ``torch.save`` would write, under the
checkpoint's ``global_step``, from a snapshot in memory and with no staging file (see
``ckstore.torch.save``). With ``background=True`` the plugin is asynchronous, as Lightning's
``AsyncCheckpointIO``: a save returns once the snapshot is taken, and a failure raises from the next save
or from ``teardown`` at the end of ``fit``. ``trainer.fit(model, ckpt_path="ckstore://RUN@latest-valid")``
resumes from the newest checkpoint that verifies.

Strategies that write checkpoints themselves bypass ``CheckpointIO``: DeepSpeed, and FSDP with sharded
state dicts (``state_dict_type="sharded"``) write folders of shards through their own code, so nothing
would reach the store, and Lightning gives a CheckpointIO plugin no hook to notice. Call
``CKStoreCheckpointIO.check_strategy(trainer.strategy)`` to have such a strategy refused with a
``UsageError``; loading a folder of shards through the plugin is refused the same way. Store such
checkpoints with ``Store.put`` on the folders they write instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Optional

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import Callback

from . import torch as ckstore_torch
from .errors import CheckpointNotFound, UsageError
from .store import Store

SCHEME = "ckstore://"
#: The file name a save is stored under inside the checkpoint (what Lightning's path ended in).
_META_PATH = "lightning_path"


class CKStoreCheckpointIO(CheckpointIO):
    """Saves Lightning checkpoints into ``store`` under ``run``.

    ``keep_local``: also write the file at Lightning's path (as ``TorchCheckpointIO`` does), so tools
    that read it there keep working. ``remove_checkpoint`` (``ModelCheckpoint``'s top-k rotation)
    removes the stored checkpoint unless a retention policy governs the run (``store.set_policy``),
    which then decides on the next ``gc``.
    """

    def __init__(self, store: Store, run: str, keep_local: bool = False, push: Optional[str] = None, *,
                 background: bool = False, max_in_flight: int = 1):
        super().__init__()
        self.store = store
        self.run = run
        self.keep_local = keep_local
        self.push = push
        self.background = background
        self.max_in_flight = max_in_flight
        self._ids: Dict[str, str] = {}
        self._in_flight: Dict[str, Any] = {}

    # Checking the strategy

    @staticmethod
    def check_strategy(strategy: Any) -> None:
        """Raises ``UsageError`` for a strategy that saves checkpoints without ``CheckpointIO``."""
        name = type(strategy).__name__
        if "DeepSpeed" in name:
            raise UsageError(f"{name} writes its checkpoints itself, bypassing CheckpointIO: CKStoreCheckpointIO "
                             "would store nothing. Put the folders it writes with ckstore.Store.put instead.", code="usage")
        if "FSDP" in name and getattr(strategy, "_state_dict_type", "full") == "sharded":
            raise UsageError(f"{name} with state_dict_type='sharded' writes its shards through torch.distributed.checkpoint, "
                             "bypassing CheckpointIO: use state_dict_type='full', or put the folders it writes with "
                             "ckstore.Store.put.", code="usage")

    # CheckpointIO

    def save_checkpoint(self, checkpoint: Dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"CKStoreCheckpointIO.save_checkpoint takes no storage_options, got {storage_options!r}")
        path = os.fspath(path)
        step = int(checkpoint.get("global_step", 0))
        name = os.path.basename(path) or "checkpoint.ckpt"
        # `last.ckpt` is saved at the same step as a top-k file with other callback state: its own run.
        run = self.run + "-last" if name.startswith("last") else self.run

        def committed(result, states) -> None:
            self._ids[path] = result.id
            if self.keep_local:
                # The stored file, from the snapshot, at Lightning's path (as TorchCheckpointIO writes it).
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path + ".ckstore-partial", "wb") as file:
                    torch.save(states[name], file)
                os.replace(path + ".ckstore-partial", path)

        # Written as torch.save writes it, from a snapshot and with no staging file (ckstore.torch.save);
        # a push that fails warns: the checkpoint is committed locally.
        handle = ckstore_torch._SAVER.save(self.store, run, step, [ckstore_torch.SavedFile(name, checkpoint)],
                                           meta={_META_PATH: path}, push=self.push, max_in_flight=self.max_in_flight,
                                           epoch=float(checkpoint["epoch"]) if "epoch" in checkpoint else None,
                                           on_committed=committed, warn_on_push_failure=True)
        if not self.background:
            handle.committed()
            handle.uploaded()
            return
        self._in_flight[path] = handle

    def teardown(self) -> None:
        """Waits for the saves in flight (``background=True``) and raises a failure among them."""
        self._in_flight.clear()
        ckstore_torch.finish(release=True)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> Dict[str, Any]:
        path = os.fspath(path)
        ckstore_torch.finish(release=False)  # what this process saved is in the store first
        if not path.startswith(SCHEME) and os.path.isdir(path):
            raise UsageError(f"{path} is a folder of shards, written by a strategy that bypasses CheckpointIO (DeepSpeed, "
                             "sharded FSDP); CKStoreCheckpointIO neither stored nor can load it", code="usage")
        if not path.startswith(SCHEME) and os.path.isfile(path):
            return torch.load(path, map_location=map_location, weights_only=bool(weights_only))
        reference = path[len(SCHEME):] if path.startswith(SCHEME) else self._reference_for(path)
        staging = tempfile.mkdtemp(prefix="ckstore-lightning-", dir=os.environ.get("CKSTORE_STAGING") or None)
        try:
            destination = os.path.join(staging, "checkpoint")
            remote = self.push or self.store.remote
            if remote is not None and reference.endswith("@latest-valid"):
                # The newest valid checkpoint of the store and the remote together.
                self.store.resume(reference[: -len("@latest-valid")], destination, remote=remote)
            else:
                self.store.get(reference, destination)
            files = [name for name in os.listdir(destination) if not name.startswith(".")]
            if len(files) != 1:
                raise UsageError(f"checkpoint {reference} holds {len(files)} files ({', '.join(sorted(files))}), not one Lightning checkpoint", code="usage")
            return torch.load(os.path.join(destination, files[0]), map_location=map_location, weights_only=bool(weights_only))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def remove_checkpoint(self, path) -> None:
        path = os.fspath(path)
        handle = self._in_flight.pop(path, None)
        if handle is not None:
            handle.committed()
        if self.keep_local and os.path.isfile(path):
            os.remove(path)
        if self._policy_governs():
            return
        checkpoint_id = self._ids.pop(path, None)
        if checkpoint_id is not None:
            self.store.rm([checkpoint_id], force=True)

    # Helpers

    def _policy_governs(self) -> bool:
        # `source` is "none" when neither the run nor the store's default has a policy.
        shown = self.store.policy(self.run)
        return bool(shown) and shown.get("source", "none") != "none"

    def _reference_for(self, path: str) -> str:
        """The stored checkpoint saved from Lightning's ``path`` (this process's, else the newest whose
        manifest says so)."""
        if path in self._ids:
            return self._ids[path]
        for checkpoint in reversed(self.store.ls(self.run) + self.store.ls(self.run + "-last")):
            if self.store.show(checkpoint.id).get("metadata", {}).get(_META_PATH) == path:
                return checkpoint.id
        raise CheckpointNotFound(f"no checkpoint of run {self.run} was saved from {path}", code="not_found")


class PreemptionCallback(Callback):
    """Saves at the first batch boundary after a preemption notice (EC2, GCP, Azure, or SIGTERM), through
    the trainer's checkpoint plugin (``CKStoreCheckpointIO``: put, and pushed when it has ``push``), logs
    when it is durable, and stops training (unless ``stop=False``).

    Lightning saves nothing on SIGTERM by default; with this callback the notice's two minutes are used."""

    def __init__(self, watcher=None, stop: bool = True):
        super().__init__()
        from . import preemption

        self.watcher = watcher or preemption.watch()
        self.stop = stop
        #: The global step saved because of the notice.
        self.saved_step: Optional[int] = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.saved_step is not None or not self.watcher.requested():
            return
        from .preemption import durable_message

        step = trainer.global_step
        path = os.path.join(trainer.default_root_dir, f"preempted-step={step}.ckpt")
        trainer.save_checkpoint(path)
        self.saved_step = step
        io = getattr(trainer.strategy, "checkpoint_io", None)
        run = getattr(io, "run", "?")
        remote = getattr(io, "push", None)
        print(f"ckstore: {durable_message(run, step, remote, self.watcher.notice)}", file=sys.stderr, flush=True)
        if self.stop:
            trainer.should_stop = True
