"""app/liveness.py: the worker's state as the ingest sees it, with an injected clock."""

import fcntl
import os

import pytest

from clocks import Clock
from app import liveness
from app.liveness import RUNNING, STALLED, STOPPED, WorkerWatch



@pytest.fixture
def held_lock(tmp_path):
    """A worker.lock held as a live worker holds it."""
    path = tmp_path / "worker.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield path
    os.close(fd)


def test_no_lock_holder_is_stopped(tmp_path):
    watch = WorkerWatch(tmp_path / "worker.lock", stalled_after=30)
    assert watch.state(0, 0)[0] == STOPPED
    (tmp_path / "worker.lock").touch()  # left by a worker that died: nobody holds it
    state, reason = watch.state(0, 0)
    assert state == STOPPED and "worker.lock" in reason


def test_idle_is_running_however_old_the_checkpoint(held_lock):
    clock = Clock()
    watch = WorkerWatch(held_lock, stalled_after=30, clock=clock)
    clock.now += 10_000
    assert watch.state(counted_offset=500, data1_size=500) == (RUNNING, None)


def test_an_event_waiting_too_long_is_stalled(held_lock):
    clock = Clock()
    watch = WorkerWatch(held_lock, stalled_after=30, clock=clock)
    clock.now += 100
    watch.appended(500)  # an event at offset 500, 100 s after the ingest started
    clock.now += 29
    assert watch.state(counted_offset=500, data1_size=502)[0] == RUNNING
    clock.now += 2
    state, reason = watch.state(counted_offset=500, data1_size=502)
    assert state == STALLED and "31 s" in reason
    assert watch.state(counted_offset=502, data1_size=502)[0] == RUNNING  # counted now


def test_bytes_from_before_the_start_are_dated_to_the_start(held_lock):
    clock = Clock()
    watch = WorkerWatch(held_lock, stalled_after=30, clock=clock)
    clock.now += 5
    assert watch.waiting_seconds(counted_offset=0, data1_size=1000) == 5


def test_one_entry_a_second_dates_each_byte_within_a_second(held_lock):
    clock = Clock()
    watch = WorkerWatch(held_lock, stalled_after=30, clock=clock)
    for offset in range(10, 100, 10):  # an append every 0.25 s
        clock.now += 0.25
        watch.appended(offset)
    assert len(watch._offsets) <= 4  # the start's entry and at most one a second
    clock.now += 10
    # The oldest uncounted byte, at offset 55, was appended about 11.1 s ago.
    assert 10.0 <= watch.waiting_seconds(counted_offset=55, data1_size=100) <= 12.25


def test_the_index_stays_bounded(held_lock, monkeypatch):
    monkeypatch.setattr(liveness, "MAX_ENTRIES", 100)
    clock = Clock()
    watch = WorkerWatch(held_lock, stalled_after=30, clock=clock)
    for offset in range(1, 1000):
        clock.now += 1
        watch.appended(offset)
    assert len(watch._offsets) <= 100
