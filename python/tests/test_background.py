"""ckstore.torch saves with no staging copy, in the background: bit-exact, the same checkpoint as a put
of the folder, failures raised on the next call, nothing partial after a kill, and max_in_flight kept."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import save_model

import ckstore
import ckstore.torch as ckt
from test_torch import Net, assert_same_state, fresh, train

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def finished():
    """Every test leaves no save in flight and no failure pending for the next."""
    yield
    try:
        ckt.finish()
    except ckstore.CKStoreError:
        pass


class Tied(torch.nn.Module):
    """Tied input and output embeddings (stored once by safetensors), a bf16 layer and a view of a
    buffer in the optimizer's state: what the snapshot must keep as the writers see it."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(40, 8)
        self.head = torch.nn.Linear(8, 40, bias=False)
        self.head.weight = self.embed.weight
        self.narrow = torch.nn.Linear(8, 8).to(torch.bfloat16)


def write_folder(folder, model=None, optimizer=None, scheduler=None, extra=None):
    """The folder the save stands for: safetensors' save_model, and torch.save to each file, every file
    with mode 0644 (save_model's own file is 0600)."""
    os.makedirs(folder)
    if model is not None:
        save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"}, force_contiguous=True)
    for name, state in (("optimizer.pt", optimizer and optimizer.state_dict()), ("scheduler.pt", scheduler and scheduler.state_dict()),
                        ("extra.pt", extra)):
        if state is not None:
            with open(os.path.join(folder, name), "wb") as file:
                torch.save(state, file)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o644)


def test_a_background_save_round_trips_bit_exact_and_training_may_go_on_at_once(store):
    model, optimizer, scheduler = fresh()
    train(model, optimizer, scheduler, steps=5, seed=1)
    expected_model = {k: v.clone() for k, v in model.state_dict().items()}
    expected_optimizer = {k: {n: t.clone() for n, t in v.items()} for k, v in optimizer.state_dict()["state"].items()}
    rng = torch.get_rng_state()

    handle = ckt.save(store, "bg", 5, model=model, optimizer=optimizer, scheduler=scheduler, extra={"epoch": 1, "rng": rng},
                      metrics={"loss": 1.5}, background=True)
    assert isinstance(handle, ckt.SaveHandle)
    # The snapshot is taken: changing the model now does not reach the checkpoint.
    train(model, optimizer, scheduler, steps=3, seed=2)
    result = handle.committed()
    assert result.step == 5 and handle.uploaded() is None and handle.done()
    assert store.ls("bg")[0].metrics["loss"] == 1.5

    other, other_optimizer, other_scheduler = fresh(seed=9)
    extra = ckt.load(store, "bg@5", model=other, optimizer=other_optimizer, scheduler=other_scheduler)
    assert_same_state(expected_model, other.state_dict())
    assert_same_state(expected_optimizer, other_optimizer.state_dict()["state"])
    assert extra["epoch"] == 1 and torch.equal(extra["rng"], rng)
    assert store.verify([result.id], full=True)["ok"]


def test_its_checkpoint_is_the_one_a_put_of_the_folder_makes(tmp_path, store):
    model, optimizer, scheduler = fresh()
    train(model, optimizer, scheduler, steps=4, seed=3)
    extra = {"epoch": 3, "rng": torch.get_rng_state(), "note": "same bytes"}
    saved = ckt.save(store, "same", 4, model=model, optimizer=optimizer, scheduler=scheduler, extra=extra, background=True).committed()

    folder = str(tmp_path / "folder")
    write_folder(folder, model, optimizer, scheduler, extra)
    # A put of the folder at the same run and step is the same checkpoint: already stored, the same id
    # (an id covers the manifest, which also holds when it was made, so it is compared in one store).
    put = store.put(folder, run="same", step=4)
    assert put.already_stored and put.id == saved.id and put.stored_bytes_added == 0

    # And the files it restores are the folder's, byte for byte.
    out = tmp_path / "out"
    store.get(saved.id, str(out))
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as a, open(out / name, "rb") as b:
            assert a.read() == b.read(), name


def test_tied_weights_bf16_and_shared_storages_survive_the_snapshot(tmp_path, store):
    torch.manual_seed(0)
    model = Tied()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.embed.weight.grad = torch.randn_like(model.embed.weight)
    model.narrow.weight.grad = torch.randn_like(model.narrow.weight)
    optimizer.step()
    base = torch.arange(12.0)
    extra = {"whole": base, "view": base[2:6], "again": base}  # one storage, three references
    saved = ckt.save(store, "tied", 1, model=model, optimizer=optimizer, extra=extra)

    folder = str(tmp_path / "folder")
    write_folder(folder, model=model, optimizer=optimizer, extra=extra)
    out = tmp_path / "out"
    store.get(saved.id, str(out))
    for name in ("optimizer.pt", "extra.pt"):
        assert (out / name).read_bytes() == open(os.path.join(folder, name), "rb").read(), name
    # safetensors writes its metadata (the tied names) in a hash map's order, which changes from call to
    # call; the save writes the keys sorted. Everything else is the same, byte for byte.
    ours, theirs = (out / "model.safetensors").read_bytes(), open(os.path.join(folder, "model.safetensors"), "rb").read()
    length = int.from_bytes(ours[:8], "little")
    assert ours[:8] == theirs[:8] and ours[8 + length:] == theirs[8 + length:]
    assert json.loads(ours[8:8 + length]) == json.loads(theirs[8:8 + length])
    assert list(json.loads(ours[8:8 + length])["__metadata__"]) == ["format", "head.weight"]

    restored = Tied()
    loaded = ckt.load(store, "tied@1", model=restored)
    assert restored.head.weight.data_ptr() == restored.embed.weight.data_ptr()
    assert_same_state(model.state_dict(), restored.state_dict())
    assert loaded["view"].untyped_storage().data_ptr() == loaded["whole"].untyped_storage().data_ptr()
    assert torch.equal(loaded["view"], base[2:6]) and loaded["again"] is loaded["whole"]


def test_a_refused_push_raises_on_the_next_save_and_the_checkpoint_stays_committed(tmp_path, store):
    model, optimizer, scheduler = fresh()
    refused = f"file://{tmp_path}/not-a-folder/remote"
    (tmp_path / "not-a-folder").write_text("a file where the remote's folder should be")
    handle = ckt.save(store, "refused", 1, model=model, optimizer=optimizer, push=refused, background=True)
    assert handle.committed().step == 1
    while not handle.done():
        time.sleep(0.05)
    with pytest.raises(ckstore.BackgroundSaveError) as raised:
        ckt.save(store, "refused", 2, model=model, optimizer=optimizer, background=True)
    assert raised.value.run == "refused" and raised.value.step == 1 and "remote" in str(raised.value)
    # Raised once: the next save goes on, and the failed push lost nothing locally.
    ckt.save(store, "refused", 2, model=model, optimizer=optimizer, background=True).committed()
    assert [c.step for c in store.ls("refused")] == [1, 2]


def test_a_failure_the_handle_raised_is_not_raised_again(tmp_path, store):
    model, optimizer, _ = fresh()
    (tmp_path / "not-a-folder").write_text("")
    handle = ckt.save(store, "once", 1, model=model, push=f"file://{tmp_path}/not-a-folder/remote", background=True)
    with pytest.raises(ckstore.CKStoreError):
        handle.uploaded()
    ckt.finish()  # nothing left to raise


def test_a_full_disk_in_the_background_raises_on_finish(tmp_path, ckstore_bin):
    path = str(tmp_path / "store")
    ckstore.Store(path, create=True)
    # The binary as the store's file system would run it if it had 1 MiB left: every write past 1 MiB of
    # a file fails with EFBIG (Python ignores SIGXFSZ, so the binary it execs gets the error).
    full = tmp_path / "ckstore-on-a-full-disk"
    full.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        os.execv({ckstore_bin!r}, [{ckstore_bin!r}] + sys.argv[1:])
    """))
    full.chmod(0o755)
    store = ckstore.Store(path, binary=str(full))
    model, _, _ = fresh()
    torch.manual_seed(2)
    handle = ckt.save(store, "full", 1, model=model, extra={"big": torch.randn(4 << 20)}, background=True)
    with pytest.raises(ckstore.BackgroundSaveError) as raised:
        ckt.finish()
    assert raised.value.run == "full" and "too large" in str(raised.value).lower()
    assert handle.done() and store.ls("full") == [] and ckstore.Store(path).verify(full=True)["ok"]


KILLED = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, sys.argv[2])
    import ckstore, ckstore.torch as ckt
    from test_torch import fresh
    store = ckstore.Store(sys.argv[1])
    model, optimizer, _ = fresh()
    torch.manual_seed(1)
    extra = {"big": torch.randn(24 << 20)}  # 96 MiB: a put that takes a while
    ckt.save(store, "killed", 1, model=model, extra=extra, background=True)
    print("snapshotted", flush=True)
    time.sleep(600)
""")


def test_a_process_killed_mid_save_leaves_no_partial_checkpoint(tmp_path):
    store_path = str(tmp_path / "store")
    ckstore.Store(store_path, create=True)
    process = subprocess.Popen([sys.executable, "-c", KILLED, store_path, HERE], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout.readline().strip() == "snapshotted"
        # The put runs in a child of the trainer: wait until it is writing its first pack (under tmp/),
        # then kill them both, as a machine that goes away would.
        deadline = time.time() + 60
        writing = False
        while time.time() < deadline and not writing:
            writing = bool(os.listdir(os.path.join(store_path, "tmp")))
            time.sleep(0.005)
        assert writing, "the put never began writing"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    store = ckstore.Store(store_path)
    assert store.ls("killed") == [] and store.pending("killed") == []
    assert store.verify(full=True)["ok"]
    # The step can be saved again, and what is stored is whole.
    model, optimizer, _ = fresh()
    saved = ckt.save(store, "killed", 1, model=model, optimizer=optimizer)
    assert store.verify([saved.id], full=True)["ok"]


def test_max_in_flight_bounds_the_snapshots_held(store):
    model, optimizer, scheduler = fresh()
    saver = ckt._SAVER
    handles = []
    for step in range(1, 4):
        train(model, optimizer, scheduler, steps=1, seed=step)
        handles.append(ckt.save(store, "bounded", step, model=model, optimizer=optimizer, background=True, max_in_flight=1))
        # With one snapshot allowed, a save returns only once the one before it is committed.
        for earlier in handles[:-1]:
            assert earlier._put.done()
        assert saver.in_flight <= 1
    ckt.finish()
    assert saver.peak_in_flight == 1

    saver.peak_in_flight = 0
    for step in range(4, 10):
        train(model, optimizer, scheduler, steps=1, seed=step)
        handles.append(ckt.save(store, "bounded", step, model=model, optimizer=optimizer, background=True, max_in_flight=2))
        assert saver.in_flight <= 2
    ckt.finish()
    assert 1 <= saver.peak_in_flight <= 2
    # Committed in the order saved.
    assert [c.step for c in store.ls("bounded")] == list(range(1, 10))
    assert [h.committed().step for h in handles] == list(range(1, 10))


def test_a_sharded_save_writes_what_dcp_writes_and_loads_back(tmp_path, store):
    """save_sharded with no staging folder: DCP's own writer into the snapshot. The rank's data file is
    the one dcp.save writes to a folder, byte for byte; .metadata names the same items in the same places
    (DCP puts a random save id and the folder's path in it, so no two saves' are the same bytes)."""
    import pickle

    import torch.distributed.checkpoint as dcp

    model, optimizer, scheduler = fresh()
    train(model, optimizer, scheduler, steps=3, seed=4)
    state = {"model": model.state_dict(), "step": torch.tensor(3)}
    handle = ckt.save_sharded(store, "dcp", 3, state, background=True)
    train(model, optimizer, scheduler, steps=2, seed=5)  # the snapshot is already taken
    saved = handle.committed()
    assert saved.checkpoint is not None and saved.shard == {"index": 0, "count": 1}

    folder = tmp_path / "folder"
    restored = tmp_path / "restored"
    store.get("dcp@3", str(restored))
    expected = {"model": {k: v.clone() for k, v in fresh()[0].state_dict().items()}, "step": torch.tensor(0)}
    again, again_optimizer, again_scheduler = fresh()
    train(again, again_optimizer, again_scheduler, steps=3, seed=4)
    dcp.save({"model": again.state_dict(), "step": torch.tensor(3)}, checkpoint_id=str(folder))
    assert sorted(os.listdir(restored)) == sorted(os.listdir(folder))
    assert (restored / "__0_0.distcp").read_bytes() == (folder / "__0_0.distcp").read_bytes()
    ours, theirs = (pickle.loads((p / ".metadata").read_bytes()) for p in (restored, folder))
    assert ours.state_dict_metadata == theirs.state_dict_metadata and ours.storage_data == theirs.storage_data

    ckt.load_sharded(store, "dcp@latest-valid", expected)
    assert_same_state(expected, {"model": again.state_dict(), "step": torch.tensor(3)})
