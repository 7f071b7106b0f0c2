"""The read side of the ingest process: the committed counts and the engine's state, as the
API serves them. One class per mode, each a ReadSide (below): FileReadSide here, on one
machine, and app/cluster_readside.ClusterReadSide; app/api.py uses whichever
app/__main__.py gives it. Each method raises Unavailable (answered 503) when it cannot tell.
"""

import os
import threading
import time
from typing import Protocol

from app.liveness import RUNNING, WorkerWatch
from storage.checkpoint import Checkpoint, CorruptCheckpoint
from storage.layout import Layout
from storage.local_messages import WorkerOverview
from storage.log.checkpoint_store import CheckpointStore
from storage.log.details import received_at_or_after
from storage.views.overview_store import OverviewReader, OverviewState
from storage.views.series_store import SeriesReader


class Unavailable(Exception):
    """The read side cannot answer now; the message says why."""


class SeriesReads(Protocol):
    """The counts over time: storage/views/series_store.SeriesReader, or in cluster mode
    app/cluster_readside.ClusterSeries."""

    def state(self, project=""):
        """The store's SeriesState (its newest_minute `project`'s), or None while there is
        none."""

    def buckets(self, step, experience, start, end, project="") -> dict:
        """{bucket start: count} of one experience of `project` (storage/projects.py) over
        [start, end)."""

    def counts(self, step, start, end, project="") -> dict:
        """{experience: count} of `project`'s experiences over [start, end)."""


class OverviewReads(Protocol):
    """The experience overview: storage/views/overview_store.OverviewReader, or in cluster
    mode app/cluster_readside.ClusterOverview."""

    def run(self, calls, project="") -> list:
        """The rows of each of `calls` ([name, *args], the store's READS) of `project`'s
        experiences, all read in one snapshot."""


class ReadSide(Protocol):
    series: SeriesReads
    overview: OverviewReads

    def committed(self) -> Checkpoint:
        """The latest counts, merged over the partitions in cluster mode."""

    def committed_at(self) -> tuple:
        """(committed(), where they stand in the log, for /counts): {"offset": n}, or
        {"partitions": {name: {"sequence", "events"}}} in cluster mode."""

    def series_state(self, project=""):
        """The series store's state (its newest_minute `project`'s), or None while there is
        none. Unavailable while it is being counted again and is behind the counts (its sums
        would be partial: counts over time going down)."""

    def stats(self) -> dict:
        """The /stats document."""

    def overview_states(self) -> dict:
        """{what the overview is counted from: its store's OverviewState}: data1.details, or
        in cluster mode each partition. Raises NoOverview or Unavailable while the overview
        cannot be read."""

    def overview_waiting(self, states) -> float:
        """How long the oldest SDK event the overview has not counted has waited (seconds; 0
        when it has counted them all), given overview_states(). Raises Unavailable if that
        cannot be known now."""

    def health(self) -> tuple:
        """(None if the system is taking and counting events, else why not; the details to
        show), for /healthz."""


class CheckpointReader:
    """data2 as the read side serves it.

    data2 is replaced atomically, so any read of it is a consistent snapshot. Parsing a large
    one costs real time (about a second per million experiences), so it is parsed once per
    commit, not once per request: the parsed checkpoint is kept until data2's inode changes.
    """

    def __init__(self, state_dir):
        self.store = CheckpointStore(state_dir)
        self._lock = threading.Lock()
        self._identity = None
        self._checkpoint = None

    def current(self):
        """The latest committed checkpoint, or None if the worker has not committed one.

        Raises CorruptCheckpoint if data2 cannot be read (the worker will replace it).
        """
        try:
            stat = os.stat(self.store.path)
        except FileNotFoundError:
            return None
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if identity != self._identity:
                loaded = self.store.load()  # None if it was just moved aside
                self._checkpoint, self._identity = loaded, identity if loaded else None
            return self._checkpoint


class FileReadSide:
    """Single-machine mode: data2, the series store, the overview (overview.sqlite3, or with
    `worker_answers` asked of the worker, which alone can read overview.duckdb), and the
    worker's lock and lag."""

    def __init__(self, eventlog, state_dir, stalled_after, worker_answers=False):
        self.eventlog = eventlog
        self.reader = CheckpointReader(state_dir)
        self.series = SeriesReader(state_dir)
        self.layout = layout = Layout(state_dir)
        self.overview = (WorkerOverview(layout.worker_socket) if worker_answers
                         else OverviewReader(state_dir))
        self.watch = WorkerWatch(layout.worker_lock, layout.time_index, stalled_after)

    def committed(self):
        """The latest checkpoint; before the worker's first commit, the empty one."""
        try:
            return self.reader.current() or Checkpoint()
        except CorruptCheckpoint as problem:
            raise Unavailable(f"data2 is unreadable ({problem}); the worker will rebuild it")

    def committed_at(self):
        checkpoint = self.committed()
        return checkpoint, {"offset": checkpoint.offset}

    def series_state(self, project=""):
        # data2 first: the worker commits the series store before data2, so read in this
        # order the store is never seen behind unless it really is.
        counted = self.committed().offset
        state = self.series.state(project)
        if state is not None and state.offset < counted:
            raise Unavailable(
                f"the counts over time are behind the counts (offset {state.offset:,} of "
                f"{counted:,}): the worker is counting them again, or MINI_ANALYTICS_SERIES "
                "is off")
        return state

    def overview_states(self):
        (state,), = self.overview.run([("state",)])
        return {"data1.details": OverviewState(*state)}  # a plain row, when asked of the worker

    def overview_waiting(self, states):
        received_ms = received_at_or_after(self.layout.details,
                                           states["data1.details"].position)
        return 0.0 if received_ms is None else max(0.0, time.time() - received_ms / 1000)

    def _data1_size(self):
        return os.fstat(self.eventlog.fileno()).st_size  # the file itself: other writers too

    def _worker(self, checkpoint, data1_size):
        state, reason = self.watch.state(checkpoint.offset, data1_size)
        return {"state": state, "reason": reason}

    def stats(self):
        checkpoint = self.committed()
        size = self._data1_size()
        return {
            "mode": "single-machine",
            "data1_bytes": size,
            "offset": checkpoint.offset,
            "lag_bytes": max(0, size - checkpoint.offset),
            "events": checkpoint.events,
            "experiences": len(checkpoint.counts),
            "skipped": checkpoint.skipped,
            "last_checkpoint_at": checkpoint.updated_at or None,
            "checkpoint_age_seconds": checkpoint.age(),
            "waiting_seconds": self.watch.waiting_seconds(checkpoint.offset, size),
            "worker": self._worker(checkpoint, size),
        }

    def health(self):
        worker = self._worker(self.committed(), self._data1_size())
        if worker["state"] != RUNNING:
            return f"worker {worker['state']}: {worker['reason']}", {"worker": worker}
        return None, {"worker": worker}
