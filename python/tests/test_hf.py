"""Hugging Face Trainer with CKStoreCallback, for real: killed with SIGKILL, resumed from the store, and
ending with the weights of an uninterrupted run, bit for bit."""

import json
import os
import signal
import sys

import ckstore
import ckstore.hf

from conftest import run_script

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_train.py")


def train(output_dir, store_path, max_steps=10, kill_at=0, resume=False):
    with open(SCRIPT) as f:
        source = f.read()
    return run_script(source, str(output_dir), str(store_path), "gpt2-tiny", str(max_steps), str(kill_at), "1" if resume else "0",
                      env={"PYTHONPATH": os.path.dirname(SCRIPT) + os.pathsep + os.environ.get("PYTHONPATH", "")})


def final_digest(done):
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("final-weights-sha256: ")]
    assert lines, done.stdout[-2000:]
    return lines[-1].split(": ")[1]


def local_folders(output_dir):
    return sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-"))


def test_killed_trainer_resumes_from_the_store_and_ends_bit_for_bit_the_same(tmp_path):
    # Uninterrupted, with the store's policy in place of save_total_limit.
    reference = ckstore.Store(str(tmp_path / "reference-store"))
    reference.set_policy("gpt2-tiny", keep_last=2)
    expected = final_digest(train(tmp_path / "reference", tmp_path / "reference-store"))
    assert [c.step for c in reference.ls("gpt2-tiny")] == [8, 10], "the store keeps what its policy says"
    assert local_folders(tmp_path / "reference") == ["checkpoint-10"], "the local folder keeps only the newest"

    # Killed with SIGKILL in on_save of step 6: Trainer's checkpoint-6 is complete, the store has up to 4.
    store = ckstore.Store(str(tmp_path / "store"))
    store.set_policy("gpt2-tiny", keep_last=2)
    crashed = train(tmp_path / "out", tmp_path / "store", kill_at=6)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert [c.step for c in store.ls("gpt2-tiny")] == [2, 4]
    assert "checkpoint-6" in local_folders(tmp_path / "out")
    # A newer folder that was being written when the machine died: its weights cut short, no state yet.
    half = tmp_path / "out" / "checkpoint-8"
    os.makedirs(half)
    with open(tmp_path / "out" / "checkpoint-6" / "model.safetensors", "rb") as f:
        data = f.read()
    with open(half / "model.safetensors", "wb") as f:
        f.write(data[: len(data) // 3])

    resumed = train(tmp_path / "out", tmp_path / "store", resume=True)
    # The complete checkpoint-6 was stored at the start and resumed from; the half-written 8 was not used.
    assert f"resuming from {tmp_path / 'out' / 'checkpoint-6'}" in resumed.stdout, resumed.stdout[-2000:]
    assert final_digest(resumed) == expected
    assert [c.step for c in store.ls("gpt2-tiny")] == [8, 10]
    assert local_folders(tmp_path / "out") == ["checkpoint-10"]
    assert store.verify(full=True)["ok"]
    # The store's metrics come from Trainer's own trainer_state.json.
    assert "loss" in store.ls("gpt2-tiny")[-1].metrics


def test_resume_with_an_empty_store_starts_from_scratch_and_unstored_incomplete_folders_are_left(tmp_path):
    assert ckstore.hf.resume(str(tmp_path / "out"), ckstore.Store(str(tmp_path / "none")), "nothing") is None
    store = ckstore.Store(str(tmp_path / "store"), create=True)
    # A JIT checkpoint still being written (its sentinel present) is neither stored nor resumed from.
    folder = tmp_path / "out" / "checkpoint-3"
    os.makedirs(folder)
    (folder / "trainer_state.json").write_text('{"global_step": 3, "log_history": []}')
    (folder / ckstore.hf.INCOMPLETE_SENTINEL).write_text("in progress")
    assert ckstore.hf.resume(str(tmp_path / "out"), store, "r") is None
    assert store.ls("r") == []
    # Once complete, the next start stores it and resumes from it.
    os.remove(folder / ckstore.hf.INCOMPLETE_SENTINEL)
    path = ckstore.hf.resume(str(tmp_path / "out"), store, "r")
    assert path == str(folder) and [c.step for c in store.ls("r")] == [3]


def test_a_trainer_whose_machine_is_lost_resumes_from_the_remote_on_a_fresh_one(tmp_path, seaweedfs):
    """The mission scenario with the real Trainer: every checkpoint pushed to S3 as it is saved, the
    process killed and its whole disk gone, a new machine resumes from the bucket, bit for bit."""
    credentials = {"AWS_ACCESS_KEY_ID": "ckstoretest", "AWS_SECRET_ACCESS_KEY": "ckstoretest-secret-key", "AWS_REGION": "us-east-1"}
    os.environ.update(credentials)
    remote = {"CKSTORE_TEST_REMOTE": "s3://hf-spot/gpt2", "CKSTORE_TEST_ENDPOINT": seaweedfs, "AWS_ENDPOINT_URL": seaweedfs}

    def train_remote(machine, **options):
        with open(SCRIPT) as f:
            source = f.read()
        return run_script(source, str(machine / "out"), str(machine / "store"), "gpt2-tiny", "10", str(options.get("kill_at", 0)),
                          "1" if options.get("resume") else "0", env={**credentials, **remote,
                          "PYTHONPATH": os.path.dirname(SCRIPT) + os.pathsep + os.environ.get("PYTHONPATH", "")})

    expected = final_digest(train(tmp_path / "reference", tmp_path / "reference-store"))
    crashed = train_remote(tmp_path / "machine-a", kill_at=6)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    import shutil
    # The instance is gone, and its disk with it (kept aside: it comes back below).
    shutil.move(str(tmp_path / "machine-a"), str(tmp_path / "machine-a-detached"))

    resumed = train_remote(tmp_path / "machine-b", resume=True)
    assert f"resuming from {tmp_path / 'machine-b' / 'out' / 'checkpoint-4'}" in resumed.stdout, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert final_digest(resumed) == expected
    viewer = ckstore.Store(str(tmp_path / "viewer"), endpoint=seaweedfs)
    assert [c.step for c in viewer.ls(remote="s3://hf-spot/gpt2")] == [2, 4, 6, 8, 10]

    # Machine A comes back with its disk: its store stops at step 4 (and its complete checkpoint-6 folder
    # is stored on the way), the remote at 10. It resumes from 10, not from its own 6, and finishes
    # without an error, with the weights of step 10.
    shutil.move(str(tmp_path / "machine-a-detached"), str(tmp_path / "machine-a"))
    back = train_remote(tmp_path / "machine-a", resume=True)
    assert back.returncode == 0, back.stderr[-3000:]
    assert f"resuming from {tmp_path / 'machine-a' / 'out' / 'checkpoint-10'}" in back.stdout, back.stdout[-2000:] + back.stderr[-2000:]
    assert final_digest(back) == expected
    # Its own step 6 differs from the remote's (another machine's): the push at the end warned instead of
    # raising after training had finished, and the remote kept B's checkpoints.
    assert "stored locally" in back.stderr and "different checkpoint" in back.stderr, back.stderr[-3000:]
    assert [c.step for c in viewer.ls(remote="s3://hf-spot/gpt2")][:5] == [2, 4, 6, 8, 10]


def test_a_conflicting_push_at_the_end_of_training_warns_and_keeps_every_local_checkpoint(tmp_path):
    """Another machine pushed a different checkpoint at one of this run's steps: the push at the end of
    a finished training run warns and keeps the local checkpoints; it never raises after the work."""
    import warnings

    from test_store import write_checkpoint

    remote = "file://" + str(tmp_path / "remote")
    other = ckstore.Store(str(tmp_path / "other"), create=True)
    write_checkpoint(tmp_path / "theirs", 2, seed=1)
    other.put(str(tmp_path / "theirs"), run="r", step=2)
    other.push(run="r", remote=remote)

    store = ckstore.Store(str(tmp_path / "store"), create=True)
    callback = ckstore.hf.CKStoreCallback(store, "r", push=remote)
    write_checkpoint(tmp_path / "out" / "checkpoint-2", 2, seed=2)

    class State:
        is_world_process_zero = True
        global_step = 2
        best_model_checkpoint = None

    class Args:
        output_dir = str(tmp_path / "out")
        world_size = 1
        process_index = 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.on_train_end(Args(), State(), None)
    assert any("stored locally" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert [c.step for c in store.ls("r")] == [2]
    assert os.path.isdir(tmp_path / "out" / "checkpoint-2")


def test_a_failing_push_warns_and_training_goes_on(tmp_path):
    import pytest

    from test_store import write_checkpoint

    (tmp_path / "not-a-folder").write_text("a file where the remote's folder should be")
    store = ckstore.Store(str(tmp_path / "store"), create=True)
    callback = ckstore.hf.CKStoreCallback(store, "r", push="file://" + str(tmp_path / "not-a-folder" / "remote"))
    write_checkpoint(tmp_path / "out" / "checkpoint-3", 3)
    with pytest.warns(UserWarning, match="stored locally but its push failed"):
        callback._put(str(tmp_path / "out" / "checkpoint-3"), 3)
    assert [c.step for c in store.ls("r")] == [3]


def test_fsdp_and_deepspeed_ranks_each_put_their_own_files_as_shards_and_resume_their_own_part(tmp_path):
    """The callback in a sharded job (FSDP's SHARDED_STATE_DICT, DeepSpeed ZeRO), each rank's events as
    Trainer calls them: rank 1's save leaves the checkpoint pending on the remote, rank 0's completes it,
    with no barrier between them. The DCP files are real ones, written by two torch ranks."""
    import shutil
    from types import SimpleNamespace

    fixture = os.path.join(os.path.dirname(os.path.dirname(HERE)), "Tests", "Fixtures", "real", "dcp", "step-1")
    output = tmp_path / "out"
    folder = output / "checkpoint-2"
    (folder / "pytorch_model_fsdp_0").mkdir(parents=True)
    for name in (".metadata", "__0_0.distcp", "__1_0.distcp"):
        shutil.copy(os.path.join(fixture, name), folder / "pytorch_model_fsdp_0" / name)
    (folder / "global_step2").mkdir()
    for rank in (0, 1):
        (folder / "global_step2" / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(os.urandom(50_000))
        (folder / f"rng_state_{rank}.pth").write_bytes(os.urandom(1_000))
    (folder / "scheduler.pt").write_bytes(os.urandom(1_000))
    (folder / "trainer_state.json").write_text('{"global_step": 2, "epoch": 0.5, "log_history": [{"loss": 1.5, "step": 2}]}')

    remote = "file://" + str(tmp_path / "remote")
    callbacks = [ckstore.hf.CKStoreCallback(ckstore.Store(str(tmp_path / f"rank{rank}")), "fsdp", push=remote) for rank in (0, 1)]

    def event(rank):
        return (SimpleNamespace(output_dir=str(output), process_index=rank, world_size=2),
                SimpleNamespace(global_step=2, is_world_process_zero=rank == 0, best_model_checkpoint=None), None)

    viewer = ckstore.Store(str(tmp_path / "viewer"))
    callbacks[1].on_save(*event(1))
    assert viewer.ls("fsdp", remote=remote) == []
    assert [(p.step, p.missing) for p in viewer.pending("fsdp", remote=remote)] == [(2, [0])]
    callbacks[0].on_save(*event(0))
    assert [c.step for c in viewer.ls("fsdp", remote=remote)] == [2]

    def tree(root):
        return {os.path.relpath(os.path.join(d, n), root): open(os.path.join(d, n), "rb").read() for d, _, names in os.walk(root) for n in names}

    viewer.get("fsdp@2", str(tmp_path / "whole"), remote=remote)
    assert tree(tmp_path / "whole") == tree(folder)
    shown = viewer.show("fsdp@2")
    assert shown["shard_count"] == 2
    rank_one = next(f for f in shown["files"] if f["path"] == "pytorch_model_fsdp_0/__1_0.distcp")
    assert {t["name"] for t in rank_one["tensors"]} == {"model.2.weight", "optim.state.2.weight.exp_avg_sq"}

    # A later step that rank 1 put before the job died: pending, and removed by the resume.
    shutil.copytree(folder, output / "checkpoint-4")
    callbacks[1].on_save(SimpleNamespace(output_dir=str(output), process_index=1, world_size=2),
                         SimpleNamespace(global_step=4, is_world_process_zero=False, best_model_checkpoint=None), None)
    assert [p.step for p in viewer.pending("fsdp", remote=remote)] == [4]

    # Fresh machines: each rank restores its own part into checkpoint-2.
    for rank in (0, 1):
        args = SimpleNamespace(output_dir=str(tmp_path / f"resumed{rank}"), process_index=rank, world_size=2)
        path = ckstore.hf.resume(args, ckstore.Store(str(tmp_path / f"fresh{rank}")), "fsdp", remote=remote)
        assert path == os.path.join(tmp_path / f"resumed{rank}", "checkpoint-2")
        mine = {name for name in tree(folder) if ckstore.hf._rank_shard(str(folder), rank).count(name)}
        assert set(tree(path)) == mine
    assert viewer.pending("fsdp", remote=remote) == []
    assert set(tree(tmp_path / "resumed1" / "checkpoint-2")) == {
        "global_step2/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "pytorch_model_fsdp_0/__1_0.distcp", "rng_state_1.pth"}


def test_a_preemption_notice_saves_pushes_and_stops_at_the_next_step_and_a_fresh_machine_resumes(tmp_path, seaweedfs):
    """EC2's spot notice (IMDSv2) appears while a step runs: the next step boundary saves, the checkpoint
    is on the remote, the process exits on its own with status 0, and a fresh machine resumes from it to
    the weights of an uninterrupted run."""
    import threading
    import time

    from notice_server import NoticeServer

    credentials = {"AWS_ACCESS_KEY_ID": "ckstoretest", "AWS_SECRET_ACCESS_KEY": "ckstoretest-secret-key", "AWS_REGION": "us-east-1"}
    os.environ.update(credentials)
    remote = {"CKSTORE_TEST_REMOTE": "s3://hf-spot/notice", "CKSTORE_TEST_ENDPOINT": seaweedfs, "AWS_ENDPOINT_URL": seaweedfs}
    server = NoticeServer()
    out = tmp_path / "machine-a" / "out"
    announced = {}

    def announce_when_step_4_is_saved():
        while not (out / "checkpoint-4" / "trainer_state.json").exists():
            time.sleep(0.05)
        time.sleep(0.2)  # inside step 5
        server.announce()
        announced["at"] = time.time()

    thread = threading.Thread(target=announce_when_step_4_is_saved, daemon=True)
    thread.start()

    def train_on(machine, max_steps, environment, resume):
        with open(SCRIPT) as f:
            source = f.read()
        return run_script(source, str(machine / "out"), str(machine / "store"), "gpt2-tiny", str(max_steps), "0", "1" if resume else "0",
                          env={**credentials, **remote, **environment,
                               "PYTHONPATH": os.path.dirname(SCRIPT) + os.pathsep + os.environ.get("PYTHONPATH", "")})

    poll = 0.5
    try:
        preempted = train_on(tmp_path / "machine-a", 16, {**server.environment("ec2"), "CKSTORE_TEST_PREEMPTION": str(poll),
                                                          "CKSTORE_TEST_STEP_SECONDS": "0.4"}, resume=False)
    finally:
        server.close()
    assert preempted.returncode == 0, preempted.stderr[-3000:]
    lines = [line for line in preempted.stderr.splitlines() if "durable on s3://hf-spot/notice" in line]
    assert lines, preempted.stderr[-3000:]
    step = int(lines[0].split("gpt2-tiny@")[1].split(" ")[0])
    final_step = int([l for l in preempted.stdout.splitlines() if l.startswith("final-step: ")][-1].split(": ")[1])
    # Stopped at the step it saved, long before max_steps; the notice came in step 5, and with 0.4 s steps
    # and a 0.5 s poll the watcher saw it by the end of step 6 or 7.
    assert final_step == step and 5 <= step <= 7, (step, preempted.stderr[-2000:])
    viewer = ckstore.Store(str(tmp_path / "viewer"), endpoint=seaweedfs)
    assert [c.step for c in viewer.ls(remote="s3://hf-spot/notice")][-1] == step

    # A fresh machine resumes from it and ends where an uninterrupted run ends.
    expected = final_digest(train(tmp_path / "reference", tmp_path / "reference-store", max_steps=16))
    resumed = train_on(tmp_path / "machine-b", 16, {}, resume=True)
    assert f"resuming from {tmp_path / 'machine-b' / 'out' / f'checkpoint-{step}'}" in resumed.stdout, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert final_digest(resumed) == expected


def test_ckstore_watch_stores_and_pushes_what_a_trainer_without_a_callback_writes(tmp_path, seaweedfs):
    """`ckstore watch` beside a Trainer that has no ckstore callback: SIGTERM in the middle of training;
    watch finishes and exits 0, the remote holds every complete folder, and `ckstore resume` on an empty
    machine restores the newest."""
    import subprocess
    import time

    credentials = {"AWS_ACCESS_KEY_ID": "ckstoretest", "AWS_SECRET_ACCESS_KEY": "ckstoretest-secret-key", "AWS_REGION": "us-east-1"}
    os.environ.update(credentials)
    binary = os.environ["CKSTORE_BIN"]
    out = tmp_path / "out"
    out.mkdir()
    remote = ["--remote", "s3://hf-spot/watch", "--endpoint", seaweedfs]
    environment = {**os.environ, **credentials, "CKSTORE_PREEMPTION_CLOUDS": "none"}
    watch = subprocess.Popen([binary, "watch", str(out), "--run", "gpt2-tiny", "--push", "s3://hf-spot/watch", "--endpoint", seaweedfs,
                              "--keep-local", "2", "--interval", "0.3", "--json", "--store", str(tmp_path / "store")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    with open(SCRIPT) as f:
        source = f.read()
    trainer = subprocess.Popen([sys.executable, "-c", source, str(out), str(tmp_path / "unused-store"), "gpt2-tiny", "30", "0", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**environment, "CKSTORE_TEST_NO_CALLBACK": "1", "CKSTORE_TEST_STEP_SECONDS": "0.3", "PYTHONHASHSEED": "0",
                                    "PYTHONPATH": os.path.dirname(SCRIPT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint-8" / "trainer_state.json").exists():
            assert time.time() < deadline and trainer.poll() is None, trainer.stderr.read()[-3000:] if trainer.poll() is not None else "timeout"
            time.sleep(0.1)
        watch.send_signal(signal.SIGTERM)
        stdout, stderr = watch.communicate(timeout=180)
        assert watch.returncode == 0, stderr[-3000:]
        # What was complete when watch finished: Trainer's folders with their state and no JIT sentinel.
        complete = sorted(int(p.name.split("-")[1]) for p in out.iterdir()
                          if p.name.startswith("checkpoint-") and (p / "trainer_state.json").exists() and not (p / ckstore.hf.INCOMPLETE_SENTINEL).exists())
    finally:
        trainer.kill()
        trainer.wait()
        if watch.poll() is None:
            watch.kill()
    viewer = ckstore.Store(str(tmp_path / "viewer"), endpoint=seaweedfs)
    on_remote = [c.step for c in viewer.ls(remote="s3://hf-spot/watch")]
    assert on_remote[:4] == [2, 4, 6, 8], on_remote
    assert set(complete) <= set(on_remote), (complete, on_remote)
    stored = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert all(entry["pushed"] for entry in stored) and [e["step"] for e in stored] == on_remote
    # Stored folders beyond the newest two were removed; the newest remain.
    assert len([p for p in out.iterdir() if p.name.startswith("checkpoint-") and int(p.name.split("-")[1]) in on_remote]) <= 2

    # An empty machine restores the newest.
    resumed = subprocess.run([binary, "resume", "gpt2-tiny", str(tmp_path / "restored"), "--json", "--store", str(tmp_path / "empty")] + remote,
                             capture_output=True, text=True, env=environment)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout)
    assert report["step"] == max(on_remote) and report["source"] == "remote"
    newest = out / f"checkpoint-{max(on_remote)}"
    for name in os.listdir(newest):
        with open(newest / name, "rb") as a, open(tmp_path / "restored" / name, "rb") as b:
            assert a.read() == b.read(), name
