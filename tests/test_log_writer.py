"""storage/log/writer.py, the writer of data1: torn-tail repair, concurrent appends, group
commit, undo of failed writes, and fsync failure being fatal. Faults are injected by patching os functions in-process."""

import errno
import os
import threading
import time

import pytest

from http_client import wait_for
from storage.backend import AppendError
from storage.log import writer as eventlog
from storage.log.format import encode
from storage.log.writer import EventLog


@pytest.mark.parametrize(
    "before, after",
    [
        (b"", b""),
        (b"1 2 ", b"1 2 "),
        (b"1 2 3", b"1 2 "),
        (b"1 2\n33", b"1 2\n"),
        (b"1 2 \x00\x00\x00", b"1 2 "),  # NULs left by a power loss
        (b"123", b""),
        (b"\x00" * 100_000, b""),
        (b"4 " + b"9" * 200_000, b"4 "),  # a torn tail longer than one scan block
    ],
)
def test_opening_removes_a_torn_tail(tmp_path, caplog, before, after):
    path = tmp_path / "data1"
    path.write_bytes(before)
    log = EventLog(path)
    log.close()
    assert path.read_bytes() == after
    assert ("torn tail" in caplog.text) == (before != after)


def test_append_after_repair_starts_a_clean_record(tmp_path):
    path = tmp_path / "data1"
    path.write_bytes(b"1 2 3")
    log = EventLog(path)
    log.append(encode([45]))
    log.close()
    assert path.read_bytes() == b"1 2 45 "


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "data1"
    log = EventLog(path)
    threads, per_thread = 8, 300

    def poster(base):
        for i in range(per_thread):
            log.append(encode([base * 1_000_000 + i]))

    in_threads(poster, threads)
    log.close()
    written = [int(token) for token in path.read_bytes().split()]
    expected = [(t + 1) * 1_000_000 + i for t in range(threads) for i in range(per_thread)]
    assert sorted(written) == expected


def in_threads(poster, count):
    """poster(1) ... poster(count), each on a thread of its own; return once all are done."""
    workers = [threading.Thread(target=poster, args=(t + 1,)) for t in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def test_group_commit_acknowledges_only_synced_bytes_and_shares_syncs(tmp_path, monkeypatch):
    path = tmp_path / "data1"
    log = EventLog(path)
    real_fdatasync = os.fdatasync
    synced_sizes = []  # file size at each sync: everything below it is durable
    entered = threading.Event()

    def slow_fdatasync(fd):
        entered.set()
        size = os.fstat(fd).st_size
        real_fdatasync(fd)
        threading.Event().wait(0.002)  # a slow disk, so that appends queue up behind a sync
        synced_sizes.append(size)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    problems = []

    def poster(base):
        for i in range(100):
            record = encode([base * 1000 + i])
            log.append(record)
            content = path.read_bytes()
            end = content.index(record) + len(record)
            if not synced_sizes or max(synced_sizes) < end:
                problems.append(f"{record!r} acknowledged before a sync covered it")

    in_threads(poster, 8)
    log.close()
    assert problems == []
    assert len(path.read_bytes().split()) == 800
    assert len(synced_sizes) < 800  # syncs were shared


def test_a_held_append_returns_at_once_and_is_durable_only_after_its_sync(tmp_path, monkeypatch):
    """append(hold=...) hands over a ticket rather than waiting: the ticket turns durable once
    a sync covering the append is done, and on_durable says when to look again."""
    path = tmp_path / "data1"
    log = EventLog(path)
    log.append(encode([1]))  # the first sync, before the gate
    entered, gate = threading.Event(), threading.Event()
    synced_sizes = []
    real_fdatasync = os.fdatasync

    def gated_fdatasync(fd):
        size = os.fstat(fd).st_size
        entered.set()
        assert gate.wait(30)
        real_fdatasync(fd)
        synced_sizes.append(size)

    monkeypatch.setattr(os, "fdatasync", gated_fdatasync)
    woken = []
    log.on_durable = lambda: woken.append(len(synced_sizes))
    tickets = []
    log.append(encode([2]), hold=tickets.append)  # returns although the sync cannot finish
    log.append(encode([3]), hold=tickets.append)
    assert entered.wait(30)
    assert [ticket.durable() for ticket in tickets] == [False, False]
    gate.set()
    wait_for(lambda: all(ticket.durable() for ticket in tickets), what="the held appends' sync")
    assert max(synced_sizes) >= tickets[1].end == path.stat().st_size
    assert woken and woken[-1] == len(synced_sizes)  # called after the sync, not before
    log.close()


def test_durability_off_never_syncs_on_append(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fdatasync", calls.append)
    log = EventLog(tmp_path / "data1", durable=False)
    log.append(b"1 ")
    assert calls == []
    log.sync()
    assert len(calls) == 1


@pytest.mark.parametrize("fault", ["ENOSPC after part", "EIO", "short write"])
def test_a_failed_write_is_undone(tmp_path, monkeypatch, fault):
    path = tmp_path / "data1"
    log = EventLog(path)
    log.append(b"1 100 ")
    real_write = os.write

    def faulty_write(fd, data):
        if fault == "EIO":
            raise OSError(errno.EIO, "Input/output error")
        written = real_write(fd, bytes(data[:3]))
        if fault == "short write":
            return written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", faulty_write)
    with pytest.raises(AppendError):
        log.append(b"123456 ")
    assert path.read_bytes() == b"1 100 "
    monkeypatch.setattr(os, "write", real_write)
    log.append(b"7 ")
    log.close()
    assert path.read_bytes() == b"1 100 7 "


class Exited(BaseException):
    pass


def test_a_failed_fsync_is_fatal(tmp_path, monkeypatch):
    log = EventLog(tmp_path / "data1")
    exits = []

    def failing_fdatasync(fd):
        raise OSError(errno.EIO, "Input/output error")

    def fake_exit(code):  # os._exit never returns: the sync thread ends here
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    monkeypatch.setattr(eventlog.os, "_exit", fake_exit)
    reported = threading.excepthook  # the thread's SystemExit is the stand-in exit, no error
    monkeypatch.setattr(threading, "excepthook",
                        lambda args: args.exc_type is SystemExit or reported(args))
    tickets = []
    log.append(b"1 ", hold=tickets.append)
    wait_for(lambda: exits, what="the sync thread to end the process")
    assert exits[0] != 0
    assert not tickets[0].durable()  # never acknowledged
    log.close()


def test_a_failed_undo_is_fatal(tmp_path, monkeypatch):
    log = EventLog(tmp_path / "data1")

    def failing(*args):
        raise OSError(errno.EIO, "Input/output error")

    def fake_exit(code):
        raise Exited(code)

    monkeypatch.setattr(os, "write", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    monkeypatch.setattr(eventlog.os, "_exit", fake_exit)
    with pytest.raises(Exited):
        log.append(b"1 ")


def test_the_commit_delay_waits_only_while_others_write(tmp_path, monkeypatch):
    """A lone writer never waits for siblings; with others writing, a lead waits a moment so
    that one sync covers them, and every append is still acknowledged only once synced."""
    import storage.log.writer as log_writer

    delays = []
    real_sleep = time.sleep
    monkeypatch.setattr(log_writer.time, "sleep",
                        lambda seconds: (delays.append(seconds), real_sleep(seconds)))
    log = EventLog(tmp_path / "data1")
    for i in range(50):
        log.append(encode([i]))
    assert delays == []  # one writer: each sync covers one append, and nobody waits
    syncs = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real_fdatasync(fd)))
    start = threading.Barrier(8)

    def poster(base):
        start.wait()
        for i in range(50):
            log.append(encode([base * 1000 + i]))

    in_threads(poster, 8)
    log.close()
    assert delays and set(delays) == {log_writer.COMMIT_DELAY}
    assert len(syncs) < 400 / 2  # groups of more than two appends a sync, on average
    assert len((tmp_path / "data1").read_bytes().split()) == 450
