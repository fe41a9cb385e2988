"""A Lightning fit whose checkpoints go into ckstore through CKStoreCheckpointIO.

    python lightning_fit.py STORE [MAX_EPOCHS]     # run it again with more epochs: it resumes
"""
import sys

import lightning as L
import torch
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
        return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(5))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=16)


store = ckstore.Store(sys.argv[1], create=True)
io = CKStoreCheckpointIO(store, "regression-example")
trainer = L.Trainer(max_epochs=int(sys.argv[2]) if len(sys.argv) > 2 else 3, accelerator="cpu", plugins=[io], logger=False,
                    enable_progress_bar=False, callbacks=[ModelCheckpoint(save_top_k=2, monitor="train_loss", dirpath="ckpts")])
CKStoreCheckpointIO.check_strategy(trainer.strategy)
resume = "ckstore://regression-example@latest-valid" if store.latest_valid("regression-example") else None
trainer.fit(Regression(), ckpt_path=resume)
print("stored steps:", [c.step for c in store.ls("regression-example")])
