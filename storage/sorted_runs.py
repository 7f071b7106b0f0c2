"""What both dedupe stores' sorted runs share (storage/log/seen_index.py at the ingest,
storage/views/seen_store.py at a cluster partition): which runs are merged, and which blocks
of a run a key may be in. Each store keeps its runs in its own format.

Merging is size-tiered, as LevelDB's universal compaction: runs of one size class (below
SMALL_RUN keys, one class; above, a class per factor of FANOUT) are merged FANOUT at a time
into one, so that each key is rewritten a few times in all, never into a run of more than
MAX_RUN keys (a merge holds its runs in memory).
"""

import bisect
import math

FANOUT = 4  # runs of a size class merged at once
SMALL_RUN = 65_536  # runs below this many keys are one size class; each class above is 4x
MAX_RUN = 1_048_576  # keys: a merge never makes a run larger (its arrays stay in memory)


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
