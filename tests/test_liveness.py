"""app/liveness.py: the worker's state as the ingest sees it, with an injected clock and a
time index written as the ingest writes it."""

import fcntl
import os

import pytest

from app.liveness import RUNNING, STALLED, STOPPED, WorkerWatch
from clocks import Clock
from storage.log.time_index import ENTRY


@pytest.fixture
def held_lock(tmp_path):
    """A worker.lock held as a live worker holds it."""
    path = tmp_path / "worker.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield path
    os.close(fd)


def watch(tmp_path, lock, entries, clock):
    index = tmp_path / "data1.timeindex"
    index.write_bytes(b"".join(ENTRY.pack(second, offset) for second, offset in entries))
    return WorkerWatch(lock, index, stalled_after=30, clock=clock)


def test_no_lock_holder_is_stopped(tmp_path):
    lock = tmp_path / "worker.lock"
    assert watch(tmp_path, lock, [], Clock()).state(0, 0)[0] == STOPPED
    lock.touch()  # left by a worker that died: nobody holds it
    state, reason = watch(tmp_path, lock, [], Clock()).state(0, 0)
    assert state == STOPPED and reason.startswith("no worker is running")


def test_idle_is_running_however_old_the_checkpoint(tmp_path, held_lock):
    clock = Clock(1000)
    watcher = watch(tmp_path, held_lock, [(1000, 0)], clock)
    clock.now += 10_000
    assert watcher.state(counted_offset=500, data1_size=500) == (RUNNING, None)


def test_an_event_waiting_too_long_is_stalled(tmp_path, held_lock):
    clock = Clock(1100)
    watcher = watch(tmp_path, held_lock, [(1000, 0), (1100, 500)], clock)  # one at 500, at 1100
    clock.now += 29
    assert watcher.state(counted_offset=500, data1_size=502)[0] == RUNNING
    clock.now += 2
    state, reason = watcher.state(counted_offset=500, data1_size=502)
    assert state == STALLED and "31 s" in reason
    assert watcher.state(counted_offset=502, data1_size=502)[0] == RUNNING  # counted now


def test_the_oldest_uncounted_event_dates_the_wait(tmp_path, held_lock):
    clock = Clock(2000)
    watcher = watch(tmp_path, held_lock, [(1000, 0), (1500, 40), (1990, 80)], clock)
    assert watcher.waiting_seconds(counted_offset=55, data1_size=100) == 500
    assert watcher.waiting_seconds(counted_offset=80, data1_size=100) == 10


def test_without_a_time_index_nothing_is_called_stalled(tmp_path, held_lock):
    watcher = WorkerWatch(held_lock, tmp_path / "missing", stalled_after=30, clock=Clock())
    assert watcher.state(counted_offset=0, data1_size=100) == (RUNNING, None)
