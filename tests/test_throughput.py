"""The throughput features, for correctness (speed is measured by bench/, not here): group
commit under many concurrent posters, batch limits over HTTP, and a catch-up killed midway."""

import collections
import signal
import threading

import pytest

from conftest import Posters, caught_up, check_invariant, post, read_checkpoint, wait_for
from app.api import BATCH_BODY_LIMIT


def test_many_concurrent_posters_each_acked_event_is_in_data1_once(procs, state_dir):
    ingest = procs.ingest(state_dir)
    with Posters(ingest.port, threads=24) as posters:
        wait_for(lambda: len(posters.acked) >= 3000, timeout=60, what="3000 acknowledged events")
    written = collections.Counter(int(token) for token in (state_dir / "data1").read_bytes().split())
    assert all(written[i] == 1 for i in posters.acked)
    assert set(written) <= posters.sent
    assert not posters.unknown and not posters.refused


def test_batch_limits_over_http(procs, state_dir):
    ingest = procs.ingest(state_dir)
    too_many = {"batch": [{"experienceID": 1}] * 10_001}
    status, answer = post(ingest.port, too_many, path="/batch")
    assert status == 413 and "10000" in answer["error"]
    padded = {"batch": [{"experienceID": 1, "pad": "x" * BATCH_BODY_LIMIT}]}
    assert post(ingest.port, padded, path="/batch")[0] == 413
    assert post(ingest.port, {"batch": []}, path="/batch")[0] == 400
    full = {"batch": [{"experienceID": i} for i in range(10_000)]}
    assert post(ingest.port, full, path="/batch") == (202, {"accepted": 10_000})
    assert (state_dir / "data1").read_bytes().split() == [b"%d" % i for i in range(10_000)]


def test_a_batch_is_one_contiguous_write(procs, state_dir):
    """Batches posted concurrently never interleave: each lands as one contiguous run."""
    ingest = procs.ingest(state_dir)

    def poster(base):
        batch = {"batch": [{"experienceID": base + i} for i in range(500)]}
        for _ in range(5):
            assert post(ingest.port, batch, path="/batch")[0] == 202

    threads = [threading.Thread(target=poster, args=(k * 1000,)) for k in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens = [int(t) for t in (state_dir / "data1").read_bytes().split()]
    assert len(tokens) == 6 * 5 * 500
    for start in range(0, len(tokens), 500):
        run = tokens[start : start + 500]
        assert run == list(range(run[0], run[0] + 500))


@pytest.mark.slow
def test_a_worker_killed_mid_catch_up_resumes_exactly(procs, state_dir):
    # About 80 MB of backlog: more than two of the worker's 32 MiB commit windows.
    pattern = b"1 22 333 4444 55555 0 "
    repeats = 80 * 1024 * 1024 // len(pattern)
    (state_dir / "data1").write_bytes(pattern * repeats)
    size = len(pattern) * repeats

    worker = procs.worker(state_dir, interval=3600)
    partial = wait_for(
        lambda: (cp := read_checkpoint(state_dir)) and 0 < cp["offset"] < size and cp,
        timeout=120, what="a checkpoint in the middle of the catch-up",
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    check_invariant(state_dir)

    procs.worker(state_dir, interval=3600)
    wait_for(lambda: caught_up(state_dir), timeout=120, what="the catch-up to finish")
    final = check_invariant(state_dir)
    expected = {key: repeats for key in ("0", "1", "22", "333", "4444", "55555")}
    assert final["counts"] == expected
    assert partial["events"] < final["events"]  # the kill really came mid-catch-up
