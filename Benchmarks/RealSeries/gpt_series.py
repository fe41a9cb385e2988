"""A series of large real checkpoints for the many-core measurements (issue 18), and, with `--format dcp`,
the DCP series of `make compare-previous` (issue 33).

Trains a GPT-2-shaped model built from a small config (no hub access: weights start random) with AdamW
on the text of the Python files installed beside torch, and writes a checkpoint folder every `--every`
optimizer steps, as a Hugging Face Trainer would: model.safetensors, optimizer.pt (torch.save of the
optimizer's state dict), trainer_state.json and config.json. The defaults give about 1 GB per checkpoint
(86 M parameters: 344 MB of fp32 weights and 688 MB of Adam moments). With `--format dcp` each checkpoint
is what a sharded trainer writes instead: `torch.distributed.checkpoint.save` of the model's and the
optimizer's state dicts (`.metadata` and `__0_0.distcp`), saved without a process group as a world of
one, the layout of one rank's file of a larger job.

Runs on a GPU where there is one, else on the CPU (slowly; use --layers 2 there).

    python gpt_series.py OUT [--checkpoints 4] [--every 5] [--layers 8] [--width 768] [--vocab 32000] [--format hf|dcp]
"""

import argparse
import json
import os
import pathlib


def corpus_tokens(vocab, count):
    """`count` token ids from the bytes of the Python sources installed beside torch."""
    import torch
    root = pathlib.Path(torch.__file__).parent
    data = bytearray()
    for path in sorted(root.rglob("*.py")):
        data += path.read_bytes()
        if len(data) >= count * 2:
            break
    pairs = torch.frombuffer(bytes(data[: count * 2]), dtype=torch.uint8).to(torch.int64)
    return (pairs[0::2] * 256 + pairs[1::2]) % vocab


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--format", choices=["hf", "dcp"], default="hf", help="a Trainer's folder, or torch.distributed.checkpoint's")
    args = parser.parse_args()

    import torch
    from safetensors.torch import save_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = GPT2Config(vocab_size=args.vocab, n_positions=args.length, n_embd=args.width, n_layer=args.layers,
                        n_head=max(1, args.width // 64), tie_word_embeddings=True)
    model = GPT2LMHeadModel(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    tokens = corpus_tokens(args.vocab, 4 << 20).to(device)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = 0
    for _ in range(args.checkpoints):
        for _ in range(args.every):
            starts = torch.randint(0, tokens.numel() - args.length - 1, (args.batch,), device=device)
            batch = torch.stack([tokens[s : s + args.length] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        folder = out / f"checkpoint-{step}"
        if args.format == "dcp":
            import warnings
            import torch.distributed.checkpoint as dcp
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # no process group: DCP saves as a world of one
                dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint_id=str(folder))
            print(f"{folder}: loss {loss.item():.3f}", flush=True)
            continue
        folder.mkdir(exist_ok=True)
        save_model(model, str(folder / "model.safetensors"))
        torch.save(optimizer.state_dict(), folder / "optimizer.pt")
        (folder / "config.json").write_text(config.to_json_string())
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 0.0,
                                                              "log_history": [{"step": step, "loss": loss.item()}]}))
        print(f"{folder}: loss {loss.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
