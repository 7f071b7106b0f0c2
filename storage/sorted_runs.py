"""What both dedupe stores' sorted runs share (storage/log/seen_index.py at the ingest,
storage/views/seen_store.py at a cluster partition): which runs are merged, how, and which
blocks of a run a key may be in. Each store keeps its runs in its own format.

Merging is size-tiered, as LevelDB's universal compaction: runs of one size class (below
SMALL_RUN keys, one class; above, a class per factor of FANOUT) are merged FANOUT at a time
into one, so that each key is rewritten a few times in all, never into a run of more than
MAX_RUN keys. A merge goes by ranges of keys (merged_slices): it holds a slice of about
SLICE_KEYS keys at a time, whatever the size of its runs.

A run is sorted by hi (a key's first 8 bytes, as a little-endian u64) and read by blocks of a
store's own size; its fence is each block's first hi.
"""

import bisect
import math

import numpy as np

FANOUT = 4  # runs of a size class merged at once
SMALL_RUN = 65_536  # runs below this many keys are one size class; each class above is 4x
# Keys: a merge never makes a run larger. It bounds the time one merge takes (within a
# commit, or the ingest's flusher), not its memory.
MAX_RUN = 1_048_576
SLICE_KEYS = 131_072  # keys a merge holds at a time (3 MB of columns, and their sort)


def size_class(count):
    return 0 if count < SMALL_RUN else 1 + int(math.log(count / SMALL_RUN, FANOUT))


def to_merge(runs):
    """FANOUT of `runs` (each with its `count` of keys) of one size class whose merge stays
    within MAX_RUN, in the order given; or None if no class has that many."""
    classes = {}
    for run in runs:
        classes.setdefault(size_class(run.count), []).append(run)
    return next((members[:FANOUT] for members in classes.values()
                 if len(members) >= FANOUT
                 and sum(run.count for run in members[:FANOUT]) <= MAX_RUN), None)


def blocks_of(fence, hi):
    """(first, end): the blocks a key whose first 8 bytes are `hi` (a little-endian u64) may
    be in, of a run sorted by hi whose `fence` is each block's first hi. Equal hi may span
    blocks: from the block before the first fence >= hi to the block of the last fence
    <= hi."""
    return (max(bisect.bisect_left(fence, hi) - 1, 0),
            max(bisect.bisect_right(fence, hi), 1))


def sorted_slices(keys, times):
    """New keys ((n, 2) u64: hi, lo) at `times`, as the one slice of a run (merged_slices'
    form)."""
    order = np.argsort(keys[:, 0], kind="stable")
    return [(keys[order, 0], keys[order, 1], times[order])]


def merged_slices(runs, read_blocks, block):
    """The rows of `runs` (each with its `fence`), merged into one order of hi, as slices of
    about SLICE_KEYS rows: (hi, lo, time) arrays, each sorted by hi, every hi of a slice
    below every hi of the next. `read_blocks(run, first, end)` gives the run's rows of
    blocks first to end (exclusive) as such three arrays; `block` is a block's rows.

    A slice is a range of hi [low, high), its bounds taken from the runs' fences: each run
    gives the blocks that may hold its rows in the range (a block at an edge is read for
    both slices it meets, and each keeps its own rows of it)."""
    fences = sorted(hi for run in runs for hi in run.fence)
    step = max(1, SLICE_KEYS // block)
    bounds = [0, *sorted(set(fences[step::step]) - {0}), None]
    for low, high in zip(bounds, bounds[1:]):
        parts = []
        for run in runs:
            first = max(bisect.bisect_left(run.fence, low) - 1, 0)
            end = len(run.fence) if high is None else bisect.bisect_left(run.fence, high)
            if end <= first:
                continue  # every block of it begins at high or above
            hi, lo, time = read_blocks(run, first, end)
            inside = hi >= low if high is None else (hi >= low) & (hi < high)
            parts.append((hi[inside], lo[inside], time[inside]))
        if not parts:
            continue
        hi, lo, time = (np.concatenate(column) for column in zip(*parts))
        del parts
        order = np.argsort(hi, kind="stable")
        if len(order):
            yield hi[order], lo[order], time[order]
