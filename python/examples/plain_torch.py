"""A plain PyTorch loop that checkpoints into ckstore and resumes from the newest valid checkpoint.

    python plain_torch.py STORE [STEPS]      # run it twice: the second run resumes where the first ended
"""
import sys

import torch

import ckstore
import ckstore.torch as ckt

store = ckstore.Store(sys.argv[1], create=True)
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 40
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.9)

start = 0
if store.latest_valid("plain") is not None:
    start = ckt.load(store, "plain@latest-valid", model=model, optimizer=optimizer, scheduler=scheduler)["step"]
    print(f"resumed at step {start}")

x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
y = x.sum(dim=1, keepdim=True).sin()
for step in range(start + 1, start + steps + 1):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    if step % 10 == 0:
        result = ckt.save(store, "plain", step, model=model, optimizer=optimizer, scheduler=scheduler,
                          extra={"step": step}, metrics={"loss": loss.item()})
        print(f"step {step}: loss {loss.item():.4f}, stored {result.stored_bytes_added} bytes")
