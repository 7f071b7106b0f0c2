"""storage/log/time_index.py, and the log writer dating its appends with an injected clock."""

import errno
import os

import pytest

from clocks import Clock
from storage.log.format import encode
from storage.log.time_index import ENTRY, TimeIndexReader
from storage.log.writer import AppendError, EventLog

from reference import index_entries



def event_log(tmp_path, clock):
    return EventLog(tmp_path / "data1", time_index=tmp_path / "data1.timeindex", clock=clock)


def test_one_entry_a_second_written_before_the_records(tmp_path):
    clock = Clock(1000.2)
    log = event_log(tmp_path, clock)
    log.append(encode([1]))
    clock.now = 1000.9
    log.append(encode([2]))  # the same second: no entry
    clock.now = 1003.0
    log.append(encode([3, 4]))
    log.close()
    assert index_entries(tmp_path) == [(1000, 0), (1003, 4)]


def test_a_clock_stepped_back_keeps_the_last_second(tmp_path):
    clock = Clock(2000.0)
    log = event_log(tmp_path, clock)
    log.append(encode([1]))
    clock.now = 1990.0
    log.append(encode([2]))
    clock.now = 2001.0
    log.append(encode([3]))
    log.close()
    assert index_entries(tmp_path) == [(2000, 0), (2001, 4)]


def test_a_new_entry_is_synced_before_the_append_returns(tmp_path, monkeypatch):
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    clock = Clock(50.0)
    log = event_log(tmp_path, clock)
    log.append(encode([1]))
    log.append(encode([2]))  # same second: data1 only
    clock.now = 51.0
    log.append(encode([3]))
    log.close()
    names = [os.path.basename(path) for path in synced]
    assert names == ["data1", "data1.timeindex", "data1", "data1", "data1.timeindex"]


@pytest.mark.parametrize("fault", ["short write", "ENOSPC after part"])
def test_an_entry_written_in_part_is_cut_off_and_the_next_one_is_whole(tmp_path,
                                                                       monkeypatch, fault):
    """A disk that fills mid-entry: the append fails (a 503, no records written), and the
    entry's part is cut off, so the next entry is not written out of step with the others."""
    clock = Clock(1000.0)
    log = event_log(tmp_path, clock)
    log.append(encode([1]))
    real_write = os.write

    def faulty_write(fd, data):
        written = real_write(fd, bytes(data[:5]))
        if fault == "short write":
            return written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    clock.now = 1001.0
    monkeypatch.setattr(os, "write", faulty_write)
    with pytest.raises(AppendError, match="time index"):
        log.append(encode([2]))
    monkeypatch.setattr(os, "write", real_write)
    assert os.path.getsize(tmp_path / "data1.timeindex") == ENTRY.size
    clock.now = 1002.0
    log.append(encode([3]))
    log.close()
    assert index_entries(tmp_path) == [(1000, 0), (1002, 2)]
    assert (tmp_path / "data1").read_bytes() == b"1 3 "


def test_opening_repairs_a_torn_entry_and_entries_past_data1(tmp_path):
    # As a power loss can leave them: data1 lost its last records ("3 44" of which "44" was
    # torn), the index kept the entries dating them, and its last entry is torn.
    (tmp_path / "data1").write_bytes(b"1 2 3 44")
    (tmp_path / "data1.timeindex").write_bytes(
        ENTRY.pack(10, 0) + ENTRY.pack(11, 2) + ENTRY.pack(12, 6) + ENTRY.pack(13, 9)
        + b"\x01\x02\x03")
    log = event_log(tmp_path, Clock(20.0))
    log.close()
    assert (tmp_path / "data1").read_bytes() == b"1 2 3 "
    # (12, 6) dates the torn "44": harmless, it dates no byte; (13, 9) points past the end.
    assert index_entries(tmp_path) == [(10, 0), (11, 2), (12, 6)]
    assert os.path.getsize(tmp_path / "data1.timeindex") == 48


def test_a_data1_without_an_index_is_dated_by_its_last_change(tmp_path):
    (tmp_path / "data1").write_bytes(b"1 100 1 ")
    os.utime(tmp_path / "data1", (12345.0, 12345.0))
    log = event_log(tmp_path, Clock(99999.0))
    log.append(encode([5]))
    log.close()
    assert index_entries(tmp_path) == [(12345, 0), (99999, 8)]


def test_spans_date_a_range(tmp_path):
    path = tmp_path / "data1.timeindex"
    path.write_bytes(b"".join(ENTRY.pack(*e) for e in [(100, 0), (105, 10), (107, 30)]))
    reader = TimeIndexReader(path)
    assert reader.spans(0, 40) == [(0, 100), (10, 105), (30, 107)]
    assert reader.spans(12, 30) == [(12, 105)]
    assert reader.spans(30, 31) == [(30, 107)]
    assert TimeIndexReader(tmp_path / "missing").spans(0, 10) == []


def test_spans_before_the_first_entry_take_its_time(tmp_path):
    path = tmp_path / "data1.timeindex"
    path.write_bytes(ENTRY.pack(500, 20))
    assert TimeIndexReader(path).spans(0, 40) == [(0, 500)]


def test_spans_skip_entries_out_of_order_and_prefer_the_later_of_two_at_one_offset(tmp_path):
    path = tmp_path / "data1.timeindex"
    entries = [(100, 0), (103, 10), (101, 5), (104, 10), (90, 20), (110, 30)]
    path.write_bytes(b"".join(ENTRY.pack(*e) for e in entries))
    assert TimeIndexReader(path).spans(0, 40) == [(0, 100), (10, 104), (30, 110)]
