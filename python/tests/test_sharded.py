"""Sharded checkpoints from two real processes (`torchrun --nproc-per-node 2`, gloo on CPU, FSDP): each
rank saves its part with torch.distributed.checkpoint through ``ckstore.torch.save_sharded`` into its own
store and pushes it to SeaweedFS; a checkpoint exists on the remote only once both shards are there."""

import os
import re
import subprocess
import sys

import pytest

import ckstore

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "dcp_train.py")
RUN = "dcp-job"


def torchrun(nproc, *args, env):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", SCRIPT, *args],
                          capture_output=True, text=True, env=env, timeout=900)


def weights(path):
    import torch

    return torch.load(path, weights_only=True)


def test_a_rank_killed_before_its_push_leaves_its_step_pending_and_the_job_resumes_with_two_or_one_ranks(tmp_path, seaweedfs):
    import torch

    env = dict(os.environ)
    env.update({"AWS_ACCESS_KEY_ID": "ckstoretest", "AWS_SECRET_ACCESS_KEY": "ckstoretest-secret-key", "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": seaweedfs, "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.path.join(os.path.dirname(HERE), "src") + os.pathsep + env.get("PYTHONPATH", "")})
    remote = "s3://dcp-spot/job"

    # The uninterrupted run, to compare with.
    full = torchrun(2, "--stores", str(tmp_path / "full"), "--remote", "s3://dcp-spot/full", "--out", str(tmp_path / "full.pt"), env=env)
    assert full.returncode == 0, full.stdout + full.stderr

    # Rank 1 is killed at step 4 after its local put, before its push; rank 0 pushed its shard.
    killed = torchrun(2, "--stores", str(tmp_path / "killed"), "--remote", remote, "--kill-rank", "1", "--kill-step", "4",
                      "--out", str(tmp_path / "killed.pt"), env=env)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    viewer = ckstore.Store(str(tmp_path / "viewer"), endpoint=seaweedfs, env=env)
    assert [c.step for c in viewer.ls(RUN, remote=remote)] == [2]
    assert [(p.step, p.shard_count, p.missing) for p in viewer.pending(RUN, remote=remote)] == [(4, 2, [1])]
    # Rank 1's own store committed its shard of step 4, pending there (it never had rank 0's).
    assert [(p.step, p.missing) for p in ckstore.Store(str(tmp_path / "killed" / "rank1")).pending(RUN)] == [(2, [0]), (4, [0])]

    # Fresh machines with one rank: DCP reshards the two ranks' checkpoint on load. It pushes elsewhere:
    # its one-shard checkpoints are not the two-shard ones.
    one = torchrun(1, "--stores", str(tmp_path / "fresh1"), "--remote", "s3://dcp-spot/one", "--resume-from", remote, "--resume",
                   "--out", str(tmp_path / "one.pt"), env=env)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "resumed from step 2" in one.stdout

    # Fresh machines with two ranks, from RUN@latest-valid (step 2: step 4 is pending).
    two = torchrun(2, "--stores", str(tmp_path / "fresh2"), "--remote", remote, "--resume", "--out", str(tmp_path / "two.pt"), env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("resumed from step 2") == 2
    # Each rank fetched from the remote only what its load plan reads (.metadata and its own data file):
    # a whole pull would have recorded step 2 as a checkpoint of its store.
    for rank in (0, 1):
        assert ckstore.Store(str(tmp_path / "fresh2" / f"rank{rank}"), env=env).ls(RUN) == []
    expected, resumed, single = weights(tmp_path / "full.pt"), weights(tmp_path / "two.pt"), weights(tmp_path / "one.pt")
    assert expected.keys() == resumed.keys() == single.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
        assert torch.equal(expected[name], single[name]), (name, (expected[name] - single[name]).abs().max())

    # The resumed job's step 4 completed the pending checkpoint (same training, same bytes); the remote
    # now holds every step, each restorable whole, and show names the DCP items of both ranks.
    assert [c.step for c in viewer.ls(RUN, remote=remote)] == [2, 4, 6]
    assert viewer.pending(RUN, remote=remote) == []
    viewer.get(f"{RUN}@latest-valid", str(tmp_path / "restored"), remote=remote)
    assert sorted(os.listdir(tmp_path / "restored")) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    shown = viewer.show(f"{RUN}@6")
    names = {tensor["name"] for entry in shown["files"] for tensor in entry.get("tensors") or []}
    assert {"model.0.weight", "model.2.weight", "model.4.weight"} <= names, names
    # FSDP shards every parameter over the ranks: rank 1's items are named with their offsets.
    assert any(re.fullmatch(r"model\.2\.weight\[\d+,0\]", name) for name in names), names
    assert shown["shard_count"] == 2
    assert viewer.verify(remote=remote, full=True)["ok"]
