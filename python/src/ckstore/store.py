"""``ckstore.Store``: a ckstore store, driven through the ``ckstore`` binary's ``--json`` output."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ._cli import Runner
from .errors import CheckpointNotFound, DamagedCheckpoint


@dataclass(frozen=True)
class PutResult:
    """What ``put`` stored."""
    id: str
    run: str
    step: int
    logical_bytes: int
    stored_bytes_added: int
    chunks_total: int
    chunks_new: int
    seconds: float
    already_stored: bool
    warnings: List[str] = field(default_factory=list)
    #: The push report when the checkpoint was pushed (``push=`` or a push-on-commit remote).
    push: Optional["PushResult"] = None
    #: For a shard's put (``shard=``): ``{"index": I, "count": N}``; ``id`` is then the shard's own id.
    shard: Optional[Dict[str, int]] = None
    #: For a shard's put: the checkpoint's id once all its shards are in this store, else None (pending).
    checkpoint: Optional[str] = None
    #: For a shard's put: the shards this store still lacks.
    missing_shards: Optional[List[int]] = None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as ``ls`` lists it."""
    id: str
    run: str
    step: int
    created_at: float
    logical_bytes: int
    stored_bytes_added: int
    chunk_count: int
    file_count: int
    tensor_count: int
    epoch: Optional[float] = None
    parent: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    tags: List[str] = field(default_factory=list)
    pinned: bool = False
    dropped_parts: List[str] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class RestoreResult:
    """What ``get`` wrote."""
    id: str
    files: List[str]
    bytes: int
    seconds: float


@dataclass(frozen=True)
class PushResult:
    """What ``push`` uploaded."""
    remote: str
    pushed: List[str]
    already_present: List[str]
    bytes_uploaded: int
    objects_uploaded: int
    frames_uploaded: int
    frame_bytes_uploaded: int
    seconds: float
    #: For a shard's push: which shard, the checkpoint's id once every shard is on the remote (else
    #: None: pending there), and the shards the remote still lacks.
    shard: Optional[Dict[str, int]] = None
    checkpoint: Optional[str] = None
    missing_shards: Optional[List[int]] = None


@dataclass(frozen=True)
class PendingCheckpoint:
    """A checkpoint some of whose shards are committed, not all (``ls --pending``)."""
    run: str
    step: int
    shard_count: int
    shards: List[Dict[str, Any]]
    missing: List[int]
    created_at: float
    logical_bytes: int


@dataclass(frozen=True)
class PullResult:
    """What ``pull`` brought."""
    remote: str
    id: str
    run: str
    step: int
    pulled: bool
    bytes_downloaded: int
    requests: int
    frames_added: int
    seconds: float


@dataclass(frozen=True)
class ResumeResult:
    """What ``resume`` restored: the newest valid checkpoint of the run in the store and on the remote."""
    id: str
    run: str
    step: int
    #: ``"local"`` (the store had it) or ``"remote"`` (pulled now).
    source: str
    destination: str
    files: int
    bytes: int
    remote: Optional[str] = None
    #: The newest valid step the store had before, and the remote's newest; None for none.
    local_step: Optional[int] = None
    remote_step: Optional[int] = None
    bytes_downloaded: int = 0


@dataclass(frozen=True)
class AdviceInterval:
    """The figures of ``advise`` at one checkpoint interval."""
    steps: int
    seconds: float
    minutes: float
    #: Compute one interruption is expected to lose: half an interval.
    lost_seconds_per_interruption: float
    #: C/T + T/(2·MTBF): the share of the machine spent checkpointing or redoing work.
    overhead_fraction: float
    checkpoints_per_day: float
    #: Checkpoints the run's policy keeps: at its steady state when ``bounded``, else after 30 days.
    kept_checkpoints: int
    bounded: bool
    stored_bytes: int
    #: In money, when the prices were given.
    lost_cost_per_interruption: Optional[float] = None
    storage_cost_per_month: Optional[float] = None


@dataclass(frozen=True)
class Advice:
    """``advise``: the Young–Daly interval √(2·C·MTBF) from what the store measured, against today's."""
    run: str
    policy: str
    mtbf_seconds: float
    #: C: seconds from a save to durable (median put + median push), ``checkpoint_seconds_source``
    #: ``"measured"`` or ``"given"``.
    checkpoint_seconds: float
    checkpoint_seconds_source: str
    seconds_per_step: float
    bytes_per_checkpoint: int
    base_bytes: int
    young_daly_seconds: float
    current: AdviceInterval
    advised: AdviceInterval
    put_seconds: Optional[float] = None
    push_seconds: Optional[float] = None


def _build(cls, payload: Mapping[str, Any]):
    """A dataclass from a JSON object, ignoring fields a newer binary adds."""
    names = cls.__dataclass_fields__.keys()
    return cls(**{key: value for key, value in payload.items() if key in names})


def _metric(value: Any) -> float:
    # Non-finite metrics come as the strings "NaN", "Infinity", "-Infinity".
    return float(value)


class Store:
    """A ckstore store.

    ``path`` defaults to ``$CKSTORE_PATH``; ``remote`` is the default remote of ``push``, ``pull`` and the
    ``remote=`` arguments (a name the store knows, or an ``s3://``/``file://`` URL). Every method runs the
    ``ckstore`` binary (``$CKSTORE_BIN``, else on ``PATH``) and raises a :class:`ckstore.CKStoreError`
    subclass chosen by the CLI's error code.
    """

    def __init__(self, path: Optional[str] = None, remote: Optional[str] = None, *, create: bool = False,
                 binary: Optional[str] = None, endpoint: Optional[str] = None, env: Optional[Mapping[str, str]] = None):
        path = path if path is not None else os.environ.get("CKSTORE_PATH")
        if not path:
            raise ValueError("give Store(path) or set CKSTORE_PATH")
        self.path = os.path.abspath(os.fspath(path))
        self.remote = remote
        self.endpoint = endpoint
        self._runner = Runner(self.path, binary=binary, env=dict(env) if env is not None else None)
        if create and not os.path.exists(os.path.join(self.path, "ckstore.db")):
            self._runner.run(["init"], json_output=False)

    def __repr__(self) -> str:
        return f"ckstore.Store({self.path!r}{', remote=' + repr(self.remote) if self.remote else ''})"

    @property
    def binary_version(self) -> str:
        return self._runner.version

    def _remote_arguments(self, remote: Optional[str]) -> List[str]:
        remote = remote or self.remote
        if remote is None:
            return []
        arguments = ["--remote", remote]
        if self.endpoint and "://" in remote:
            arguments += ["--endpoint", self.endpoint]
        return arguments

    # Storing and restoring

    def put(self, folder: str, run: str, step: Optional[int] = None, epoch: Optional[float] = None,
            metrics: Optional[Mapping[str, float]] = None, tags: Iterable[str] = (), meta: Optional[Mapping[str, str]] = None,
            push: Optional[str] = None, shard: Optional[Tuple[int, int]] = None) -> PutResult:
        """Stores a checkpoint folder; step, epoch and metrics default to what ``trainer_state.json`` says.

        With ``shard=(rank, world_size)`` the folder is that rank's part of checkpoint ``run@step``: the
        checkpoint is listed and resolved only once every rank's shard is committed (here, or on the remote
        pushed to)."""
        arguments = ["put", os.fspath(folder)] + self._put_options(run, step, epoch, metrics, tags, meta, push, shard)
        return self._put_result(self._runner.run(arguments))

    def put_layout(self, layout: Mapping[str, Any], run: str, step: Optional[int] = None, epoch: Optional[float] = None,
                   metrics: Optional[Mapping[str, float]] = None, tags: Iterable[str] = (), meta: Optional[Mapping[str, str]] = None,
                   push: Optional[str] = None, shard: Optional[Tuple[int, int]] = None, pass_fds: Sequence[int] = ()) -> PutResult:
        """Stores the files ``layout`` lays out as ranges of one source file (``ckstore put --layout``:
        ``{"source": PATH, "files": [{"path", "pieces": [[OFFSET, LENGTH], …]}]}``) as a checkpoint, the
        same checkpoint a put of a folder holding those files makes. ``pass_fds``: descriptors the source
        path names (``/proc/self/fd/N``)."""
        arguments = ["put", "--layout", "-"] + self._put_options(run, step, epoch, metrics, tags, meta, push, shard)
        return self._put_result(self._runner.run(arguments, input=json.dumps(dict(layout)), pass_fds=pass_fds))

    def _put_options(self, run, step, epoch, metrics, tags, meta, push, shard) -> List[str]:
        arguments = ["--run", run]
        if shard is not None:
            arguments += ["--shard", f"{int(shard[0])}/{int(shard[1])}"]
        if step is not None:
            arguments += ["--step", str(int(step))]
        if epoch is not None:
            arguments += ["--epoch", repr(float(epoch))]
        for key, value in (metrics or {}).items():
            arguments += ["--metric", f"{key}={float(value)!r}"]
        for tag in tags:
            arguments += ["--tag", tag]
        for key, value in (meta or {}).items():
            arguments += ["--meta", f"{key}={value}"]
        if push is not None:
            arguments += ["--push", push]
            if self.endpoint and "://" in push:
                arguments += ["--endpoint", self.endpoint]
        return arguments

    @staticmethod
    def _put_result(payload: Dict[str, Any]) -> PutResult:
        payload = dict(payload)
        pushed = payload.pop("push", None)
        result = _build(PutResult, payload)
        if pushed is not None:
            result = PutResult(**{**result.__dict__, "push": _build(PushResult, pushed)})
        return result

    def get(self, ref: str, dest: str, files: Optional[Sequence[str]] = None, tensors: Optional[Sequence[str]] = None,
            force: bool = False, remote: Optional[str] = None, shard: Optional[Tuple[int, int]] = None) -> RestoreResult:
        """Restores a checkpoint into ``dest``, every chunk verified; with ``remote``, from that remote
        through this store; with ``shard=(rank, world_size)``, only what that rank put. From a remote with
        ``shard`` or ``files``, only what those files need is fetched."""
        arguments = ["get", ref, os.fspath(dest)]
        if shard is not None:
            arguments += ["--shard", f"{int(shard[0])}/{int(shard[1])}"]
        for path in files or ():
            arguments += ["--file", path]
        for pattern in tensors or ():
            arguments += ["--tensor", pattern]
        if force:
            arguments.append("--force")
        if remote is not None:
            arguments += self._remote_arguments(remote)
        return _build(RestoreResult, self._runner.run(arguments))

    def resume(self, run: str, dest: str, remote: Optional[str] = None, force: bool = False) -> ResumeResult:
        """Restores the newest valid checkpoint of ``run`` among this store and ``remote`` (this store's
        default remote when None) into ``dest``; a newer remote one is pulled first, fetching only what the
        store lacks. Raises :class:`CheckpointNotFound` when neither has one."""
        arguments = ["resume", run, os.fspath(dest)]
        if force:
            arguments.append("--force")
        arguments += self._remote_arguments(remote)
        return _build(ResumeResult, self._runner.run(arguments))

    # Finding checkpoints

    def ls(self, run: Optional[str] = None, remote: Optional[str] = None) -> List[Checkpoint]:
        """The checkpoints of one run, or of every run, by run and step (of a remote with ``remote``)."""
        arguments = ["ls"]
        if run is not None:
            arguments += ["--run", run]
        if remote is not None:
            arguments += self._remote_arguments(remote)
        out = []
        for entry in self._runner.run(arguments) or []:
            entry = dict(entry)
            entry["metrics"] = {key: _metric(value) for key, value in (entry.get("metrics") or {}).items()}
            out.append(_build(Checkpoint, entry))
        return out

    def pending(self, run: Optional[str] = None, remote: Optional[str] = None) -> List[PendingCheckpoint]:
        """Checkpoints some of whose shards are committed but not all (of a remote with ``remote``)."""
        arguments = ["ls", "--pending"]
        if run is not None:
            arguments += ["--run", run]
        if remote is not None:
            arguments += self._remote_arguments(remote)
        return [_build(PendingCheckpoint, entry) for entry in self._runner.run(arguments) or []]

    def rm_pending(self, run: str, step: int, remote: Optional[str] = None) -> List[PendingCheckpoint]:
        """Removes the pending checkpoint ``run@step`` (of a remote with ``remote``): what a restarted job
        does with the steps its crashed predecessor left incomplete, before it saves them again."""
        arguments = ["rm", f"{run}@{int(step)}", "--pending"]
        if remote is not None:
            arguments += self._remote_arguments(remote)
        return [_build(PendingCheckpoint, entry) for entry in (self._runner.run(arguments) or {}).get("pending") or []]

    def show(self, ref: str, remote: Optional[str] = None) -> Dict[str, Any]:
        """Everything the manifest says of one checkpoint (``ckstore show --json``), of a remote's with
        ``remote`` (only its manifest is read)."""
        arguments = ["show", ref]
        if remote is not None:
            arguments += self._remote_arguments(remote)
        return self._runner.run(arguments)

    def latest(self, run: str) -> Optional[Checkpoint]:
        """The run's newest checkpoint, or None."""
        checkpoints = self.ls(run)
        return checkpoints[-1] if checkpoints else None

    def latest_valid(self, run: str) -> Optional[Checkpoint]:
        """The run's newest checkpoint whose every chunk verifies (where a resume should start), or None."""
        try:
            wanted = self.show(f"{run}@latest-valid")["id"]
        except (CheckpointNotFound, DamagedCheckpoint):
            return None
        return next((c for c in self.ls(run) if c.id == wanted), None)

    # Integrity, retention, audits

    def verify(self, refs: Sequence[str] = (), full: bool = False, sample: Optional[float] = None,
               remote: Optional[str] = None, pending_age: Optional[str] = None) -> Dict[str, Any]:
        """Checks the store (or a remote); returns the report. Damage does not raise: ``report["ok"]`` is
        false and the report names what it breaks. Pending checkpoints older than ``pending_age`` (24h by
        default) are listed in ``report["stale_pending"]``."""
        arguments = ["verify", *refs]
        if pending_age is not None:
            arguments += ["--pending-age", pending_age]
        if full:
            arguments.append("--full")
        if sample is not None:
            arguments += ["--sample", repr(float(sample))]
        if remote is not None:
            arguments += self._remote_arguments(remote)
        return self._runner.run(arguments, report_on_failure=True)

    def gc(self, dry_run: bool = False, run: Optional[str] = None, remote: Optional[str] = None,
           grace: Optional[str] = None, pending_age: Optional[str] = None) -> Dict[str, Any]:
        """Applies retention policies and frees what nothing needs (on a remote with ``remote``); removes
        pending checkpoints older than ``pending_age`` (24h by default)."""
        arguments = ["gc"]
        if pending_age is not None:
            arguments += ["--pending-age", pending_age]
        if dry_run:
            arguments.append("--dry-run")
        if run is not None:
            arguments += ["--run", run]
        if grace is not None:
            arguments += ["--grace", grace]
        if remote is not None:
            arguments += self._remote_arguments(remote)
        return self._runner.run(arguments)

    def set_policy(self, run: Optional[str] = None, **rules: Any) -> Dict[str, Any]:
        """Sets a run's retention policy (``run=None``: the store's default). Rules are ``ckstore policy
        set`` options with underscores: ``keep_last=3``, ``keep_best=["1:loss:min"]``,
        ``keep_every=1000``, ``keep_within="7d"``, ``drop_optimizer_after=2``, ``keep_tag=["release"]``."""
        arguments = ["policy", "set"]
        arguments += [run] if run is not None else ["--default"]
        for name, value in rules.items():
            flag = "--" + name.replace("_", "-")
            for item in (value if isinstance(value, (list, tuple)) else [value]):
                arguments += [flag, str(item)]
        return self._runner.run(arguments)

    def policy(self, run: Optional[str] = None) -> Dict[str, Any]:
        """The policy that applies to a run (``source`` says whose: ``run``, ``default`` or ``none``)."""
        return self._runner.run(["policy", "show"] + ([run] if run is not None else []))

    def rm(self, refs: Sequence[str], force: bool = False) -> Any:
        """Deletes checkpoints (the next ``gc`` frees their bytes); ``force`` deletes pinned ones too."""
        return self._runner.run(["rm", *refs] + (["--force"] if force else []))

    def audit(self, run: Optional[str] = None, budget: Optional[str] = None) -> Dict[str, Any]:
        """The storage audit (``ckstore audit --json``)."""
        arguments = ["audit"]
        if run is not None:
            arguments += ["--run", run]
        if budget is not None:
            arguments += ["--budget", budget]
        return self._runner.run(arguments)

    def advise(self, run: str, mtbf: Optional[Any] = None, interruptions_per_day: Optional[float] = None,
               compute_cost_per_hour: Optional[float] = None, storage_cost_per_gb_month: Optional[float] = None,
               checkpoint_seconds: Optional[float] = None) -> Advice:
        """How often to checkpoint ``run`` (``ckstore advise``): ``mtbf`` is the mean time between
        interruptions, in seconds or as a duration (``"6h"``); or give ``interruptions_per_day``."""
        arguments = ["advise", run]
        if mtbf is not None:
            arguments += ["--mtbf", mtbf if isinstance(mtbf, str) else f"{float(mtbf)!r}s"]
        options = {"--interruptions-per-day": interruptions_per_day, "--compute-cost-per-hour": compute_cost_per_hour,
                   "--storage-cost-per-gb-month": storage_cost_per_gb_month, "--checkpoint-seconds": checkpoint_seconds}
        for flag, value in options.items():
            if value is not None:
                arguments += [flag, repr(float(value))]
        payload = dict(self._runner.run(arguments))
        for key in ("current", "advised"):
            payload[key] = _build(AdviceInterval, payload[key])
        return _build(Advice, payload)

    # Remotes

    def push(self, refs: Sequence[str] = (), run: Optional[str] = None, all: bool = False,
             remote: Optional[str] = None, jobs: int = 4) -> PushResult:
        """Uploads checkpoints to a remote: exactly what it lacks."""
        arguments = ["push", *refs, "--jobs", str(jobs)]
        if run is not None:
            arguments += ["--run", run]
        if all:
            arguments.append("--all")
        arguments += self._remote_arguments(remote)
        return _build(PushResult, self._runner.run(arguments))

    def pull(self, ref: str, remote: Optional[str] = None, jobs: int = 4) -> PullResult:
        """Brings a remote checkpoint into this store, every byte checked."""
        return _build(PullResult, self._runner.run(["pull", ref, "--jobs", str(jobs), *self._remote_arguments(remote)]))

    def remote_add(self, name: str, url: str, endpoint: Optional[str] = None, region: Optional[str] = None,
                   path_style: bool = False, push_on_commit: bool = False) -> Dict[str, Any]:
        """Adds a remote after checking it (``ckstore remote add``)."""
        arguments = ["remote", "add", name, url]
        if endpoint:
            arguments += ["--endpoint", endpoint]
        if region:
            arguments += ["--region", region]
        if path_style:
            arguments.append("--path-style")
        if push_on_commit:
            arguments.append("--push-on-commit")
        return self._runner.run(arguments)
