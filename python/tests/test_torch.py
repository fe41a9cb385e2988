"""ckstore.torch: a plain loop's model, optimizer and scheduler round-trip exactly."""

import torch

import ckstore
import ckstore.torch as ckt


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.hidden = torch.nn.Linear(16, 32)
        self.out = torch.nn.Linear(32, 50, bias=False)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.embed(x).mean(1))))


def train(model, optimizer, scheduler, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 50, (8, 5), generator=generator)
        y = torch.randint(0, 50, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        model.steps_seen += 1
    return float(loss)


def fresh(seed=0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    return model, optimizer, scheduler


def assert_same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def test_save_and_load_round_trip_model_optimizer_and_scheduler_exactly(store):
    model, optimizer, scheduler = fresh()
    loss = train(model, optimizer, scheduler, steps=7, seed=1)
    rng = torch.get_rng_state()
    result = ckt.save(store, "plain", 7, model=model, optimizer=optimizer, scheduler=scheduler,
                      extra={"epoch": 2, "rng": rng}, metrics={"loss": loss})
    assert isinstance(result, ckstore.PutResult) and result.step == 7
    assert store.ls("plain")[0].metrics["loss"] == loss

    other_model, other_optimizer, other_scheduler = fresh(seed=99)
    extra = ckt.load(store, "plain@latest-valid", model=other_model, optimizer=other_optimizer, scheduler=other_scheduler)
    assert_same_state(model.state_dict(), other_model.state_dict())
    assert_same_state(optimizer.state_dict(), other_optimizer.state_dict())
    assert_same_state(scheduler.state_dict(), other_scheduler.state_dict())
    assert extra["epoch"] == 2 and torch.equal(extra["rng"], rng)

    # Training on from both gives the same weights, bit for bit.
    train(model, optimizer, scheduler, steps=4, seed=2)
    train(other_model, other_optimizer, other_scheduler, steps=4, seed=2)
    assert_same_state(model.state_dict(), other_model.state_dict())


def test_a_second_save_stores_only_what_changed(store):
    model, optimizer, scheduler = fresh()
    train(model, optimizer, scheduler, steps=2, seed=1)
    first = ckt.save(store, "dedup", 2, model=model, optimizer=optimizer)
    model.embed.weight.requires_grad_(False)  # a frozen embedding is stored once
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train(model, optimizer, scheduler, steps=2, seed=3)
    second = ckt.save(store, "dedup", 4, model=model, optimizer=optimizer)
    assert second.stored_bytes_added < first.stored_bytes_added


def test_load_of_a_missing_checkpoint_raises(store):
    import pytest

    model, _, _ = fresh()
    with pytest.raises(ckstore.CheckpointNotFound):
        ckt.load(store, "none@latest", model=model)


def test_load_latest_valid_resumes_from_the_newer_remote_checkpoint_of_another_machine(tmp_path):
    """Machine A saves steps 1 and 2 and pushes; machine B continues to step 3 and pushes; A, with its
    older store, loads RUN@latest-valid with the remote and gets step 3, exactly as B saved it."""
    remote = "file://" + str(tmp_path / "remote")
    a = ckstore.Store(str(tmp_path / "a"), create=True)
    model, optimizer, scheduler = fresh()
    for step in (1, 2):
        train(model, optimizer, scheduler, 2, seed=step)
        ckt.save(a, "r", step, model, optimizer, scheduler, push=remote)

    b = ckstore.Store(str(tmp_path / "b"), create=True)
    model_b, optimizer_b, scheduler_b = fresh(seed=5)
    ckt.load(b, "r@latest-valid", model_b, optimizer_b, scheduler_b, remote=remote)
    assert_same_state(model_b.state_dict(), model.state_dict())
    train(model_b, optimizer_b, scheduler_b, 2, seed=3)
    ckt.save(b, "r", 3, model_b, optimizer_b, scheduler_b, extra={"step": 3}, push=remote)

    model_a, optimizer_a, scheduler_a = fresh(seed=7)
    extra = ckt.load(a, "r@latest-valid", model_a, optimizer_a, scheduler_a, remote=remote)
    assert extra == {"step": 3}
    assert_same_state(model_a.state_dict(), model_b.state_dict())
    assert_same_state(optimizer_a.state_dict(), optimizer_b.state_dict())
    assert_same_state(scheduler_a.state_dict(), scheduler_b.state_dict())
    assert [c.step for c in a.ls("r")] == [1, 2, 3]
    # Without the remote, A's own newest.
    ckt.load(a, "r@latest-valid", model_a)
