"""A Hugging Face Trainer run whose checkpoints go into ckstore (a tiny GPT-2 built from a config).

    python hf_trainer.py STORE OUTPUT_DIR [MAX_STEPS]   # run it again with more steps: it resumes
"""
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import ckstore
import ckstore.hf


class Tokens(torch.utils.data.Dataset):
    def __init__(self):
        self.rows = torch.randint(0, 128, (64, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


store = ckstore.Store(sys.argv[1], create=True)
store.set_policy("gpt2-example", keep_last=2)          # replaces save_total_limit
args = TrainingArguments(output_dir=sys.argv[2], max_steps=int(sys.argv[3]) if len(sys.argv) > 3 else 8, save_steps=2,
                         per_device_train_batch_size=8, use_cpu=True, report_to=[], disable_tqdm=True)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32))
trainer = Trainer(model=model, args=args, train_dataset=Tokens(),
                  callbacks=[ckstore.hf.CKStoreCallback(store, "gpt2-example", keep_local=1)])
path = ckstore.hf.resume(args, store, "gpt2-example")      # None on the first run
print(f"resuming from {path}")
trainer.train(resume_from_checkpoint=path)
print("stored steps:", [c.step for c in store.ls("gpt2-example")])
