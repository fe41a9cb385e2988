"""Training stall per checkpoint (issue 31): how long each way of saving stops the training loop, how long
until the checkpoint is durable, and the peak memory it adds, in one run.

GPT-2 small (124 M parameters, GPT2Config()'s defaults, built from the config, nothing from a hub) with
AdamW: weights and the two moments, 1.5 GB of state (1.4 GiB). Trained on generated tokens on the CPU
(or on the GPU with --device cuda); two training steps after each checkpoint (--steps; with 0, nothing
competes with a save for the CPU, as on a GPU machine whose training leaves the CPU idle).

The ways, each in a process of its own (so that each one's memory is its own), one after the other in
one run:
  torch.save      torch.save of {"model", "optimizer"} to a local file; durable once fsynced
  staged          what ckstore.torch.save did before issue 31: safetensors and torch.save into a staging
                  folder, then `ckstore put` of it (kept here as it was)
  ckstore         ckstore.torch.save today, in the foreground: snapshot, then `ckstore put --layout`
  background      ckstore.torch.save(background=True): returns after the snapshot; durable when committed
  dcp-async       torch.distributed.checkpoint.async_save (one rank, gloo); the stall includes waiting for
                  its staging when that is asynchronous; durable when its future is done
and, in the background process before each save, `snapshot`: a copy of every state tensor into buffers
allocated once, the least a snapshot can cost.

Stall: from the call until training may go on. Durable: from the call until the checkpoint is on disk
(fsync, or committed by the store; for the asynchronous ways, the moment their future completes, while
training goes on). Peak extra memory: the most resident memory of the process and its children (the
children's anonymous memory only: their shared pages are the trainer's snapshot, counted once, and their
file pages the page cache of mapped packs) above what the process held at the peak of two training steps
before its first save, sampled every 10 ms from each save's call through the steps after it (gc, run
between rounds to keep only the newest checkpoint, is left out); the page cache is not counted. Step: the median time of the two training steps after each save (the background save's
persist runs during them). Medians over the checkpoints; the first checkpoint of each way is reported
apart (buffers are allocated then) and left out of the medians.

usage: python training_stall.py [--checkpoints 10] [--ways torch.save,staged,ckstore,background,dcp-async]
                                 [--steps 2] [--device cpu] [--json FILE] [--work DIR]
Run with the project's .venv (make venv) and CKSTORE_BIN pointing at a release build. Scratch: about
3 GB per way (each keeps only its newest checkpoint).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = "gpt2-small"
WAYS = ("torch.save", "staged", "ckstore", "background", "dcp-async")


class Sampler(threading.Thread):
    """The resident memory of this process and its children, every 10 ms; ``peak`` is the most seen."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self._halt = threading.Event()

    @staticmethod
    def rss(pid, shared: bool = True) -> int:
        """Resident memory from /proc/PID/status (counters, cheap: smaps_rollup walks the page tables of
        the snapshot's mapping, and read every 10 ms it slowed the put it measured). Without ``shared``,
        only anonymous memory: a child's shared pages are the trainer's snapshot, counted there, and its
        file pages are the page cache of the packs it maps."""
        fields = ("RssAnon:",) + (("RssFile:", "RssShmem:") if shared else ())
        total = 0
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith(fields):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
        return total

    @staticmethod
    def children(pid):
        found = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as listing:
                    found += [int(child) for child in listing.read().split()]
        except OSError:
            pass
        return found

    @staticmethod
    def command(pid) -> str:
        try:
            with open(f"/proc/{pid}/comm") as comm:
                return comm.read().strip()
        except OSError:
            return ""

    def tree(self) -> int:
        total = self.rss(os.getpid())
        own = self.command(os.getpid())
        pending = self.children(os.getpid())
        while pending:
            pid = pending.pop()
            # A child between fork and exec shows the trainer's whole memory (shared copy-on-write): it is
            # counted once it runs its own program.
            if self.command(pid) != own:
                total += self.rss(pid, shared=False)
            pending += self.children(pid)
        return total

    def run(self):
        while not self._halt.is_set():
            self.peak = max(self.peak, self.tree())
            time.sleep(0.01)

    def stop(self):
        self._halt.set()


def completed(done_at) -> float:
    """When a future completed: its done-callback's time (callbacks run just after a waiter wakes)."""
    deadline = time.perf_counter() + 5
    while not done_at and time.perf_counter() < deadline:
        time.sleep(0.001)
    return done_at[0]


def worker(way, options):
    """One way, ``options.checkpoints`` checkpoints; prints one JSON object."""
    import torch
    from safetensors.torch import save_model
    from transformers import GPT2Config, GPT2LMHeadModel

    sys.path.insert(0, os.path.join(HERE, "..", "..", "python", "src"))
    import ckstore
    import ckstore.torch

    device = torch.device(options.device)
    work = os.path.join(options.work, way)
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=options.layers, n_embd=options.width)
    model = GPT2LMHeadModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (64, options.tokens), generator=torch.Generator().manual_seed(1)).to(device)
    step = 0

    def train_step():
        nonlocal step
        started = time.perf_counter()
        row = tokens[step % len(tokens)].unsqueeze(0)
        loss = model(input_ids=row, labels=row).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step += 1
        return time.perf_counter() - started

    train_step()
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
    store = ckstore.Store(os.path.join(work, "store"), create=True) if way in ("staged", "ckstore", "background") else None
    if store is not None:
        store.set_policy(RUN, keep_last=1)
    dcp_state = None
    if way == "dcp-async":
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(options.port))
        dist.init_process_group("gloo", rank=0, world_size=1)
    snapshot_buffers = None
    if way == "background":
        # For the snapshot alone (below): allocated before the base is taken, so not counted as the save's.
        tensors = [t for t in model.state_dict().values()] + [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        snapshot_buffers = [torch.empty_like(t, device="cpu", pin_memory=device.type == "cuda") for t in tensors]
        for target, source in zip(snapshot_buffers, tensors):
            target.copy_(source)  # touched, so that they are resident before the base is taken
    # What training alone holds at its peak (activations, gradients): the base the ways add to.
    sampler = Sampler()
    sampler.start()
    train_step()
    train_step()
    base = sampler.peak
    rounds = []
    for number in range(options.checkpoints):
        # The state changes between checkpoints as training changes it (with --steps 0, by a step taken
        # before the save, so that nothing runs beside it).
        if options.steps == 0 and number > 0:
            train_step()
        row = {"checkpoint": number + 1, "step": step}
        sampler.peak = 0  # this save's window: from its call through the steps after it, gc left out
        if way == "background" and number > 0:
            # The least a snapshot can cost: every state tensor copied into buffers allocated once.
            tensors = [t for t in model.state_dict().values()] + [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
            started = time.perf_counter()
            for target, source in zip(snapshot_buffers, tensors):
                target.copy_(source, non_blocking=device.type == "cuda")
            if device.type == "cuda":
                torch.cuda.synchronize()
            row["snapshot"] = time.perf_counter() - started
        started = time.perf_counter()
        if way == "torch.save":
            path = os.path.join(work, "checkpoint.pt")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
            row["stall"] = time.perf_counter() - started
            with open(path, "rb+") as file:
                os.fsync(file.fileno())
            row["durable"] = time.perf_counter() - started
        elif way == "staged":
            staging = tempfile.mkdtemp(prefix="staging-", dir=work)
            save_model(model, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"}, force_contiguous=True)
            torch.save(optimizer.state_dict(), os.path.join(staging, "optimizer.pt"))
            store.put(staging, run=RUN, step=step)
            shutil.rmtree(staging)
            row["stall"] = row["durable"] = time.perf_counter() - started
        elif way == "ckstore":
            ckstore.torch.save(store, RUN, step, model=model, optimizer=optimizer)
            row["stall"] = row["durable"] = time.perf_counter() - started
        elif way == "background":
            handle = ckstore.torch.save(store, RUN, step, model=model, optimizer=optimizer, background=True)
            row["stall"] = time.perf_counter() - started
            done_at = []
            handle._put.add_done_callback(lambda _: done_at.append(time.perf_counter()))
        elif way == "dcp-async":
            model_state, optimizer_state = get_state_dict(model, optimizer)
            folder = os.path.join(work, f"dcp-{step}")
            response = dcp.async_save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)
            if hasattr(response, "staging_completion"):
                response.staging_completion.result()
                future = response.upload_completion
            else:
                future = response
            row["stall"] = time.perf_counter() - started
            done_at = []
            future.add_done_callback(lambda _: done_at.append(time.perf_counter()))
        # Training goes on (during the background persist, for the asynchronous ways).
        steps = [train_step() for _ in range(options.steps)]
        if way == "background":
            handle.committed()
            row["durable"] = completed(done_at) - started
        elif way == "dcp-async":
            future.result()
            row["durable"] = completed(done_at) - started
            for name in os.listdir(work):
                if name.startswith("dcp-") and name != os.path.basename(folder):
                    shutil.rmtree(os.path.join(work, name))
        if steps:
            row["step_seconds"] = statistics.median(steps)
        row["peak_extra"] = max(0, sampler.peak - base)
        if store is not None:
            store.gc()
        rounds.append(row)
        print(f"  {way} #{number + 1}: stall {row['stall']:.2f} s, durable {row['durable']:.2f} s, "
              + (f"steps {row['step_seconds']:.2f} s" if steps else "no steps") + (f", snapshot {row['snapshot']:.2f} s" if "snapshot" in row else ""),
              file=sys.stderr, flush=True)
    if way in ("ckstore", "background"):
        ckstore.torch.finish()
    sampler.stop()
    sampler.join()
    print(json.dumps({"way": way, "state_bytes": state_bytes, "base_rss": base, "peak_extra": max(row["peak_extra"] for row in rounds), "rounds": rounds}))


def median(rounds, key):
    values = [row[key] for row in rounds[1:] if key in row]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="training steps after each save (0: the CPU is free for the save, as on a GPU machine)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--work", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--port", type=int, default=29517)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return worker(options.worker, options)

    work = options.work or tempfile.mkdtemp(prefix="ckstore-stall-")
    results = []
    for way in options.ways.split(","):
        if way not in WAYS:
            sys.exit(f"unknown way {way}; the ways are {', '.join(WAYS)}")
        command = [sys.executable, __file__, "--worker", way, "--work", work] + [
            f"--{name}={getattr(options, name)}" for name in ("checkpoints", "device", "tokens", "layers", "width", "port", "steps")]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"{way} failed ({done.returncode})")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        shutil.rmtree(os.path.join(work, way), ignore_errors=True)

    by_way = {result["way"]: result for result in results}
    base = by_way.get("torch.save")
    print(f"\nstate: {results[0]['state_bytes'] / 1e9:.2f} GB; {options.checkpoints} checkpoints per way; medians of "
          f"checkpoints 2-{options.checkpoints} (the first apart)")
    print(f"{'way':<12} {'stall':>8} {'first':>8} {'durable':>9} {'step':>7} {'peak extra':>11} {'stall / torch.save':>19}")
    summary = {}
    for result in results:
        rounds = result["rounds"]
        stall, durable, steps = median(rounds, "stall"), median(rounds, "durable"), median(rounds, "step_seconds")
        ratio = stall / median(base["rounds"], "stall") if base else None
        summary[result["way"]] = {"stall": stall, "durable": durable, "step_seconds": steps, "first_stall": rounds[0]["stall"],
                                  "peak_extra_bytes": result["peak_extra"], "snapshot": median(rounds, "snapshot")}
        print(f"{result['way']:<12} {stall:>7.2f}s {rounds[0]['stall']:>7.2f}s {durable:>8.2f}s "
              + (f"{steps:>6.2f}s " if steps is not None else "     - ")
              + f"{result['peak_extra'] / 2**30:>8.2f} GiB " + (f"{ratio:>18.2f}x" if ratio else ""))
    if "background" in summary and summary["background"]["snapshot"]:
        background = summary["background"]
        print(f"\nbackground stall / snapshot alone: {background['stall'] / background['snapshot']:.2f}x "
              f"(snapshot {background['snapshot']:.2f} s)")
    if options.json:
        with open(options.json, "w") as file:
            json.dump({"options": vars(options), "summary": summary, "results": results}, file, indent=1)


if __name__ == "__main__":
    main()
