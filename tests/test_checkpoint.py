"""storage/checkpoint.py: data2's format: encoding, versions, and corrupt checkpoints refused."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage.checkpoint import (
    Checkpoint,
    CorruptCheckpoint,
    UnsupportedVersion,
    decode,
    decode_partition,
    encode,
    encode_partition,
    merge,
)


def test_encoding_is_json_with_numeric_key_order():
    cp = Checkpoint(offset=22, counts={100: 1, 1: 3, 20: 2}, skipped=0, fingerprint="ab")
    document = json.loads(encode(cp))
    assert list(document["counts"]) == ["1", "20", "100"]
    assert document["counts"] == {"1": 3, "20": 2, "100": 1}
    assert (document["offset"], document["events"], document["skipped"]) == (22, 6, 0)


COUNTS = st.dictionaries(st.integers(0, 2**63 - 1), st.integers(1, 10**6), max_size=50)


@given(
    counts=COUNTS,
    skipped=st.integers(0, 1000),
    slack=st.integers(0, 10**9),
    projects=st.dictionaries(st.sampled_from(["a", "shop", "news-2", "x_y"]),
                             COUNTS.filter(bool), max_size=3),
)
def test_encode_decode_round_trip(counts, skipped, slack, projects):
    events = sum(counts.values()) + sum(sum(more.values()) for more in projects.values())
    offset = 2 * (events + skipped) + slack
    cp = Checkpoint(offset, counts, skipped, "f" * 64, "2026-11-25T10:00:00.000Z",
                    projects=projects)
    assert decode(encode(cp)) == cp
    if not projects:  # the assignment's shape, and nothing else
        assert "projects" not in json.loads(encode(cp))


def test_each_project_s_counts_are_kept_apart_in_data2():
    cp = Checkpoint(offset=40, counts={1: 2}, projects={"shop": {7: 3, 1: 1}})
    document = json.loads(encode(cp))
    assert (document["counts"], document["events"]) == ({"1": 2}, 2)
    assert document["projects"] == {"shop": {"events": 4, "counts": {"1": 1, "7": 3}}}
    assert cp.counts_of("shop") == {7: 3, 1: 1} and cp.counts_of("") == {1: 2}
    assert cp.counts_of("news") == {}
    merged = merge([cp, Checkpoint(projects={"shop": {7: 1}, "news": {2: 5}})])
    assert merged.projects == {"shop": {7: 4, 1: 1}, "news": {2: 5}}


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
    "bad project": b'{"offset": 80, "counts": {}, "skipped": 0, "fingerprint": "x", '
                   b'"projects": {"Shop": {"events": 1, "counts": {"1": 1}}}}',
    "project events not its sum": b'{"offset": 80, "counts": {}, "skipped": 0, '
                                  b'"fingerprint": "x", "projects": {"shop": {"events": 2, '
                                  b'"counts": {"1": 1}}}}',
    "projects not an object": b'{"offset": 80, "counts": {}, "skipped": 0, '
                              b'"fingerprint": "x", "projects": []}',
    "zero count": b'{"offset": 8, "counts": {"1": 0}, "skipped": 0, "fingerprint": "x"}',
    "float count": b'{"offset": 8, "counts": {"1": 1.5}, "skipped": 0, "fingerprint": "x"}',
    "more events than bytes": b'{"offset": 4, "counts": {"1": 3}, "skipped": 0, "fingerprint": "x"}',
}


@pytest.mark.parametrize("data", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_checkpoints_are_refused(data):
    with pytest.raises(CorruptCheckpoint):
        decode(data)


def test_encoding_carries_the_version():
    assert json.loads(encode(Checkpoint()))["version"] == 1


def test_a_checkpoint_without_a_version_reads_as_version_1():
    old = b'{"offset": 4, "events": 2, "skipped": 0, "fingerprint": "x", "counts": {"1": 2}}'
    assert decode(old) == Checkpoint(4, {1: 2}, 0, "x", "")


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_an_unknown_version_is_refused_as_such(version):
    data = json.dumps({"version": version, "offset": 0, "skipped": 0, "fingerprint": "x",
                       "counts": {}}).encode()
    with pytest.raises(UnsupportedVersion, match="version"):
        decode(data)


def test_age_is_measured_from_updated_at():
    import datetime

    cp = Checkpoint(updated_at="2026-11-25T10:00:00.000Z")
    now = datetime.datetime(2026, 11, 25, 10, 0, 30, tzinfo=datetime.timezone.utc)
    assert cp.age(now) == 30.0
    assert Checkpoint().age(now) is None


@given(
    counts=st.dictionaries(st.integers(0, 2**63 - 1), st.integers(1, 10**6), max_size=50),
    messages=st.integers(0, 1000),
    extra=st.integers(0, 10**6),
    revision_before=st.integers(0, 10**9),
    behind=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_partition_checkpoints_round_trip(counts, messages, extra, revision_before, behind):
    sequence = messages + extra
    cp = Checkpoint(offset=sequence, counts=counts, skipped=3,
                    fingerprint="MINI_ANALYTICS created 2026-11-25T09:00:00+00:00",
                    updated_at="2026-11-25T10:00:00.000Z", messages=messages, owner="worker@h:1",
                    overview_reached=None if behind is None else max(0, sequence - behind))
    assert decode_partition(encode_partition(cp, "p1", revision_before), "p1") == (
        cp, revision_before)


PARTITION = json.loads(encode_partition(Checkpoint(offset=9, counts={1: 2}, messages=2,
                                                   fingerprint="S"), "p1", 4))
BAD_PARTITIONS = {
    "another partition's": ("partition", "p2"),
    "more messages than sequence": ("messages", 10),
    "negative sequence": ("sequence", -1),
    "no revision_before": ("revision_before", None),
    "no stream": ("stream", None),
    "bad counts": ("counts", {"x": 1}),
    "overview past the sequence": ("overview_reached", 10),
    "negative overview_reached": ("overview_reached", -1),
    "overview_reached not a number": ("overview_reached", "9"),
    "overview_reached a boolean": ("overview_reached", True),
}


def test_a_partition_checkpoint_without_overview_reached_reads_as_level():
    """Written before the overview could fall behind the counts: None, which the worker
    reads as the sequence itself."""
    assert "overview_reached" not in PARTITION
    assert decode_partition(json.dumps(PARTITION).encode(), "p1")[0].overview_reached is None


@pytest.mark.parametrize("field, value", BAD_PARTITIONS.values(), ids=BAD_PARTITIONS.keys())
def test_bad_partition_checkpoints_are_refused(field, value):
    document = {**PARTITION, field: value}
    with pytest.raises(CorruptCheckpoint):
        decode_partition(json.dumps(document).encode(), "p1")


def test_merge_adds_partitions_and_keeps_the_newest_time():
    merged = merge([
        Checkpoint(counts={1: 2, 5: 1}, skipped=1, updated_at="2026-11-25T10:00:05.000Z"),
        None,
        Checkpoint(counts={1: 1, 7: 4}, skipped=2, updated_at="2026-11-25T10:00:01.000Z"),
    ])
    assert merged.counts == {1: 3, 5: 1, 7: 4} and merged.skipped == 3
    assert merged.updated_at == "2026-11-25T10:00:05.000Z"  # when the counts last changed
    assert merge([]).counts == {} and merge([]).updated_at == ""
