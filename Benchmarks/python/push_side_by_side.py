"""Push side by side: the same checkpoint pushed to SeaweedFS by two ckstore binaries (an earlier revision
and this one, say) and copied by `rclone copy`, alternating, in one run; for each push the wall time, the
client's CPU seconds and SeaweedFS's CPU seconds.

On a machine where the server runs beside the client (this project's 2 cores), a push is bound by the CPU
of both: every CPU second the client spends is taken from the server. So the client's CPU per byte is
what this measures, beside the wall time.

The checkpoint: GPT-2 small (124 M parameters, GPT2Config()'s defaults, built from the config) after one
AdamW step, as ckstore.torch.save writes it: model.safetensors and optimizer.pt, 1.4 GiB. It is put once
(with the first binary) into a fresh store, and every push goes to a new prefix of one bucket, so each
uploads the whole checkpoint (a keyframe of every chunk).

usage: python push_side_by_side.py --bin OLD --bin NEW [--rounds 5] [--work DIR] [--json FILE]
Run with the project's .venv (make venv); rclone on PATH (make bench-deps).
"""

import argparse
import json
import os
import resource
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

import seaweed  # noqa: E402

BUCKET = "pushes"


def make_checkpoint(folder):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    row = torch.randint(0, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    model(input_ids=row, labels=row).loss.backward()
    optimizer.step()
    os.makedirs(folder)
    save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"}, force_contiguous=True)
    torch.save(optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))


def cpu_seconds(pid):
    """User and system CPU seconds of a running process, from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", action="append", required=True, help="a ckstore binary (give two or more)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one); needs about 8 GiB")
    parser.add_argument("--json", default=None)
    options = parser.parse_args()
    if not shutil.which("rclone"):
        sys.exit("rclone is not installed (make bench-deps)")
    work = options.work or tempfile.mkdtemp(prefix="ckstore-push-")
    folder = os.path.join(work, "checkpoint")
    if not os.path.exists(folder):
        make_checkpoint(folder)
    store = os.path.join(work, "store")
    if not os.path.exists(store):
        subprocess.run([options.bin[0], "put", "--store", store, folder, "--run", "gpt2", "--step", "1"], check=True, stdout=subprocess.DEVNULL)
    logical = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))

    results = {}
    with seaweed.seaweedfs(os.path.join(work, "seaweed"), (BUCKET,)) as endpoint:
        server = int(subprocess.check_output(["pgrep", "-x", "-n", "weed"]).strip())
        env = dict(os.environ, AWS_ACCESS_KEY_ID=seaweed.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=seaweed.SECRET_KEY,
                   AWS_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
                   RCLONE_CONFIG_SW_TYPE="s3", RCLONE_CONFIG_SW_PROVIDER="Other", RCLONE_CONFIG_SW_ACCESS_KEY_ID=seaweed.ACCESS_KEY,
                   RCLONE_CONFIG_SW_SECRET_ACCESS_KEY=seaweed.SECRET_KEY, RCLONE_CONFIG_SW_ENDPOINT=endpoint, RCLONE_CONFIG_SW_REGION="us-east-1")
        env.pop("AWS_CA_BUNDLE", None)  # rclone refuses an empty one
        tools = [(f"ckstore {i + 1}", binary) for i, binary in enumerate(options.bin)] + [("rclone copy", None)]
        for number in range(options.rounds):
            # Each round in another order, so that no tool always follows the same one.
            order = tools[number % len(tools):] + tools[:number % len(tools)]
            for name, binary in order:
                target = f"r{number}-{name.replace(' ', '-')}"
                if binary:
                    command = [binary, "push", "--store", store, "gpt2@1", "--remote", f"s3://{BUCKET}/{target}"]
                else:
                    command = ["rclone", "copy", "--config", "/dev/null", folder, f"sw:{BUCKET}/{target}", "--transfers", "4"]
                os.sync()
                server_before = cpu_seconds(server)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                row = {"wall": wall, "client_cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
                       "server_cpu": cpu_seconds(server) - server_before}
                results.setdefault(name, []).append(row)
                print(json.dumps({"round": number + 1, "tool": name, **row}), flush=True)

    print(f"\nGPT-2 small after one step, {logical / 2**30:.2f} GiB; medians of {options.rounds} rounds")
    print(f"{'':14s} {'wall s':>8s} {'client CPU s':>13s} {'server CPU s':>13s}")
    medians = {}
    for name, rows in results.items():
        medians[name] = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        m = medians[name]
        print(f"{name:14s} {m['wall']:8.2f} {m['client_cpu']:13.2f} {m['server_cpu']:13.2f}")
    if options.json:
        with open(options.json, "w") as out:
            json.dump({"logical_bytes": logical, "binaries": options.bin, "rounds": results, "medians": medians}, out, indent=2)
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
