"""A small sharded training job for `torchrun` (gloo, CPU): FSDP over a model with a frozen embedding,
AdamW, and a sharded checkpoint every few steps through ``ckstore.torch.save_sharded``, each rank into
its own store, pushed to a remote.

Every step's global batch comes from a generator seeded by the step, split into two micro-batches that the
ranks share out, so a job resumed from step S (``--resume``) with one rank or two computes the same
gradients, bit for bit, as an uninterrupted one.

``--kill-rank R --kill-step S``: at step S rank R puts its shard into its own store and is killed
(SIGKILL) before pushing it, once rank 0's push of that step is done.
"""

import argparse
import os
import signal
import time

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

import ckstore
from ckstore.torch import load_sharded, save_sharded

GLOBAL_BATCH = 8


def model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Flatten(), torch.nn.Linear(4 * 16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    net[0].weight.requires_grad_(False)
    return net


#: The global batch is split into this many micro-batches, whatever the world size: each rank takes
#: every world-th one, so the gradients are the same sums of the same products with 2 ranks or 1.
MICRO_BATCHES = 2


def shard(net):
    """FSDP (``fully_shard``, which runs on CPU with gloo): each rank holds and saves its shard of every
    parameter and of its optimizer state."""
    from torch.distributed.fsdp import fully_shard

    for layer in net:
        if any(parameter.requires_grad for parameter in layer.parameters()):
            fully_shard(layer)
    return fully_shard(net)


def micro_batches(step, rank, world):
    generator = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, 64, (GLOBAL_BATCH, 4), generator=generator)
    targets = torch.randn(GLOBAL_BATCH, 4, generator=generator)
    return [(tokens[index::MICRO_BATCHES], targets[index::MICRO_BATCHES]) for index in range(rank, MICRO_BATCHES, world)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", required=True, help="each rank's store is STORES/rank<r>")
    parser.add_argument("--remote", required=True)
    parser.add_argument("--run", default="dcp-job")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume-from", help="the remote to resume from (default: --remote)")
    parser.add_argument("--kill-rank", type=int, default=-1)
    parser.add_argument("--kill-step", type=int, default=-1)
    parser.add_argument("--out", required=True, help="rank 0 writes the final weights here")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    store = ckstore.Store(os.path.join(args.stores, f"rank{rank}"), create=True)
    net = shard(model())
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)

    start = 0
    if args.resume:
        model_state, optimizer_state = get_state_dict(net, optimizer)
        state = {"model": model_state, "optim": optimizer_state}
        loaded = load_sharded(store, f"{args.run}@latest-valid", state, remote=args.resume_from or args.remote)
        set_state_dict(net, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        start = loaded.step
        print(f"rank {rank}: resumed from step {start} ({loaded.id[:12]})", flush=True)

    for step in range(start + 1, args.steps + 1):
        # FSDP averages each gradient over the ranks (a division by the world size); scaling each micro-batch's
        # loss by world/MICRO_BATCHES (a power of two, exact) makes every micro-batch's gradient g/2
        # however many ranks there are, and g0/2 + g1/2 is one exact sum either way.
        for tokens, targets in micro_batches(step, rank, world):
            loss = torch.nn.functional.mse_loss(net(tokens), targets) * (world / MICRO_BATCHES)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.save_every:
            continue
        model_state, optimizer_state = get_state_dict(net, optimizer)
        state = {"model": model_state, "optim": optimizer_state}
        marker = os.path.join(args.stores, f"pushed-{step}")
        if rank == args.kill_rank and step == args.kill_step:
            save_sharded(store, args.run, step, state)  # committed in its own store, never pushed
            deadline = time.time() + 120
            while not os.path.exists(marker) and time.time() < deadline:
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)
        result = save_sharded(store, args.run, step, state, push=args.remote)
        if rank == 0:
            open(marker, "w").close()
        print(f"rank {rank}: step {step} shard {result.shard} pushed, missing on the remote: {result.push.missing_shards}", flush=True)

    # The whole weights (gathered from the ranks' shards), written by rank 0.
    model_state, _ = get_state_dict(net, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({name: tensor.detach().clone() for name, tensor in model_state.items()}, args.out)
    # Both ranks done before the group goes: a rank tearing gloo down while the other still used it
    # aborted the job (std::terminate in the other rank) on a loaded machine.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
