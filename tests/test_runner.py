"""worker/runner.py, the worker's run loop: passes, recovery from planted bad states, a crash at every step of the commit
path, the single-worker lock and SIGTERM. In-process where the logic is the point, real
processes where signals and locks are."""

import errno
import json
import os
import signal
import types

import pytest

from clocks import Clock
from http_client import wait_for
from reference import check_invariant, check_series, read_checkpoint, read_series, valid_counts
from storage import durable
from storage.log import checkpoint_store
from storage.log.format import encode
from storage.log.writer import EventLog
from worker import runner
from worker.runner import Worker


def write(state_dir, data, mode="ab"):
    with open(state_dir / "data1", mode) as file:
        file.write(data)


def one_pass(state_dir, chunk_size=None):
    """Start a worker as a restart would (recover, then a pass), then let it go."""
    worker = Worker(state_dir, chunk_size)
    try:
        worker.recover()
        worker.run_pass()
    finally:
        worker.close()
    return read_checkpoint(state_dir)


def assert_exact(state_dir):
    cp = check_invariant(state_dir)
    data1 = (state_dir / "data1").read_bytes()
    assert cp["counts"] == valid_counts(data1)
    return cp


def test_passes_count_incrementally(state_dir):
    write(state_dir, b"1 100 1 ")
    assert one_pass(state_dir)["counts"] == {"1": 2, "100": 1}
    write(state_dir, b"1 ")
    cp = one_pass(state_dir)
    assert cp["counts"] == {"1": 3, "100": 1} and cp["offset"] == 10


def test_passes_begin_every_interval_whatever_a_pass_takes(monkeypatch):
    """The loop waits what is left of the interval since a pass began, and begins the next
    pass at once after one that took longer: what arrives just after a pass began is
    counted an interval later, not an interval and a pass's time."""
    clock = Clock()
    monkeypatch.setattr(runner.time, "monotonic", clock)
    monkeypatch.setattr(runner, "Signals", lambda: types.SimpleNamespace(stop=False))
    took = iter([0.5, 1.5, 2.0, 0.0])  # seconds each pass takes
    waits = []

    class Loop(runner.PassLoop):
        def take_ownership(self):
            pass

        def recover(self):
            pass

        def run_pass(self):
            clock.now += next(took)

        def wait(self, seconds):
            waits.append(seconds)
            clock.now += seconds
            return len(waits) == 4

        def close(self):
            pass

    Loop().run(2.0)
    assert waits == [1.5, 0.5, 0.0, 2.0]


def test_a_pass_reads_only_from_the_offset(state_dir, monkeypatch):
    write(state_dir, b"1 2 3 " * 1000)
    one_pass(state_dir)
    write(state_dir, b"4 5 ")
    reads = []
    real_pread = os.pread

    def recording_pread(fd, size, offset):
        reads.append((offset, size))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", recording_pread)
    cp = one_pass(state_dir)
    assert cp["counts"]["4"] == 1
    data_reads = [(offset, size) for offset, size in reads if size > 64]  # not fingerprints
    assert data_reads and min(offset for offset, _ in data_reads) >= 6000


def test_nothing_is_written_when_nothing_is_new(state_dir):
    write(state_dir, b"1 2 ")
    one_pass(state_dir)
    before = os.stat(state_dir / "data2").st_mtime_ns, (state_dir / "data2").read_bytes()
    write(state_dir, b"3")  # a torn tail only
    one_pass(state_dir)
    assert (os.stat(state_dir / "data2").st_mtime_ns, (state_dir / "data2").read_bytes()) == before


def test_a_torn_token_is_counted_once_it_completes(state_dir):
    write(state_dir, b"1 10")
    assert one_pass(state_dir)["counts"] == {"1": 1}
    write(state_dir, b"0 ")
    assert one_pass(state_dir)["counts"] == {"1": 1, "100": 1}


def test_garbage_tokens_are_skipped_and_logged(state_dir, caplog):
    write(state_dir, b"1 abc 01 -5 \x00\x00 2 ")
    cp = one_pass(state_dir, chunk_size=3)
    assert cp["counts"] == {"1": 1, "2": 1} and cp["skipped"] == 4
    assert "skipped 4 tokens" in caplog.text


def test_a_read_glitch_is_read_again_before_anything_is_skipped(state_dir, monkeypatch, caplog):
    """What was seen on a FUSE file system: a read racing the writer returned NUL bytes
    where acknowledged ids were. The pass reads again after its fdatasync and counts what is
    really there; only what is still not an id is skipped."""
    write(state_dir, b"1 22 333 4444 junk 5 ")
    real_pread = os.pread
    glitches = []

    def glitching_pread(fd, size, offset):
        data = real_pread(fd, size, offset)
        if not glitches and size > 64:  # the first data read (not a fingerprint read)
            glitches.append(offset)
            data = data.replace(b"22 333", b"\x00" * 6)  # two ids read as one NUL token
        return data

    monkeypatch.setattr(os, "pread", glitching_pread)
    cp = one_pass(state_dir)
    assert glitches, "the glitch was never planted"
    assert cp["counts"] == {"1": 1, "22": 1, "333": 1, "4444": 1, "5": 1}
    assert cp["skipped"] == 1  # "junk" is really there
    assert "skipped 1 token that" in caplog.text


def test_long_catch_up_commits_along_the_way(state_dir, monkeypatch):
    monkeypatch.setattr(runner, "COMMIT_EVERY", 1000)
    commits = []
    real_commit = checkpoint_store.CheckpointStore.commit

    def counting_commit(store, cp):
        commits.append(cp.offset)
        return real_commit(store, cp)

    monkeypatch.setattr(checkpoint_store.CheckpointStore, "commit", counting_commit)
    write(state_dir, b"7 " * 5000)
    one_pass(state_dir, chunk_size=256)
    assert len(commits) >= 10 and commits == sorted(commits)
    assert assert_exact(state_dir)["counts"] == {"7": 5000}


# --- planted bad states ------------------------------------------------------------------

BAD_DATA2 = {
    "empty": b"",
    "NUL-filled": b"\x00" * 512,
    "truncated JSON": b'{"offset": 4, "counts": {"1": ',
    "wrong shape": b'{"hello": "world"}',
    "negative offset": b'{"offset": -2, "counts": {}, "skipped": 0, "fingerprint": ""}',
    "absurd offset": json.dumps(
        {"offset": 10**15, "counts": {}, "skipped": 0, "fingerprint": ""}
    ).encode(),
}


@pytest.mark.parametrize("content", BAD_DATA2.values(), ids=BAD_DATA2.keys())
def test_an_unusable_checkpoint_is_set_aside_and_data1_recounted(state_dir, caplog, content):
    write(state_dir, b"1 100 1 ")
    (state_dir / "data2").write_bytes(content)
    cp = one_pass(state_dir)
    assert cp["counts"] == {"1": 2, "100": 1}
    assert "CHECKPOINT REJECTED" in caplog.text
    aside = [name for name in os.listdir(state_dir) if name.startswith("data2.bad-")]
    assert len(aside) == 1 and (state_dir / aside[0]).read_bytes() == content


def test_a_stray_temp_file_is_ignored_and_removed(state_dir, caplog):
    write(state_dir, b"1 2 ")
    one_pass(state_dir)
    (state_dir / "data2.tmp").write_bytes(b'{"offset": 0, "counts": {"999": 1}')
    write(state_dir, b"3 ")
    assert one_pass(state_dir)["counts"] == {"1": 1, "2": 1, "3": 1}
    assert not (state_dir / "data2.tmp").exists()
    assert "interrupted commit" in caplog.text


def test_data1_truncated_below_the_offset(state_dir, caplog):
    write(state_dir, b"1 2 3 4 ")
    one_pass(state_dir)
    write(state_dir, b"5 6 ", mode="wb")
    assert one_pass(state_dir)["counts"] == {"5": 1, "6": 1}
    assert "shorter than the checkpoint's offset" in caplog.text


@pytest.mark.parametrize("replacement", [b"7 8 9 1 ", b"7 8 9 1 2 3 4 5 6 "])
def test_data1_replaced_by_other_content(state_dir, caplog, replacement):
    write(state_dir, b"1 2 3 4 ")
    one_pass(state_dir)
    write(state_dir, replacement, mode="wb")
    cp = one_pass(state_dir)
    assert cp["counts"] == valid_counts(replacement)
    assert "CHECKPOINT REJECTED" in caplog.text


def test_data1_replaced_while_the_worker_runs(state_dir, caplog):
    write(state_dir, b"1 2 ")
    worker = Worker(state_dir)
    try:
        worker.recover()
        worker.run_pass()
        (state_dir / "data1").rename(state_dir / "old-data1")
        write(state_dir, b"5 6 7 ")  # a new file under the old name
        worker.run_pass()
    finally:
        worker.close()
    assert "replaced" in caplog.text
    assert assert_exact(state_dir)["counts"] == {"5": 1, "6": 1, "7": 1}


# --- a crash at every step of the commit path --------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying: nothing after it runs, nothing is cleaned up."""


def crash_on_call(monkeypatch, module, name, call_number=1, after=False):
    real = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == call_number and not after:
            raise Crash(name)
        result = real(*args, **kwargs)
        if len(calls) == call_number and after:
            raise Crash(f"after {name}")
        return result

    monkeypatch.setattr(module, name, wrapper)


CRASH_POINTS = {
    # step of a commit                (module, function, which call, crash after it returns)
    "after reading, before fdatasync of data1": (os, "fdatasync", 1, False),
    "after fdatasync of data1": (os, "fdatasync", 1, True),
    "after writing the temp file, before its fsync": (os, "fsync", 1, False),
    "after fsyncing the temp file, before the rename": (os, "replace", 1, False),
    "after the rename, before the folder fsync": (durable, "fsync_directory", 1, False),
    "after the folder fsync": (durable, "fsync_directory", 1, True),
}


@pytest.mark.parametrize("point", CRASH_POINTS.values(), ids=CRASH_POINTS.keys())
def test_a_crash_at_each_commit_step_recovers_exactly(state_dir, monkeypatch, point):
    write(state_dir, b"1 100 1 ")
    one_pass(state_dir)  # an older checkpoint exists, as it would in production
    write(state_dir, b"1 5 5 ")
    with monkeypatch.context() as patch:
        crash_on_call(patch, *point)
        with pytest.raises(Crash):
            one_pass(state_dir)
        check_invariant(state_dir)  # whatever data2 holds now is consistent
    write(state_dir, b"100 ")
    cp = one_pass(state_dir)
    assert cp["counts"] == {"1": 3, "5": 2, "100": 2}
    assert_exact(state_dir)
    assert check_series(state_dir)[0] == cp["offset"]  # the series caught up too


def test_a_failed_checkpoint_write_is_fatal(state_dir, monkeypatch):
    write(state_dir, b"1 ")

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_store, "replace_durably", full_disk)
    with pytest.raises(OSError):
        one_pass(state_dir)


# --- as a real process -------------------------------------------------------------------


def test_a_second_worker_exits_with_a_clear_message(procs, state_dir):
    first = procs.worker(state_dir)
    wait_for(lambda: "no checkpoint yet" in first.log_path.read_text(), what="first worker")
    second = procs.worker(state_dir)
    assert second.wait(timeout=30) == 2  # a bad setup: supervisord leaves it stopped
    assert "another worker is already running" in second.log_path.read_text()
    assert first.poll() is None


def test_sigterm_stops_the_worker_promptly(procs, state_dir):
    write(state_dir, b"1 2 ")
    worker = procs.worker(state_dir, interval=3600)
    wait_for(lambda: read_checkpoint(state_dir), what="the first pass")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=5) == 0
    assert "worker stopped" in worker.log_path.read_text()


def test_a_nul_filled_tail_is_never_consumed_and_skipped_once_followed(state_dir):
    write(state_dir, b"1 2 \x00\x00\x00\x00")  # what a power loss can leave after the last record
    cp = one_pass(state_dir)
    assert cp["counts"] == {"1": 1, "2": 1} and cp["offset"] == 4
    write(state_dir, b" 3 ")
    cp = one_pass(state_dir)
    assert cp["counts"] == {"1": 1, "2": 1, "3": 1} and cp["skipped"] == 1


def test_a_failing_checkpoint_write_stops_the_worker_process(procs, state_dir):
    write(state_dir, b"1 ")
    (state_dir / "data2").mkdir()  # data2 cannot be replaced by a file: every commit fails
    worker = procs.worker(state_dir)
    assert worker.wait(timeout=30) == 1
    assert "I/O error in state folder" in worker.log_path.read_text()


# --- the counts over time --------------------------------------------------------------------



def post_at(state_dir, moments_and_ids):
    """Append ids as the ingest does, each at its (injected) moment."""
    clock = Clock(0)
    log = EventLog(state_dir / "data1", time_index=state_dir / "data1.timeindex", clock=clock)
    for moment, ids in moments_and_ids:
        clock.now = moment
        log.append(encode(ids))
    log.close()


T0 = 1_795_000_000 - 1_795_000_000 % 3600  # a whole hour in 2026


def minute_rows(state_dir, experience=-1):
    return {bucket: n for (e, bucket), n in read_series(state_dir)[1].items() if e == experience}


def test_events_land_in_the_minute_they_were_accepted(state_dir):
    post_at(state_dir, [(T0 + 59.9, [7]), (T0 + 60.0, [7, 8]), (T0 + 3599, [8]), (T0 + 3600, [9])])
    one_pass(state_dir)
    assert minute_rows(state_dir) == {T0: 1, T0 + 60: 2, T0 + 3540: 1, T0 + 3600: 1}
    assert minute_rows(state_dir, 7) == {T0: 1, T0 + 60: 1}
    hours = {b: n for (e, b), n in read_series(state_dir)[2].items() if e == -1}
    assert hours == {T0: 4, T0 + 3600: 1}
    check_series(state_dir)


def test_attribution_does_not_depend_on_when_the_worker_ran(state_dir, tmp_path):
    moments = [(T0 + i * 7.3, [i % 5, 100 + i]) for i in range(200)]
    post_at(state_dir, moments[:90])
    for chunk_size in (None, 64):
        one_pass(state_dir, chunk_size)
    post_at(state_dir, moments[90:])
    one_pass(state_dir, 7)
    incremental = read_series(state_dir)
    other = tmp_path / "other"
    other.mkdir()
    post_at(other, moments)
    one_pass(other)  # one pass over everything
    assert read_series(other) == incremental
    check_series(state_dir)


def test_a_crash_between_the_two_commits_is_caught_up(state_dir, monkeypatch, caplog):
    post_at(state_dir, [(T0, [1, 2])])
    one_pass(state_dir)
    post_at(state_dir, [(T0 + 120, [3, 3])])

    def crash(store, cp):
        raise Crash("between the series commit and data2's")

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_store.CheckpointStore, "commit", crash)
        with pytest.raises(Crash):
            one_pass(state_dir)
    assert read_series(state_dir)[0] == 8 and read_checkpoint(state_dir)["offset"] == 4
    cp = one_pass(state_dir)
    assert "data2 behind: counting data1 4 -> 8 into it" in caplog.text
    assert cp["counts"] == {"1": 1, "2": 1, "3": 2} and read_series(state_dir)[0] == 8
    check_series(state_dir)
    assert_exact(state_dir)


def test_series_switched_on_later_are_counted_from_data1(state_dir, caplog):
    post_at(state_dir, [(T0, [1]), (T0 + 61, [2])])
    worker = Worker(state_dir, series=False)
    worker.recover()
    worker.run_pass()
    worker.close()
    assert read_series(state_dir) is None
    one_pass(state_dir)
    assert "series behind: counting data1 0 -> 4 into it" in caplog.text
    assert minute_rows(state_dir) == {T0: 1, T0 + 60: 1}


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_a_lost_or_damaged_series_store_is_recounted_from_data1(state_dir, caplog, damage):
    post_at(state_dir, [(T0, [1, 2]), (T0 + 300, [2])])
    one_pass(state_dir)
    before = read_series(state_dir)
    path = state_dir / "series.sqlite3"
    for leftover in ("series.sqlite3-wal", "series.sqlite3-shm"):
        (state_dir / leftover).unlink(missing_ok=True)
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"not a database" * 100)
    else:
        path.write_bytes(path.read_bytes()[:1000])
    one_pass(state_dir)
    assert read_series(state_dir) == before
    if damage != "missing":
        assert "SERIES REJECTED" in caplog.text


def test_a_series_store_past_the_end_of_data1_is_rejected(state_dir, caplog):
    post_at(state_dir, [(T0, [1, 2, 3])])
    one_pass(state_dir)
    (state_dir / "data2").unlink()
    write(state_dir, b"4 ", mode="wb")  # data1 replaced by a shorter one
    one_pass(state_dir)
    assert "SERIES REJECTED" in caplog.text
    offset, minutes, _ = read_series(state_dir)
    assert offset == 2 and sum(n for (e, _), n in minutes.items() if e == -1) == 1


@pytest.mark.parametrize("damage", ["missing", "torn last entry", "out of order"])
def test_a_damaged_time_index_never_changes_the_counts(state_dir, caplog, damage):
    post_at(state_dir, [(T0 + i * 61, [i, i + 1]) for i in range(10)])
    index = state_dir / "data1.timeindex"
    entries = index.read_bytes()
    if damage == "missing":
        index.unlink()
    elif damage == "torn last entry":
        index.write_bytes(entries[:-5])
    else:
        index.write_bytes(entries[16:48] + entries[:16] + entries[48:])
    cp = one_pass(state_dir)
    assert cp["counts"] == valid_counts((state_dir / "data1").read_bytes())
    _, minutes, hours = read_series(state_dir)
    assert sum(n for (e, _), n in hours.items() if e == -1) == cp["events"] == 20
    if damage == "missing":
        assert minute_rows(state_dir) == {0: 20}  # dated 1970-01-01T00:00:00Z, and said so
        assert "no time index" in caplog.text
