"""The README's Python examples (python/examples) run as written, and resume when run again."""

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run(script, *args, cwd):
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_plain_torch_example(tmp_path):
    first = run("plain_torch.py", tmp_path / "store", 20, cwd=tmp_path)
    assert "step 20" in first and "resumed" not in first
    assert "resumed at step 20" in run("plain_torch.py", tmp_path / "store", 20, cwd=tmp_path)


def test_hf_trainer_example(tmp_path):
    assert "resuming from None" in run("hf_trainer.py", tmp_path / "store", tmp_path / "out", 4, cwd=tmp_path)
    second = run("hf_trainer.py", tmp_path / "store", tmp_path / "out", 8, cwd=tmp_path)
    assert f"resuming from {tmp_path / 'out' / 'checkpoint-4'}" in second and "stored steps: [6, 8]" in second


def test_lightning_example(tmp_path):
    assert "stored steps:" in run("lightning_fit.py", tmp_path / "store", 2, cwd=tmp_path)
    assert "stored steps:" in run("lightning_fit.py", tmp_path / "store", 4, cwd=tmp_path)
