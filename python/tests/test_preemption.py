"""ckstore.preemption against notice servers that speak EC2's, GCP's and Azure's documented protocols,
and SIGTERM; and the plain-loop helper."""

import os
import signal
import time

import pytest

import ckstore
from ckstore import preemption
from notice_server import NoticeServer


@pytest.mark.parametrize("cloud", ["ec2", "gcp", "azure"])
def test_each_cloud_s_notice_is_seen_within_one_poll(cloud):
    server = NoticeServer(after=1.0)
    poll = 0.5
    watcher = preemption.Watcher(poll=poll, signals=(), env=server.environment(cloud)).start()
    try:
        assert watcher.clouds == [cloud]
        assert not watcher.requested()
        deadline = time.time() + 10
        while not watcher.requested() and time.time() < deadline:
            time.sleep(0.05)
        assert watcher.requested(), f"{cloud}: no notice seen"
        notice = watcher.notice
        # Seen within one poll of its appearance (plus a request's time); GCP's long poll at once.
        assert notice.seen_at - server.appeared_at <= poll + 0.5, (notice.seen_at, server.appeared_at)
        expected_left = {"ec2": 120, "gcp": 30, "azure": 30}[cloud]
        assert notice.deadline is not None and abs(notice.deadline - (server.appeared_at + expected_left)) < 2
        assert server.unauthorized == 0
        message = preemption.durable_message("r", 7, "s3://b/p", notice)
        assert message.startswith("checkpoint r@7 durable on s3://b/p, ") and "before the deadline" in message
    finally:
        watcher.stop()
        server.close()


def test_off_cloud_nothing_answers_and_detection_is_quick():
    # Nothing listens on these ports: every cloud is found absent, and nothing is watched.
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "GCE_METADATA_HOST": "127.0.0.1:9",
           "CKSTORE_AZURE_METADATA_ENDPOINT": "http://127.0.0.1:9"}
    watcher = preemption.Watcher(signals=(), env=env).start()
    try:
        assert watcher.clouds == [] and not watcher.requested()
    finally:
        watcher.stop()
    disabled = preemption.Watcher(signals=(), env={"AWS_EC2_METADATA_DISABLED": "true", "CKSTORE_PREEMPTION_CLOUDS": "ec2"}).start()
    assert disabled.clouds == []
    disabled.stop()


def test_sigterm_is_a_notice_everywhere():
    watcher = preemption.Watcher(clouds=[], signals=(signal.SIGTERM,)).start()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.time() + 5
        while not watcher.requested() and time.time() < deadline:
            time.sleep(0.01)
        assert watcher.requested() and watcher.notice.source == "SIGTERM"
    finally:
        watcher.stop()


def test_a_plain_loop_saves_pushes_and_stops_at_the_first_step_after_the_notice(tmp_path):
    import torch

    import ckstore.torch as ckt

    server = NoticeServer()
    watcher = preemption.Watcher(poll=0.2, signals=(), env=server.environment("ec2")).start()
    store = ckstore.Store(str(tmp_path / "store"), create=True)
    remote = "file://" + str(tmp_path / "remote")
    model = torch.nn.Linear(4, 4)
    seen_at_step = None
    try:
        for step in range(1, 200):
            with torch.no_grad():
                model.weight += 0.01
            if step == 5:
                server.announce()
            if watcher.requested() and seen_at_step is None:
                seen_at_step = step
            if ckt.save_if_preempted(store, "loop", step, model, push=remote, watcher=watcher):
                break
            time.sleep(0.05)
        assert seen_at_step is not None and step == seen_at_step
        assert step < 199
        viewer = ckstore.Store(str(tmp_path / "viewer"), create=True)
        assert [c.step for c in viewer.ls(remote=remote)] == [step]
    finally:
        watcher.stop()
        server.close()
