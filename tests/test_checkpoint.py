"""data2's encoding, loading and atomic replacement, with corrupt and mismatched states."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker import checkpoint
from worker.checkpoint import Checkpoint, CorruptCheckpoint, decode, encode


def test_encoding_is_json_with_numeric_key_order():
    cp = Checkpoint(offset=22, counts={100: 1, 1: 3, 20: 2}, skipped=0, fingerprint="ab")
    document = json.loads(encode(cp))
    assert list(document["counts"]) == ["1", "20", "100"]
    assert document["counts"] == {"1": 3, "20": 2, "100": 1}
    assert (document["offset"], document["events"], document["skipped"]) == (22, 6, 0)


@given(
    counts=st.dictionaries(st.integers(0, 2**63 - 1), st.integers(1, 10**6), max_size=50),
    skipped=st.integers(0, 1000),
    slack=st.integers(0, 10**9),
)
def test_encode_decode_round_trip(counts, skipped, slack):
    offset = 2 * (sum(counts.values()) + skipped) + slack
    cp = Checkpoint(offset, counts, skipped, "f" * 64, "2026-11-25T10:00:00.000Z")
    assert decode(encode(cp)) == cp


CORRUPT = {
    "empty": b"",
    "NUL-filled": b"\x00" * 4096,
    "truncated": b'{"offset": 8, "events": 3, "skipped": 0, "fingerprint": "x", "counts": {"1": 2, ',
    "not an object": b"[1, 2]",
    "no counts": b'{"offset": 8, "skipped": 0, "fingerprint": "x"}',
    "no offset": b'{"counts": {}, "skipped": 0, "fingerprint": "x"}',
    "negative offset": b'{"offset": -8, "counts": {}, "skipped": 0, "fingerprint": "x"}',
    "string offset": b'{"offset": "8", "counts": {}, "skipped": 0, "fingerprint": "x"}',
    "bad key": b'{"offset": 8, "counts": {"01": 1}, "skipped": 0, "fingerprint": "x"}',
    "zero count": b'{"offset": 8, "counts": {"1": 0}, "skipped": 0, "fingerprint": "x"}',
    "float count": b'{"offset": 8, "counts": {"1": 1.5}, "skipped": 0, "fingerprint": "x"}',
    "more events than bytes": b'{"offset": 4, "counts": {"1": 3}, "skipped": 0, "fingerprint": "x"}',
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_checkpoints_are_refused(data):
    with pytest.raises(CorruptCheckpoint):
        decode(data)


def test_load_missing_is_none(tmp_path):
    assert checkpoint.load(tmp_path / "data2") is None


def test_replace_durably_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data2"
    target.write_bytes(b"old")
    checkpoint.replace_durably(str(target), b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["data2"]


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "data2"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        checkpoint.replace_durably(str(target), b"new")
    assert target.read_bytes() == b"old"


def test_mismatch_detects_truncation_and_rewrites(tmp_path):
    data1 = tmp_path / "data1"
    data1.write_bytes(b"1 100 1 ")
    fd = os.open(data1, os.O_RDWR)
    try:
        cp = Checkpoint(offset=8, counts={1: 2, 100: 1})
        cp.fingerprint = checkpoint.fingerprint(fd, 8)
        assert checkpoint.mismatch(cp, fd) is None
        os.pwrite(fd, b"7 ", 6)  # same size, different bytes before the offset
        assert "not the ones it counted" in checkpoint.mismatch(cp, fd)
        os.ftruncate(fd, 4)
        assert "shorter" in checkpoint.mismatch(cp, fd)
    finally:
        os.close(fd)
