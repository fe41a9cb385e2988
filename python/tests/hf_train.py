"""A tiny GPT-2 trained by the real Hugging Face Trainer with CKStoreCallback; run as a subprocess by
test_hf.py so that it can be killed with SIGKILL.

usage: hf_train.py OUTPUT_DIR STORE RUN MAX_STEPS KILL_AT_STEP(0: never) RESUME(0|1)

Deterministic on the CPU: ``full_determinism=True`` (transformers' ``enable_full_determinism``: seeds,
``torch.use_deterministic_algorithms``), ``use_cpu=True``, ``dataloader_num_workers=0``, fixed ``seed`` and
``data_seed``, and no dropout. Trainer restores the RNG states and the data position from the checkpoint.
"""

import hashlib
import os
import signal
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

import ckstore
import ckstore.hf


class Tokens(torch.utils.data.Dataset):
    def __init__(self, count=96, length=16, vocab=128):
        generator = torch.Generator().manual_seed(1234)
        self.rows = torch.randint(0, vocab, (count, length), generator=generator)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


class KillBeforeStoring(TrainerCallback):
    """SIGKILLs the process in on_save of one step, before CKStoreCallback runs: Trainer's folder is
    complete, the store does not have it yet (as after a crash, or Trainer's JIT checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            print(f"killing at step {self.step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class SlowSteps(TrainerCallback):
    """Each step takes a while, as a real one does, so that a notice comes in the middle of training."""

    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_begin(self, args, state, control, **kwargs):
        import time
        time.sleep(self.seconds)


def weights_digest(model):
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main():
    output_dir, store_path, run, max_steps, kill_at, resume = sys.argv[1:7]
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=output_dir, max_steps=int(max_steps), per_device_train_batch_size=8, learning_rate=1e-3,
        save_strategy="steps", save_steps=2, logging_steps=1, report_to=[], use_cpu=True, seed=0, data_seed=0,
        full_determinism=True, dataloader_num_workers=0, disable_tqdm=True,
    )
    # A remote (CKSTORE_TEST_REMOTE, with CKSTORE_TEST_ENDPOINT for S3) receives every checkpoint, and a
    # fresh machine resumes from it.
    remote = os.environ.get("CKSTORE_TEST_REMOTE")
    store = ckstore.Store(store_path, endpoint=os.environ.get("CKSTORE_TEST_ENDPOINT"))
    # With CKSTORE_TEST_PREEMPTION, the callback watches for notices (the endpoints come from the
    # environment, as on a cloud) and each step takes CKSTORE_TEST_STEP_SECONDS.
    preempt = None
    if os.environ.get("CKSTORE_TEST_PREEMPTION"):
        from ckstore import preemption
        preempt = preemption.Watcher(poll=float(os.environ["CKSTORE_TEST_PREEMPTION"])).start()
    callbacks = ([KillBeforeStoring(int(kill_at))] if int(kill_at) else [])
    # CKSTORE_TEST_NO_CALLBACK: a trainer that only writes its folders (`ckstore watch` stores them).
    if not os.environ.get("CKSTORE_TEST_NO_CALLBACK"):
        callbacks.append(ckstore.hf.CKStoreCallback(store, run, keep_local=1, push=remote, preemption=preempt or False))
    if os.environ.get("CKSTORE_TEST_STEP_SECONDS"):
        callbacks.append(SlowSteps(float(os.environ["CKSTORE_TEST_STEP_SECONDS"])))
    trainer = Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=callbacks)
    path = ckstore.hf.resume(args, store, run, remote=remote) if resume == "1" else None
    print(f"resuming from {path}", flush=True)
    trainer.train(resume_from_checkpoint=path)
    print(f"final-weights-sha256: {weights_digest(trainer.model)}", flush=True)
    print(f"final-step: {trainer.state.global_step}", flush=True)


if __name__ == "__main__":
    main()
