"""Writes the DCP fixture: two checkpoints (steps 1 and 2) of a small model and its AdamW state, saved by
torch.distributed.checkpoint from two ranks (gloo, CPU), as `step-<n>/__<rank>_0.distcp` and `.metadata`.

The embedding is frozen (requires_grad=False), so it is the same in both steps: ckstore must store its
bytes once. Run from this folder with the project's test venv: `../../../../.venv/bin/python make_dcp_fixture.py`.
"""
import os
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import get_state_dict


def model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(64, 32), torch.nn.Flatten(), torch.nn.Linear(4 * 32, 32), torch.nn.Linear(32, 8))
    net[0].weight.requires_grad_(False)
    return net


def run(rank, world):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = "29533"
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    net = torch.nn.parallel.DistributedDataParallel(model())
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for step in (1, 2):
        tokens = torch.randint(0, 64, (4, 4), generator=generator)
        net(tokens).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        model_state, optimizer_state = get_state_dict(net, optimizer)
        dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=f"step-{step}")
    dist.destroy_process_group()


if __name__ == "__main__":
    for step in (1, 2):
        shutil.rmtree(f"step-{step}", ignore_errors=True)
    mp.spawn(run, args=(2,), nprocs=2)
