"""data1.seen's runs, filters, merges and expiry against a plain reference: an id is known at
`since` if it was inserted with a receive time at or after it.

The index is driven directly (storage/log/seen_index.py), its sizes made small so that a few
dozen ids split into runs, merge, and outgrow their filters; keys share their first 8 bytes
often, so that searches walk runs of equal keys. The writer's use of it (claims, durable
groups, damage) is tested in tests/test_sdk_recovery.py and tests/test_model.py."""

import os
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clocks import Clock
from storage import sorted_runs
from storage.backend import event_key, event_keys
from storage.log import details
from storage.log import seen_index
from storage.log.seen_index import SeenIndex

WINDOW = 100
T0 = 1_800_000_000


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(sorted_runs, "FANOUT", 3)
    monkeypatch.setattr(sorted_runs, "SMALL_RUN", 4)
    monkeypatch.setattr(sorted_runs, "MAX_RUN", 24)
    monkeypatch.setattr(seen_index, "MIN_CAPACITY", 8)
    monkeypatch.setattr(seen_index, "EXPIRY_SLACK", 5)
    monkeypatch.setattr(seen_index, "BLOCK", 2)
    monkeypatch.setattr(seen_index, "CHUNK_ROWS", 4)  # runs read through in several chunks
    monkeypatch.setattr(sorted_runs, "SLICE_KEYS", 5)  # merged in several slices


def details_of(folder):
    """A details file with no groups, and what the index needs of its writer."""
    path = folder / "data1.details"
    identity = os.urandom(16)
    path.write_bytes(details.HEADER.pack(details.MAGIC, details.VERSION, identity, 0))
    fd = os.open(path, os.O_RDONLY)
    return SimpleNamespace(identity=identity, end=details.HEADER.size, fd=fd)


def open_index(folder, written, clock):
    """The index in `folder`, trusted as it is (set_aside=None: a rebuild would fail)."""
    return SeenIndex(folder / "data1.seen", written, WINDOW, set_aside=None, clock=clock)


@pytest.fixture
def opened(tmp_path, small):
    """A new index in tmp_path, its clock at T0, and a way to open it again."""
    written, clock = details_of(tmp_path), Clock(T0)
    yield open_index(tmp_path, written, clock), clock, lambda: open_index(
        tmp_path, written, clock)
    os.close(written.fd)


def key(number):
    """Keys 0-7 share their first 8 bytes with every key of the same number mod 3."""
    return (number % 3).to_bytes(8, "little") + (number * 7919).to_bytes(8, "little")


steps = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.lists(st.integers(0, 60), max_size=30),
              st.integers(0, 40)),
    st.tuples(st.just("reopen"), st.none(), st.none()),
), max_size=25)


# `small` only sets constants, the same for every example.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps)
def test_the_index_knows_exactly_the_ids_of_the_window(tmp_path_factory, small, steps):
    folder = tmp_path_factory.mktemp("seen")
    written = details_of(folder)
    clock = Clock(T0)
    index = open_index(folder, written, clock)
    inserted = {}  # key -> receive seconds
    try:
        for action, numbers, advance in steps:
            if action == "reopen":
                index.close()
                index = open_index(folder, written, clock)
            else:
                clock.now += advance
                keys = [key(number) for number in numbers]
                index.insert(b"".join(keys), [clock.now] * len(keys), details.HEADER.size)
                for one in keys:
                    inserted.setdefault(one, []).append(clock.now)
            since = clock.now - WINDOW + 1
            asked = [key(number) for number in range(61)]
            expected = {one for one in asked if any(s >= since for s in inserted.get(one, ()))}
            assert index._index.known(asked, since, WINDOW) == expected
            assert index.held(since) == sum(s >= since for ss in inserted.values() for s in ss)
    finally:
        index.close()
        os.close(written.fd)


def test_runs_merge_and_periods_expire(tmp_path, opened):
    index, clock, _ = opened
    for number in range(10):  # ten runs of 2: merged three at a time
        index.insert(key(2 * number) + key(2 * number + 1), [T0] * 2, details.HEADER.size)
    assert len(index._index.runs[T0 // WINDOW]) < 10
    assert index.held(T0) == 20
    clock.now = T0 + 2 * WINDOW + 10  # period T0 // WINDOW ended a window and 10 s ago
    index.insert(key(100), [clock.now], details.HEADER.size)
    assert T0 // WINDOW not in index._index.runs
    assert len(list((tmp_path / "data1.seen").glob("*.run"))) == 1  # the merged are gone
    index.close()


def test_runs_merged_a_slice_at_a_time_are_whole_sorted_and_fenced(opened, monkeypatch):
    monkeypatch.setattr(sorted_runs, "SLICE_KEYS", 1)  # a slice a fence: some of odd sizes
    index, _, _ = opened

    def distinct(number):  # keys whose first 8 bytes all differ, in no order
        return ((number * 0x9E3779B97F4A7C15) % 2**64).to_bytes(8, "little") + bytes(8)

    for number in range(9):  # runs of 3 keys, 2 blocks each
        index.insert(b"".join(distinct(3 * number + n) for n in range(3)), [T0] * 3,
                     details.HEADER.size)
    runs = index._index.runs[T0 // WINDOW]
    assert [run.count for run in runs] == [9, 9, 9]  # each merged from three
    for run in runs:
        run.check()  # its CRC, over columns written a slice at a time
        hi = run._column(0, run.count)
        assert (hi[1:] > hi[:-1]).all()
        assert run.fence == hi[::seen_index.BLOCK].tolist()  # as a search takes it
    assert index._index.known([distinct(n) for n in range(28)], T0, WINDOW) == {
        distinct(n) for n in range(27)}
    index.close()


def test_a_run_no_manifest_names_is_deleted_and_its_ids_are_not_known(tmp_path, opened):
    index, _, reopen = opened
    index.insert(key(1), [T0], details.HEADER.size)
    index.close()
    # A crash after a run was written and before the manifest named it.
    seen_index._write_run(tmp_path / "data1.seen" / "000099.run", 1, sorted_runs.sorted_slices(
        seen_index.key_columns(key(2)), seen_index.np.array([T0])))
    index = reopen()
    assert not (tmp_path / "data1.seen" / "000099.run").exists()
    assert index._index.known([key(1), key(2)], T0, WINDOW) == {key(1)}
    index.close()


@given(ids=st.lists(st.text(st.characters(codec=None, exclude_categories=())), max_size=5),
       project=st.sampled_from(["", "shop", "a-b"]))
def test_event_keys_are_event_key_of_each(ids, project):
    assert event_keys(ids, project) == [event_key(one, project) for one in ids]
