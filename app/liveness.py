"""Is the worker counting? Its state as the ingest sees it: running, stopped or stalled.

* Running is known, not guessed: a live worker holds worker.lock (an flock dies with its
  process), so a probe of that lock tells whether a worker process exists.
* Stalled: a worker holds the lock, yet an event has waited longer than `stalled_after`
  seconds to be counted (the worker is hung, paused, or far behind).

How long the oldest uncounted event has waited comes from a small time index the ingest keeps
in memory as it appends: (offset where an append started, when), at most one entry a second,
like a Kafka segment's .timeindex. Bytes already in data1 when the ingest started are dated to
its start, so a restart never makes the worker look stalled at once.
"""

import bisect
import threading
import time

from storage.lockfile import is_held

RUNNING, STOPPED, STALLED = "running", "stopped", "stalled"

# About a day of one-a-second entries. Past it, the oldest half is dropped: the memory stays
# bounded even if nobody asks for /stats, at worst dating very old events as newer.
MAX_ENTRIES = 100_000


class WorkerWatch:
    def __init__(self, worker_lock, stalled_after, clock=time.monotonic):
        self.worker_lock = worker_lock
        self.stalled_after = stalled_after
        self.clock = clock
        self._lock = threading.Lock()
        self._offsets = [0]  # where each entry's first append started, ascending
        self._times = [clock()]  # when it was appended
        self._last_noted = self._times[0]

    def appended(self, start):
        """Note an append that began at data1 offset `start`; cheap, called per request."""
        now = self.clock()
        if now - self._last_noted < 1.0:
            return
        with self._lock:
            self._last_noted = now
            # An append that lagged behind a later one is dated by the entry before it.
            if start > self._offsets[-1]:
                self._offsets.append(start)
                self._times.append(now)
            if len(self._offsets) > MAX_ENTRIES:
                del self._offsets[: MAX_ENTRIES // 2], self._times[: MAX_ENTRIES // 2]

    def waiting_seconds(self, counted_offset, data1_size):
        """How long the oldest event past `counted_offset` has waited (0 if none waits)."""
        if data1_size <= counted_offset:
            return 0.0
        with self._lock:
            # The entry that dates the first uncounted byte: the last one starting at or
            # before it. Entries before that one are counted for good: drop them.
            index = max(0, bisect.bisect_right(self._offsets, counted_offset) - 1)
            del self._offsets[:index], self._times[:index]
            return self.clock() - self._times[0]

    def state(self, counted_offset, data1_size):
        """(state, reason): reason is None while running."""
        if not is_held(self.worker_lock):
            return STOPPED, "no worker process holds worker.lock: counting has stopped"
        waited = self.waiting_seconds(counted_offset, data1_size)
        if waited > self.stalled_after:
            return STALLED, (
                f"events have waited {waited:.0f} s to be counted (more than "
                f"{self.stalled_after:g} s) although a worker is running"
            )
        return RUNNING, None
