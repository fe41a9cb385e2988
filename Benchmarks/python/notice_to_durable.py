"""Notice to durable (issue 27): from a spot notice's appearance until the checkpoint of the current step is
on the remote, broken down, beside torch.save followed by `rclone copy` of the folder, in the same run.

GPT-2 small (124 M parameters: GPT2Config()'s defaults, built from the config, nothing from a hub) with
AdamW, trained on generated tokens on the CPU; a 1.4 GiB checkpoint (weights, and AdamW's two moments).
SeaweedFS on 127.0.0.1 (python/tests/seaweed.py); EC2's notice served after a delay by the tests' notice
server (IMDSv2's token and spot/instance-action) and watched by ckstore.preemption as on EC2 (every 5 s).

Each round:
  1. a periodic checkpoint is saved and pushed (ckstore.torch.save(push=…), what CKStoreCallback or a loop's
     every-N-steps save does), then training goes on;
  2. the notice appears at a random moment; the loop asks `requested()` at each step boundary;
  3. at the first boundary after it is seen, what ckstore.torch.save(push=…) does, timed apart through its
     handle: the snapshot into memory, the put (which reads the files from the snapshot: nothing is
     staged on disk since issue 31), the push;
  4. from the same state, the baseline: torch.save of the same two files into a folder, and `rclone copy`
     of the folder to the same SeaweedFS (4 transfers, its default).
3 and 4 alternate which goes first (ckstore in odd rounds). Dirty pages are written out (sync, untimed)
after the periodic checkpoint and between 3 and 4, so that neither pays for the other's writes. Notice to
durable is the notice's appearance to the step boundary, plus 3.
Prints every round and the medians; --json writes them.

usage: python notice_to_durable.py [--rounds 3] [--steps-before-notice 3] [--json FILE]
Scratch: about 6 GiB per round (SeaweedFS keeps every push and copy). Run with the project's .venv (make venv) and
CKSTORE_BIN pointing at a release build; rclone on PATH
(make bench-deps).
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import save_model
from transformers import GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python", "tests"))

import ckstore  # noqa: E402
import ckstore.preemption  # noqa: E402
import ckstore.torch  # noqa: E402
import seaweed  # noqa: E402
from notice_server import NoticeServer  # noqa: E402

BUCKET = "notice"
RUN = "gpt2-small"


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, files in os.walk(path) for name in files)


def stage(folder, model, optimizer):
    """What ckstore.torch.save writes before its put: safetensors of the model, torch.save of the optimizer."""
    os.makedirs(folder, exist_ok=True)
    save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"}, force_contiguous=True)
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps-before-notice", type=int, default=3, help="training steps between the periodic checkpoint and the notice")
    parser.add_argument("--tokens", type=int, default=64, help="sequence length of the one-row batches")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one); needs about 6 GiB a round")
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 small's 12 (fewer for a quick try)")
    parser.add_argument("--width", type=int, default=768, help="GPT-2 small's 768")
    parser.add_argument("--json", default=None)
    options = parser.parse_args()
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed (make bench-deps)")

    work = options.work or tempfile.mkdtemp(prefix="ckstore-notice-")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=options.layers, n_embd=options.width)
    model = GPT2LMHeadModel(config)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, config.vocab_size, (64, options.tokens), generator=torch.Generator().manual_seed(1))
    step = 0

    def train_step():
        nonlocal step
        row = tokens[step % len(tokens)].unsqueeze(0)
        loss = model(input_ids=row, labels=row).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

    rounds = []
    with seaweed.seaweedfs(os.path.join(work, "seaweed"), (BUCKET,)) as endpoint:
        credentials = {"AWS_ACCESS_KEY_ID": seaweed.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": seaweed.SECRET_KEY, "AWS_REGION": "us-east-1"}
        os.environ.update(credentials)
        os.environ.pop("AWS_CA_BUNDLE", None)  # rclone refuses an empty one
        remote = f"s3://{BUCKET}/ckstore"
        store = ckstore.Store(os.path.join(work, "store"), create=True, endpoint=endpoint)
        rclone_env = dict(os.environ, RCLONE_CONFIG_SEAWEED_TYPE="s3", RCLONE_CONFIG_SEAWEED_PROVIDER="Other",
                          RCLONE_CONFIG_SEAWEED_ACCESS_KEY_ID=seaweed.ACCESS_KEY, RCLONE_CONFIG_SEAWEED_SECRET_ACCESS_KEY=seaweed.SECRET_KEY,
                          RCLONE_CONFIG_SEAWEED_ENDPOINT=endpoint, RCLONE_CONFIG_SEAWEED_REGION="us-east-1")
        train_step()
        for number in range(options.rounds):
            # 1. The periodic checkpoint, pushed.
            started = time.perf_counter()
            ckstore.torch.save(store, RUN, step, model, optimizer, push=remote)
            periodic = time.perf_counter() - started
            periodic_step = step
            # Its writes reach the disk before the notice, as they would minutes before one in a real run.
            os.sync()

            # 2. Training on; the notice appears during one of the next steps.
            train_step()
            step_started = time.perf_counter()
            train_step()
            step_seconds = time.perf_counter() - step_started
            # The notice appears at a random moment of EC2's 5 s poll, after the steps asked for.
            poll = ckstore.preemption.EC2_POLL
            server = NoticeServer(after=step_seconds * options.steps_before_notice + random.uniform(0, poll))
            watcher = ckstore.preemption.Watcher(clouds=["ec2"], env=server.environment("ec2"), signals=()).start()
            while not watcher.requested():
                train_step()
            boundary = time.time()
            notice = watcher.notice
            watcher.stop()
            appeared = server.appeared_at
            server.close()

            def ckstore_path():
                """ckstore.torch.save(push=…), timed apart through its handle: (snapshot, put, push) seconds.
                Nothing is staged: the put reads the files from the snapshot (issue 31)."""
                t0 = time.perf_counter()
                handle = ckstore.torch.save(store, RUN, step, model, optimizer, push=remote, background=True)
                t1 = time.perf_counter()
                put = handle.committed()
                t2 = time.perf_counter()
                pushed = handle.uploaded()
                t3 = time.perf_counter()
                return (t1 - t0, t2 - t1, t3 - t2), put, pushed, put.logical_bytes

            def baseline():
                """torch.save of the same files into a folder, then rclone copy of it: (save, copy) seconds."""
                folder = os.path.join(work, f"baseline-{step}")
                b0 = time.perf_counter()
                stage(folder, model, optimizer)
                b1 = time.perf_counter()
                subprocess.run(["rclone", "copy", "--config", "/dev/null", folder, f"seaweed:{BUCKET}/rclone/step-{step}", "--transfers", "4"],
                               env=rclone_env, check=True)
                b2 = time.perf_counter()
                shutil.rmtree(folder)
                return b1 - b0, b2 - b1

            # 3 and 4, from the same state: ckstore first in odd rounds, the baseline first in even ones, each
            # once the other's writes are on the disk, so that neither always comes second.
            if number % 2 == 0:
                (save, put_seconds, push_seconds), put, pushed, logical = ckstore_path()
                os.sync()
                torch_save, rclone_copy = baseline()
            else:
                torch_save, rclone_copy = baseline()
                os.sync()
                (save, put_seconds, push_seconds), put, pushed, logical = ckstore_path()
            boundary_to_durable = save + put_seconds + push_seconds

            result = {
                "round": number + 1, "step": step, "periodic_step": periodic_step, "logical_bytes": logical,
                "periodic_save_seconds": periodic, "train_step_seconds": step_seconds,
                "notice_to_seen": notice.seen_at - appeared, "seen_to_boundary": boundary - notice.seen_at,
                "snapshot": save, "put": put_seconds, "push": push_seconds,
                "notice_to_durable": boundary - appeared + boundary_to_durable, "boundary_to_durable": boundary_to_durable,
                "stored_bytes_added": put.stored_bytes_added, "bytes_uploaded": pushed.bytes_uploaded,
                "baseline_torch_save": torch_save, "baseline_rclone_copy": rclone_copy, "baseline_total": torch_save + rclone_copy,
            }
            rounds.append(result)
            print(json.dumps(result), flush=True)
            train_step()

    keys = [k for k in rounds[0] if k not in ("round", "step", "periodic_step")]
    medians = {k: statistics.median(r[k] for r in rounds) for k in keys}
    print(f"\nGPT-2 small, {parameters / 1e6:.1f} M parameters, checkpoint {medians['logical_bytes'] / 2**30:.2f} GiB; medians of {len(rounds)} rounds")
    for key in keys:
        value = medians[key]
        print(f"  {key:24s} {value:14.3f}" if isinstance(value, float) else f"  {key:24s} {value}")
    print(f"  torch.save + rclone copy / notice to durable: {medians['baseline_total'] / medians['notice_to_durable']:.2f}x; "
          f"/ step boundary to durable: {medians['baseline_total'] / medians['boundary_to_durable']:.2f}x")
    if options.json:
        with open(options.json, "w") as out:
            json.dump({"parameters": parameters, "rounds": rounds, "medians": medians}, out, indent=2)
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
