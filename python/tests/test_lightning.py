"""Lightning with CKStoreCheckpointIO, for real: ModelCheckpoint saves through the plugin, and a new
Trainer resumes from ckstore://RUN@latest-valid with the weights an uninterrupted run ends with."""

import os

import pytest
import torch
import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

import ckstore
from ckstore.lightning import CKStoreCheckpointIO


class Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, index):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.7)}

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(5)
        x = torch.randn(64, 8, generator=generator)
        y = x.sum(dim=1, keepdim=True).sin()
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=False)


def make_trainer(tmp_path, io, max_epochs):
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), every_n_epochs=1, save_top_k=2, monitor="train_loss", mode="min")
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, deterministic=True, plugins=[io], callbacks=[checkpoints],
                     logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))


def uninterrupted_run(folder):
    """The model after 5 epochs without interruption, saved through the plugin into a store of its own."""
    L.seed_everything(0, workers=True)
    model = Regression()
    make_trainer(folder, CKStoreCheckpointIO(ckstore.Store(str(folder) + "-store"), "reg"), 5).fit(model)
    return model


def weights(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_saves_go_to_the_store_and_a_new_trainer_resumes_bit_for_bit(tmp_path):
    uninterrupted = uninterrupted_run(tmp_path / "a")

    store = ckstore.Store(str(tmp_path / "store"))
    L.seed_everything(0, workers=True)
    first = Regression()
    make_trainer(tmp_path / "b", CKStoreCheckpointIO(store, "reg"), 3).fit(first)
    # Every epoch's save reached the store; ModelCheckpoint's top-2 rotation removed the worst (no policy
    # governs this run), and nothing was written at Lightning's paths.
    steps = [c.step for c in store.ls("reg")]
    assert len(steps) == 2 and set(steps) <= {4, 8, 12}
    assert not os.path.exists(tmp_path / "b" / "ckpts") or os.listdir(tmp_path / "b" / "ckpts") == []

    # A new process would start here: a fresh model, and the newest valid checkpoint from the store.
    L.seed_everything(0, workers=True)
    resumed = Regression()
    newest = store.latest_valid("reg")
    assert newest.step == max(steps)
    if newest.step == 12:
        make_trainer(tmp_path / "c", CKStoreCheckpointIO(store, "reg"), 5).fit(resumed, ckpt_path="ckstore://reg@latest-valid")
        for name, tensor in weights(uninterrupted).items():
            assert torch.equal(tensor, weights(resumed)[name]), name
    else:
        pytest.fail(f"the newest checkpoint is at step {newest.step}, not the end of epoch 3")


def test_an_older_local_store_resumes_from_the_newer_remote_checkpoint(tmp_path):
    """Machine A saved epoch 1 and pushed; machine B trained to epoch 3 and pushed; A, with its older
    store, fits from ckstore://reg@latest-valid and resumes from B's epoch 3, ending with the weights of an
    uninterrupted run."""
    uninterrupted = uninterrupted_run(tmp_path / "u")

    remote = "file://" + str(tmp_path / "remote")
    a = ckstore.Store(str(tmp_path / "a-store"))
    L.seed_everything(0, workers=True)
    make_trainer(tmp_path / "a", CKStoreCheckpointIO(a, "reg", push=remote), 1).fit(Regression())
    b = ckstore.Store(str(tmp_path / "b-store"))
    L.seed_everything(0, workers=True)
    # B's step 4 differs from A's (Lightning's checkpoint names its own folder): its push warns, and
    # training goes on.
    with pytest.warns(UserWarning, match="stored locally but its push failed"):
        make_trainer(tmp_path / "b", CKStoreCheckpointIO(b, "reg", push=remote), 3).fit(Regression())
    assert [c.step for c in a.ls("reg")] == [4]

    L.seed_everything(0, workers=True)
    resumed = Regression()
    make_trainer(tmp_path / "a2", CKStoreCheckpointIO(a, "reg", push=remote), 5).fit(resumed, ckpt_path="ckstore://reg@latest-valid")
    for name, tensor in weights(uninterrupted).items():
        assert torch.equal(tensor, weights(resumed)[name]), name
    assert 12 in [c.step for c in a.ls("reg")]


def test_a_policy_governs_retention_instead_of_top_k(tmp_path):
    store = ckstore.Store(str(tmp_path / "store"))
    store.set_policy("reg", keep_last=10)
    L.seed_everything(0, workers=True)
    make_trainer(tmp_path, CKStoreCheckpointIO(store, "reg", keep_local=True), 4).fit(Regression())
    assert [c.step for c in store.ls("reg")] == [4, 8, 12, 16]
    # keep_local mirrors Lightning's own files, rotation included.
    assert len(os.listdir(tmp_path / "ckpts")) == 2


def test_strategies_that_bypass_checkpoint_io_are_refused():
    class DeepSpeedStrategy:
        pass

    with pytest.raises(ckstore.UsageError, match="bypassing CheckpointIO"):
        CKStoreCheckpointIO.check_strategy(DeepSpeedStrategy())
    CKStoreCheckpointIO.check_strategy(object())


def test_a_preemption_notice_saves_through_the_plugin_pushes_and_stops(tmp_path):
    """Azure's Preempt event comes during epoch 2: the next batch boundary saves through the plugin,
    which puts and pushes it, and training stops there; a new Trainer resumes from it."""
    import time

    from ckstore import preemption
    from ckstore.lightning import PreemptionCallback
    from notice_server import NoticeServer

    class Announcer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                server.announce()
                time.sleep(0.4)  # the batch runs on; the watcher (0.2 s poll) sees the event meanwhile

    server = NoticeServer()
    watcher = preemption.Watcher(poll=0.2, signals=(), env=server.environment("azure")).start()
    remote = "file://" + str(tmp_path / "remote")
    store = ckstore.Store(str(tmp_path / "store"))
    callback = PreemptionCallback(watcher)
    try:
        L.seed_everything(0, workers=True)
        model = Regression()
        trainer = L.Trainer(max_epochs=5, accelerator="cpu", devices=1, deterministic=True, plugins=[CKStoreCheckpointIO(store, "reg", push=remote)],
                            callbacks=[Announcer(), callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, default_root_dir=str(tmp_path))
        trainer.fit(model)
    finally:
        watcher.stop()
        server.close()
    assert callback.saved_step == 6 and trainer.global_step == 6, (callback.saved_step, trainer.global_step)
    viewer = ckstore.Store(str(tmp_path / "viewer"))
    assert [c.step for c in viewer.ls(remote=remote)] == [6]
    # A new Trainer on a fresh store resumes from it, through the remote.
    fresh = ckstore.Store(str(tmp_path / "fresh"))
    resumed = Regression()
    L.Trainer(max_epochs=2, accelerator="cpu", devices=1, deterministic=True, plugins=[CKStoreCheckpointIO(fresh, "reg", push=remote)],
              logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
              default_root_dir=str(tmp_path / "b")).fit(resumed, ckpt_path="ckstore://reg@latest-valid")
    assert [c.step for c in fresh.ls("reg")] == [6]


def test_background_saves_store_every_checkpoint_and_resume_bit_for_bit(tmp_path):
    """CKStoreCheckpointIO(background=True), Lightning's AsyncCheckpointIO done without a staging file:
    saves return after the snapshot; teardown at the end of fit waits for them; the run resumes from them
    exactly, and keep_local writes the stored file at Lightning's path."""
    uninterrupted = uninterrupted_run(tmp_path / "a")

    store = ckstore.Store(str(tmp_path / "store"))
    L.seed_everything(0, workers=True)
    first = Regression()
    io = CKStoreCheckpointIO(store, "reg", keep_local=True, background=True)
    make_trainer(tmp_path / "b", io, 3).fit(first)
    steps = [c.step for c in store.ls("reg")]
    assert len(steps) == 2 and max(steps) == 12
    kept = sorted(os.listdir(tmp_path / "b" / "ckpts"))
    assert len(kept) == 2
    saved_from = {store.show(c.id)["metadata"]["lightning_path"]: c.id for c in store.ls("reg")}
    for name in kept:
        out = tmp_path / "out" / name
        store.get(saved_from[str(tmp_path / "b" / "ckpts" / name)], str(out))
        assert (out / name).read_bytes() == (tmp_path / "b" / "ckpts" / name).read_bytes()

    L.seed_everything(0, workers=True)
    resumed = Regression()
    make_trainer(tmp_path / "c", CKStoreCheckpointIO(store, "reg", background=True), 5).fit(resumed, ckpt_path="ckstore://reg@latest-valid")
    for name, tensor in weights(uninterrupted).items():
        assert torch.equal(tensor, weights(resumed)[name]), name
