"""What CKStoreCallback adds to a Hugging Face Trainer run, measured by hand (issue 16).

Trains the same small GPT-2 (built from a config, nothing from a hub) on generated tokens several times,
side by side, saving every --save-steps:
  - trainer:      Trainer's own saves, save_total_limit=K (what people do today);
  - trainer+ckstore: the same saves, plus CKStoreCallback putting each one (keep_local=1, policy keep_last=K);
and reports the median wall time of each and the disk bytes left after the run: the output folder for
the first, the store plus the one local folder for the second, and both again when every checkpoint is
kept (save_total_limit=None, no policy).

usage: python hf_save_overhead.py [--layers 4] [--width 256] [--steps 60] [--save-steps 10] [--keep 2] [--repeats 3]
Run with the project's .venv (make venv) and CKSTORE_BIN pointing at a release build.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import ckstore
import ckstore.hf


class Tokens(torch.utils.data.Dataset):
    def __init__(self, count, length, vocab):
        self.rows = torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def folder_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def run(options, work, with_store, keep):
    output_dir = os.path.join(work, "out")
    config = GPT2Config(n_layer=options.layers, n_embd=options.width, n_head=4, vocab_size=2048, n_positions=64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(output_dir=output_dir, max_steps=options.steps, per_device_train_batch_size=8, save_strategy="steps",
                             save_steps=options.save_steps, save_total_limit=None if with_store else keep, logging_steps=5,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    callbacks = []
    store = None
    if with_store:
        store = ckstore.Store(os.path.join(work, "store"), create=True)
        if keep:
            store.set_policy("bench", keep_last=keep)
        callbacks.append(ckstore.hf.CKStoreCallback(store, "bench", keep_local=1))
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(512, 64, 2048), callbacks=callbacks)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    disk = folder_bytes(output_dir) + (folder_bytes(store.path) if store else 0)
    return seconds, disk


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    binary = os.environ.get("CKSTORE_BIN") or shutil.which("ckstore")
    print(f"ckstore {subprocess.run([binary, '--version'], capture_output=True, text=True).stdout.strip()} at {binary}; torch {torch.__version__}; "
          f"{os.cpu_count()} cores; GPT-2 {options.layers} layers × {options.width}, {options.steps} steps, a save every {options.save_steps}")
    results = {}
    for repeat in range(options.repeats):
        for label, with_store, keep in [("trainer", False, options.keep), ("trainer+ckstore", True, options.keep),
                                        ("trainer, keep all", False, None), ("trainer+ckstore, keep all", True, None)]:
            work = tempfile.mkdtemp(prefix="ckstore-hf-bench-")
            try:
                seconds, disk = run(options, work, with_store, keep)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            results.setdefault(label, []).append((seconds, disk))
            print(f"  run {repeat + 1}: {label}: {seconds:.2f} s, {disk / 1e6:.1f} MB on disk", flush=True)
    print()
    print("| run | median wall time (s) | disk after the run (MB) |")
    print("| --- | --- | --- |")
    for label, values in results.items():
        print(f"| {label} | {statistics.median(v[0] for v in values):.2f} | {statistics.median(v[1] for v in values) / 1e6:.1f} |")
    base = statistics.median(v[0] for v in results["trainer"])
    added = statistics.median(v[0] for v in results["trainer+ckstore"]) - base
    print(f"\nsaving into ckstore added {added:.2f} s to a {base:.2f} s run ({added / base * 100:.1f}%), "
          f"{added / (options.steps // options.save_steps):.3f} s per save")


if __name__ == "__main__":
    main()
