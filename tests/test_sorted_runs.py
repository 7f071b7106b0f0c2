"""The merge both dedupe stores share (storage/sorted_runs.py), against a plain sort: runs
merged a range of keys at a time give every row once, in one order of hi, whatever the runs'
sizes, blocks and equal keys across blocks, runs and slices."""

import collections

import numpy as np
from hypothesis import given, settings, strategies as st

from storage import sorted_runs

Run = collections.namedtuple("Run", "rows fence")


def run_of(rows, block):
    rows = sorted(rows, key=lambda row: row[0])
    return Run(rows, [hi for hi, _, _ in rows[::block]])


def read_blocks(block):
    def read(run, first, end):
        rows = run.rows[first * block:end * block]
        return (np.array([r[0] for r in rows], "<u8"), np.array([r[1] for r in rows], "<u8"),
                np.array([r[2] for r in rows], "<i8"))
    return read


# Few distinct hi (equal ones span blocks and slices), some at the ends of the u64 range.
his = st.one_of(st.integers(0, 12), st.sampled_from([0, 2**63, 2**64 - 1]))
rows = st.lists(st.tuples(his, st.integers(0, 2**64 - 1), st.integers(-2**40, 2**40)),
                min_size=1, max_size=60)


@settings(max_examples=300, deadline=None)
@given(runs=st.lists(rows, min_size=1, max_size=5), block=st.integers(1, 7),
       slice_keys=st.integers(1, 40))
def test_runs_merged_by_ranges_of_keys_give_every_row_once_in_order(runs, block, slice_keys):
    sorted_runs.SLICE_KEYS, kept = slice_keys, sorted_runs.SLICE_KEYS
    try:
        slices = list(sorted_runs.merged_slices([run_of(r, block) for r in runs],
                                                read_blocks(block), block))
    finally:
        sorted_runs.SLICE_KEYS = kept
    merged = [row for hi, lo, time in slices
              for row in zip(hi.tolist(), lo.tolist(), time.tolist())]
    his_in_order = [hi for hi, _, _ in merged]
    assert his_in_order == sorted(his_in_order)
    assert sorted(merged) == sorted(row for r in runs for row in r)
    assert all(len(hi) for hi, _, _ in slices)


def test_a_merge_holds_a_slice_at_a_time_not_its_runs():
    """Four runs of 64 blocks of 8 rows, merged with slices of 32 rows: no slice much larger
    (each range's bounds are the runs' fences), and no block read for more than the slices
    it meets."""
    block, generator = 8, np.random.default_rng(7)
    runs = [run_of([(int(hi), 1, 2) for hi in generator.integers(0, 2**64 - 1, 512,
                                                                  dtype=np.uint64)], block)
            for _ in range(4)]
    read = collections.Counter()
    reader = read_blocks(block)

    def counting(run, first, end):
        read[len(range(first, end))] += 1
        return reader(run, first, end)

    sorted_runs.SLICE_KEYS, kept = 32, sorted_runs.SLICE_KEYS
    try:
        sizes = [len(hi) for hi, _, _ in sorted_runs.merged_slices(runs, counting, block)]
    finally:
        sorted_runs.SLICE_KEYS = kept
    assert sum(sizes) == 2048 and len(sizes) >= 2048 // 32 - 1
    assert max(sizes) <= 3 * 32
    assert max(read) <= 3  # blocks a run gives a slice: its own, and the edges it meets
