"""Power loss on the SDK path: the real log writer and worker, in this process, on a disk
that keeps only what was synced (tests/power_loss.py), with the power failing at every kind
of step: before or after each write and sync of data1, data1.details and the time index, by
the ingest's sync thread, its request path, or the worker syncing data1 before a commit.

SDK devices resend whatever was not answered, as Judo's SDKs do, across every power loss.
After the last one, and the resends, every event sent is stored and counted exactly once:
in data2, in data1.details and in the overview. A minimal event (no id to dedupe by) is
counted if it was answered, and at most once."""

import collections
import datetime
import json
import os
import random
import sqlite3
import threading

import pytest

from app.validate import parse_batch
from bench.sdk_shapes import IosDevice
from power_loss import Disk, PowerLost
from reference import check_invariant, read_checkpoint
from storage.log import details
from storage.log.format import encode
from storage.log.writer import EventLog
from worker.runner import Worker

T0 = 1_800_000_000
MINIMAL = 777  # the experience of the minimal events; the SDK's are 1 to 5
CHUNK = 20  # the SDKs' flushAt


class Device:
    """An SDK install: a queue of events, one request in flight at a time, and a resend of
    every event not answered 2xx."""

    def __init__(self, rng):
        self.shape, self.rng = IosDevice(), rng
        self.queue = []  # raw events, oldest first
        self.made = []  # every event it ever made
        self.in_flight = None  # the events of the request not yet answered

    def view(self, moment):
        event = self.shape.screen(moment, self.rng.randint(1, 5))
        self.queue.append(event)
        self.made.append(event)

    def chunk(self):
        self.in_flight = self.queue[:CHUNK]
        return self.in_flight

    def answered(self, chunk):
        sent = {event["id"] for event in chunk}
        self.queue = [event for event in self.queue if event["id"] not in sent]
        self.in_flight = None


class Engine:
    """The ingest's log and a worker on one state folder, driven one action at a time."""

    def __init__(self, folder, now):
        self.folder, self.now = folder, now
        self.log = EventLog(folder / "data1", time_index=folder / "data1.timeindex",
                            details=folder / "data1.details", seen=folder / "data1.seen",
                            clock=lambda: self.now)
        self.worker = Worker(folder)
        self.worker.recover()
        self.requests = []  # (ticket, what answers it)

    def send(self, device):
        chunk = device.chunk()
        events = parse_batch(json.dumps({"batch": chunk}).encode(), self.now).events
        self.log.append_events([], events, self.now, hold=lambda ticket: self.requests.append(
            (ticket, lambda: device.answered(chunk))))

    def post(self, answered):
        self.log.append(encode([MINIMAL]), hold=lambda ticket: self.requests.append(
            (ticket, answered)))

    def settle(self):
        """Answer every request whose sync is done, as the server sends its held answer."""
        waiting = []
        for ticket, answer in self.requests:
            if ticket.durable():
                answer()
            else:
                waiting.append((ticket, answer))
        self.requests = waiting

    def abandon(self):
        """The power is gone: nothing of this process runs on (its threads write to a folder
        no longer looked at)."""
        self.worker.close()


def run_until_power_fails(disk, folder, now, devices, minimal, rng):
    """Start the engine on `folder` (recovering what the last power loss left), then random
    traffic, worker passes and resends until the power fails. Returns the clock."""
    engine = None
    try:
        with disk.lock:
            engine = Engine(folder, now)  # the power may fail during recovery, too
            disk.quiet.append(engine.log._seen._lock)
            disk.on_power_loss = engine.settle  # the answers sent before the power failed
        for _ in range(400):
            with disk.lock:
                if disk.image is not None:
                    break
                engine.now += rng.choice([0, 0, 1, 7])
                action = rng.random()
                device = rng.choice(devices)
                if action < 0.45:
                    device.view(datetime.datetime.fromtimestamp(engine.now,
                                                                datetime.timezone.utc))
                elif action < 0.8:
                    if device.in_flight is None and device.queue:
                        engine.send(device)
                elif action < 0.9:
                    minimal["sent"] += 1
                    engine.post(lambda: minimal.__setitem__("answered", minimal["answered"] + 1))
                else:
                    engine.worker.run_pass()
                engine.settle()
        disk.fail_now()
    except PowerLost:
        pass
    disk.on_power_loss = None
    for device in devices:
        device.in_flight = None  # never answered: sent again after the restart
    if engine is None:
        return now
    engine.abandon()
    return engine.now


@pytest.mark.parametrize("seed", range(6))
def test_power_loss_at_any_write_or_sync_counts_every_sdk_event_once(
        tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    disk = Disk(rng)
    disk.install(monkeypatch)
    devices = [Device(rng) for _ in range(4)]
    minimal = {"sent": 0, "answered": 0}
    now = T0
    folder = tmp_path / "state0"
    folder.mkdir()
    for loss in range(1, 9):
        disk.start(folder, fail_at=rng.randint(1, 120), after=rng.random() < 0.5)
        now = run_until_power_fails(disk, folder, now, devices, minimal, rng)
        folder = tmp_path / f"state{loss}"
        disk.restore(folder)
    disk.start(folder, fail_at=0, after=False)  # the power stays on from here
    engine = Engine(folder, now)
    while any(device.queue for device in devices):
        for device in devices:
            if device.queue:
                engine.send(device)
        engine.log.sync()
        engine.settle()
    engine.log.sync()
    engine.settle()
    engine.worker.run_pass()
    engine.log.close()
    engine.worker.close()

    sent = [event for device in devices for event in device.made]
    expected = collections.Counter(int(event["properties"]["experienceID"]) for event in sent)
    counts = {int(k): v for k, v in read_checkpoint(folder)["counts"].items()}
    assert minimal["answered"] <= counts.pop(MINIMAL, 0) <= minimal["sent"]
    assert counts == dict(expected)
    check_invariant(folder)
    with open(folder / "data1.details", "rb") as file:
        stored = collections.Counter(item["event"]["id"] for group in
                                     details.read_groups(file.fileno())
                                     for item in group.events()[1])
    assert stored == collections.Counter(event["id"] for event in sent)
    with sqlite3.connect(folder / "overview.sqlite3") as db:
        views = dict(db.execute("SELECT experience, sum(views) FROM experience_hour "
                                "GROUP BY experience").fetchall())
    assert views == dict(expected)


class _KeepOnlySynced:
    """A power loss's choices that keep nothing written since the last sync."""

    def choice(self, lengths):
        return lengths[0]  # the synced length

    def randint(self, low, high):
        return low

    def random(self):
        return 1.0  # never the page as written


def test_a_sync_that_ends_after_the_power_failed_syncs_nothing_of_the_next_folder(
        tmp_path, monkeypatch):
    """A thread of an engine whose power failed can still be inside an fdatasync when the
    test restores the image and starts the next engine. What that thread does when its call
    returns must not count as a sync of the next folder: the model would then keep bytes
    the next engine never synced, and a test would blame the engine for the harness."""
    syncing, returning = threading.Event(), threading.Event()
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd):
        syncing.set()
        returning.wait()
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    disk = Disk(_KeepOnlySynced())
    disk.install(monkeypatch)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    disk.start(first, fail_at=1000, after=False)
    old = os.open(first / "data1", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(old, b"1 ")
    syncer = threading.Thread(target=os.fdatasync, args=(old,), daemon=True)
    syncer.start()
    assert syncing.wait(timeout=30)
    disk.fail_now()
    disk.restore(second)
    disk.start(second, fail_at=1000, after=False)
    new = os.open(second / "data1", os.O_WRONLY | os.O_APPEND)
    os.write(new, b"2 ")  # never synced
    returning.set()
    disk._parked.set()  # the stale thread may park: let it end, to join it
    syncer.join(timeout=30)
    assert not syncer.is_alive()
    disk.fail_now()
    os.close(old)
    os.close(new)
    assert disk.image["data1"] == b""


def _sdk_events(count, experience):
    device = IosDevice()
    moment = datetime.datetime.fromtimestamp(T0, datetime.timezone.utc)
    body = {"batch": [device.screen(moment, experience) for _ in range(count)]}
    return parse_batch(json.dumps(body).encode(), T0).events


def _open_log(folder):
    return EventLog(folder / "data1", details=folder / "data1.details",
                    seen=folder / "data1.seen", clock=lambda: T0)


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_power_loss_during_recovery_leaves_no_data1_bytes_without_their_details(
        tmp_path, monkeypatch, fail_at, after):
    """Opening the log cuts data1 and data1.details back after a group whose data1 bytes a
    power loss took in part. The power may fail again between those two cuts; whatever it
    keeps, the next opening leaves no data1 byte of a group it removed: such bytes would
    read as minimal events, counted, and counted again when the resend is stored."""
    folder = tmp_path / "state"
    folder.mkdir()
    log = _open_log(folder)
    for experience in (1, 2, 3):
        log.append_events([], _sdk_events(4, experience), T0)
    log.close()
    with open(folder / "data1", "r+b") as data1:  # b"... 3 3 3 3 " lost its last 3 bytes
        data1.truncate(data1.seek(0, os.SEEK_END) - 3)
    disk = Disk(_KeepOnlySynced())
    disk.install(monkeypatch)
    disk.start(folder, fail_at=fail_at, after=after)
    try:
        with disk.lock:
            _open_log(folder).close()
        disk.fail_now()
    except PowerLost:
        pass
    disk.restore(tmp_path / "after")
    disk.start(tmp_path / "after", fail_at=0, after=False)  # the power stays on
    log = _open_log(tmp_path / "after")
    log.close()
    with open(tmp_path / "after" / "data1.details", "rb") as file:
        ends = [group.data1_end for group in details.read_groups(file.fileno())]
    assert (tmp_path / "after" / "data1").read_bytes() == b"1 1 1 1 2 2 2 2 "
    assert ends == [8, 16]
