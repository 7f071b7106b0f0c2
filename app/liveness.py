"""Is the worker counting? Its state as the ingest sees it: running, stopped or stalled.

* Running is known, not guessed: a live worker holds worker.lock (an flock dies with its
  process), so a probe of that lock tells whether a worker process exists.
* Stalled: a worker holds the lock, yet an event has waited longer than `stalled_after`
  seconds to be counted (the worker is hung, paused, or far behind).

How long the oldest uncounted event has waited comes from data1's time index
(storage/log/time_index.py), which dates every acknowledged event to its second: an idle system,
however old its checkpoint, has nothing waiting and is never called stalled.
"""

import time

from storage.lockfile import is_held
from storage.log.time_index import TimeIndexReader

RUNNING, STOPPED, STALLED = "running", "stopped", "stalled"


class WorkerWatch:
    def __init__(self, worker_lock, time_index, stalled_after, clock=time.time):
        self.worker_lock = worker_lock
        self.time_index = TimeIndexReader(time_index)
        self.stalled_after = stalled_after
        self.clock = clock

    def waiting_seconds(self, counted_offset, data1_size):
        """How long the oldest event past `counted_offset` has waited (0 if none waits, or if
        data1 has no time index to tell)."""
        if data1_size <= counted_offset:
            return 0.0
        spans = self.time_index.spans(counted_offset, counted_offset + 1)
        return max(0.0, self.clock() - spans[0][1]) if spans else 0.0

    def state(self, counted_offset, data1_size):
        """(state, reason): reason is None while running."""
        if not is_held(self.worker_lock):
            return STOPPED, "no worker is running: new events are kept, and wait to be counted"
        waited = self.waiting_seconds(counted_offset, data1_size)
        if waited > self.stalled_after:
            return STALLED, (
                f"events have waited {waited:.0f} s to be counted (more than "
                f"{self.stalled_after:g} s) although a worker is running"
            )
        return RUNNING, None
