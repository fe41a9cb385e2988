"""ckstore.Store against the real binary: results as dataclasses, failures as the right exceptions."""

import glob
import json
import os
import stat

import pytest

import ckstore


def write_checkpoint(folder, step, seed=0, size=64 * 1024):
    os.makedirs(folder, exist_ok=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [size // 4], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    data = bytes((i * 7 + seed * 13 + step) % 251 for i in range(size))
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + data)
    with open(os.path.join(folder, "trainer_state.json"), "w") as f:
        json.dump({"global_step": step, "epoch": step / 10, "log_history": [{"step": step, "loss": 1.0 / step}]}, f)


def test_put_ls_show_get_round_trip(store, tmp_path):
    write_checkpoint(tmp_path / "c10", 10)
    write_checkpoint(tmp_path / "c20", 20)
    first = store.put(str(tmp_path / "c10"), run="r", tags=["warmup"], meta={"host": "test"})
    assert isinstance(first, ckstore.PutResult)
    assert first.step == 10 and not first.already_stored and first.stored_bytes_added > 0
    again = store.put(str(tmp_path / "c10"), run="r", tags=["warmup"], meta={"host": "test"})
    assert again.already_stored and again.id == first.id
    second = store.put(str(tmp_path / "c20"), run="r", metrics={"accuracy": 0.5})

    listed = store.ls("r")
    assert [c.step for c in listed] == [10, 20]
    assert listed[1].metrics["loss"] == pytest.approx(0.05) and listed[1].metrics["accuracy"] == 0.5
    assert listed[0].tags == ["warmup"]
    assert store.latest("r").id == second.id
    assert store.latest_valid("r").id == second.id
    assert store.latest("nothing") is None and store.latest_valid("nothing") is None
    shown = store.show("r@10")
    assert shown["metadata"] == {"host": "test"} and [f["path"] for f in shown["files"]] == ["model.safetensors", "trainer_state.json"]

    restored = store.get("r@10", str(tmp_path / "out"))
    assert sorted(restored.files) == ["model.safetensors", "trainer_state.json"]
    for name in restored.files:
        assert open(tmp_path / "out" / name, "rb").read() == open(tmp_path / "c10" / name, "rb").read()
    assert store.verify(full=True)["ok"] is True


def test_policy_gc_and_audit(store, tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint(tmp_path / f"c{step}", step, seed=step)
        store.put(str(tmp_path / f"c{step}"), run="r")
    store.set_policy("r", keep_last=2)
    plan = store.gc(dry_run=True)
    assert plan["dry_run"] is True and len(plan["deleted_checkpoints"]) == 2
    assert [c.step for c in store.ls("r")] == [1, 2, 3, 4]
    store.gc()
    assert [c.step for c in store.ls("r")] == [3, 4]
    assert store.audit()["runs"][0]["run"] == "r"


def test_a_missing_binary_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CKSTORE_BIN", str(tmp_path / "no-such-ckstore"))
    with pytest.raises(ckstore.BinaryNotFound, match="CKSTORE_BIN"):
        ckstore.Store(str(tmp_path / "s"))
    monkeypatch.delenv("CKSTORE_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ckstore.BinaryNotFound, match="make install"):
        ckstore.Store(str(tmp_path / "s"))


def test_a_binary_too_old_is_refused(tmp_path, monkeypatch):
    old = tmp_path / "ckstore"
    old.write_text("#!/bin/sh\necho 0.4.0\n")
    old.chmod(old.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CKSTORE_BIN", str(old))
    with pytest.raises(ckstore.BinaryNotFound, match="0.4.0"):
        ckstore.Store(str(tmp_path / "s"))


def test_a_missing_checkpoint_raises_checkpoint_not_found_with_the_cli_message(store, tmp_path):
    write_checkpoint(tmp_path / "c", 5)
    store.put(str(tmp_path / "c"), run="r")
    with pytest.raises(ckstore.CheckpointNotFound) as caught:
        store.get("r@6", str(tmp_path / "out"))
    assert caught.value.code == "not_found"
    assert "r@6" in caught.value.message or "step 6" in caught.value.message
    with pytest.raises(ckstore.CheckpointNotFound):
        ckstore.Store(str(tmp_path / "no-store")).ls()


def test_a_damaged_checkpoint_raises_damaged_checkpoint(store, tmp_path):
    write_checkpoint(tmp_path / "c", 5, size=256 * 1024)
    store.put(str(tmp_path / "c"), run="r")
    pack = glob.glob(os.path.join(store.path, "packs", "*", "*.pack"))[0]
    with open(pack, "r+b") as f:
        f.seek(os.path.getsize(pack) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(ckstore.DamagedCheckpoint) as caught:
        store.get("r@5", str(tmp_path / "out"))
    assert caught.value.code == "damaged" and caught.value.message
    report = store.verify(full=True)
    assert report["ok"] is False and report["affected_checkpoints"]


def test_a_conflict_and_bad_usage(store, tmp_path):
    write_checkpoint(tmp_path / "a", 5, seed=1)
    write_checkpoint(tmp_path / "b", 5, seed=2)
    store.put(str(tmp_path / "a"), run="r")
    with pytest.raises(ckstore.Conflict):
        store.put(str(tmp_path / "b"), run="r")
    with pytest.raises(ckstore.UsageError):
        store.put(str(tmp_path / "a"), run="bad/name")


def test_push_and_pull_through_a_folder_remote(store, tmp_path):
    write_checkpoint(tmp_path / "c", 7)
    put = store.put(str(tmp_path / "c"), run="r", push="file://" + str(tmp_path / "remote"))
    assert put.push is not None and put.push.pushed == [put.id]
    fresh = ckstore.Store(str(tmp_path / "fresh"), remote="file://" + str(tmp_path / "remote"))
    assert [c.step for c in fresh.ls(remote=fresh.remote)] == [7]
    pulled = fresh.pull("r@latest-valid")
    assert pulled.pulled and pulled.id == put.id
    assert store.push(["r@7"], remote="file://" + str(tmp_path / "remote")).already_present == [put.id]


def test_a_store_s_endpoint_reaches_a_put_s_push_url(tmp_path, seaweedfs, monkeypatch):
    """Store(endpoint=…) applies to put(push=URL) as to push and pull (ckstore.torch.save pushes through put),
    with no AWS_ENDPOINT_URL in the environment."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ckstoretest")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ckstoretest-secret-key")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = ckstore.Store(str(tmp_path / "s"), create=True, endpoint=seaweedfs)
    write_checkpoint(tmp_path / "c", 3)
    put = store.put(str(tmp_path / "c"), run="r", push="s3://hf-spot/endpoint")
    assert put.push is not None and put.push.pushed == [put.id]
    assert [c.step for c in store.ls(remote="s3://hf-spot/endpoint")] == [3]


def test_shards_stay_pending_until_every_rank_put_its_own_and_a_pending_step_can_be_removed(store, tmp_path):
    for rank in (0, 1):
        folder = tmp_path / f"rank{rank}"
        folder.mkdir()
        (folder / f"__{rank}_0.distcp").write_bytes(os.urandom(100_000))
    first = store.put(str(tmp_path / "rank1"), run="job", step=3, shard=(1, 2))
    assert first.shard == {"index": 1, "count": 2} and first.checkpoint is None and first.missing_shards == [0]
    assert store.ls("job") == []
    assert [(p.step, p.shard_count, p.missing) for p in store.pending("job")] == [(3, 2, [0])]
    last = store.put(str(tmp_path / "rank0"), run="job", step=3, shard=(0, 2))
    assert last.checkpoint == store.latest("job").id and last.missing_shards == []
    store.get("job@3", str(tmp_path / "back"), shard=(1, 2))
    assert os.listdir(tmp_path / "back") == ["__1_0.distcp"]
    with pytest.raises(ckstore.Conflict):
        (tmp_path / "rank1" / "__1_0.distcp").write_bytes(os.urandom(100_000))
        store.put(str(tmp_path / "rank1"), run="job", step=3, shard=(1, 2))
    # A step a crashed job left pending is removed before a restarted job saves it again.
    store.put(str(tmp_path / "rank1"), run="job", step=5, shard=(1, 2))
    assert [p.step for p in store.rm_pending("job", 5)] == [5]
    assert store.pending("job") == []


def test_advise_from_what_the_store_measured(store, tmp_path):
    """Store.advise over `ckstore advise`: the Young–Daly interval from the measured puts and steps
    (AdviseTests checks the figures against hand-computed ones), as dataclasses."""
    import math
    import time

    for step in (10, 20, 30):
        write_checkpoint(tmp_path / f"c{step}", step)
        store.put(str(tmp_path / f"c{step}"), run="r")
        time.sleep(1.1)  # checkpoints made at different times: the rate of progress
    advice = store.advise("r", mtbf="6h", compute_cost_per_hour=3)
    assert isinstance(advice, ckstore.Advice) and isinstance(advice.current, ckstore.AdviceInterval)
    assert advice.checkpoint_seconds_source == "measured" and advice.put_seconds > 0 and advice.push_seconds is None
    assert advice.mtbf_seconds == 21600 and advice.current.steps == 10
    assert math.isclose(advice.young_daly_seconds, math.sqrt(2 * advice.checkpoint_seconds * 21600))
    assert advice.advised.steps == max(1, round(advice.young_daly_seconds / advice.seconds_per_step))
    assert math.isclose(advice.current.lost_cost_per_interruption, advice.current.seconds / 2 / 3600 * 3)
    assert advice.current.storage_cost_per_month is None and not advice.current.bounded
    # Seconds, or interruptions a day, are the same MTBF; a given C replaces the measured one.
    assert store.advise("r", mtbf=21600).young_daly_seconds == advice.young_daly_seconds
    given = store.advise("r", interruptions_per_day=4, checkpoint_seconds=50)
    assert given.checkpoint_seconds_source == "given" and math.isclose(given.young_daly_seconds, math.sqrt(2 * 50 * 21600))
    with pytest.raises(ckstore.UsageError):
        store.advise("r")
    with pytest.raises(ckstore.CheckpointNotFound):
        store.advise("nope", mtbf="1h")
