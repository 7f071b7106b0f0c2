"""The state folder: every file name in it, in one place (LevelDB's filename.h).

    file              written by                        read by
    data1             storage/log_writer.py (ingest)    storage/log_reader.py (worker)
    data1.timeindex   storage/time_index.py: the writer  storage/time_index.py: the reader
                      (ingest, via log_writer)          (worker; ingest: is the worker
                                                         stalled?)
    data1.details     storage/details.py: the writer     storage/details.py: read_groups
                      (ingest, via log_writer)          (ingest: the dedupe index; the
                                                         worker, for the overview)
    data1.seen (and its -wal, -shm)
                      storage/seen_index.py (ingest)    storage/seen_index.py (ingest)
    data1.details.bad-<time>, data1.seen.bad-<time>
                      storage/details.py, storage/seen_index.py (set aside, never deleted)
                                                        the operator
    data2             storage/checkpoint_store.py       storage/checkpoint_store.py
                      (worker: commit)                  (worker: recovery; ingest: read side;
                                                         `python -m worker status`)
    data2.tmp         storage/durable.py (the commit's  nobody: removed by the worker at start
                      temp file, renamed over data2)
    data2.bad-<time>  storage/checkpoint_store.py       the operator (a rejected checkpoint,
                      (set aside, never deleted)        kept for inspection)
    series.sqlite3 (and its -wal, -shm)
                      storage/series_store.py           storage/series_store.py
                      (worker: commit)                  (ingest: /series, /counts?from=)
    series.sqlite3.bad-<time>
                      storage/series_store.py (set aside)  the operator
    overview.sqlite3 (and its -wal, -shm)
                      storage/overview_store.py         storage/overview_store.py
                      (worker: worker/overview.py)      (ingest: /experiences)
    overview.sqlite3.bad-<time>
                      storage/overview_store.py (set aside)  the operator
    ingest.lock       storage/lockfile.py: held by the ingest; probed by nothing
    worker.lock       storage/lockfile.py: held by the worker (and `rebuild`); probed by the
                      ingest to tell whether a worker is alive
    logs/ingest.log, logs/worker.log (and their rotated .1 to .5)
                      storage/process.py: each program's own log lines; read by the operator
    supervisor.sock, supervisord.pid
                      supervisord (paths in supervisord.conf), not the engine
    bad-setup         storage/stop_on_bad_setup.py (supervisord's listener: why a program
                      exiting 2 ended the run)  `make run`, which prints it last
    (These three are supervisord's, in state/ beside supervisord.conf, wherever
    MINI_ANALYTICS_STATE_DIR points; cluster/supervisord.conf's are named cluster-*.)

Nothing else is ever created in the state folder.

In cluster mode (MINI_ANALYTICS_CLUSTER) the log and the checkpoints live in NATS JetStream,
not in files; their names are below too, with the module that writes and reads each:

    stream MINI_ANALYTICS, subject mini_analytics.events.<partition>
                      storage/stream_writer.py (ingest)  storage/stream_reader.py (worker)
    key-value bucket mini_analytics_checkpoints, key config.partitions
                      storage/stream_setup.py: the stream's partitions, written by the first
                      program to start, read and checked by every other
    key-value bucket mini_analytics_checkpoints, key read-barrier
                      storage/stream_checkpoint_store.py: written empty before each read of
                      the checkpoints, so that only a leader with a majority answers it
    key-value bucket mini_analytics_checkpoints, keys member.<worker> and lease.<partition>
                      storage/leases.py (worker): a live worker's sign of life, and which
                      worker counts a partition; each renewed by its holder only, taken over
                      by compare-and-set once it lapses
    key-value bucket mini_analytics_checkpoints, key partition.<partition>
                      storage/stream_checkpoint_store.py: one writer per partition (the
                      worker owning it, fenced by compare-and-set); read by the same module
                      (worker: recovery; ingest: read side; `python -m worker status`)
    subject mini_analytics.workers.<partition> (request-reply, nothing stored)
                      answered by the worker owning the partition; asked by the ingest
                      and by `status`, to tell whether that worker is alive
    series-<partition>.sqlite3 in the worker's state folder: the partition's counts over
                      time, series.sqlite3's format with the stream sequence as its offset
                      storage/series_store.py (the worker owning the partition writes it and
                      answers the ingest's questions about it on the subject
                      mini_analytics.series.<partition>: app/cluster_readside.py asks)
    overview-<partition>.sqlite3 in the worker's state folder: the partition's experience
                      overview, overview.sqlite3's format counted from the details header
                      (Mini-Analytics-Details) of the partition's SDK messages, the stream
                      sequence as its position; storage/overview_store.py (the worker owning
                      the partition writes it and answers the ingest's reads of it on the
                      subject mini_analytics.overview.<partition>: app/cluster_readside.py)

In cluster mode an ingest node's state folder holds only its logs/; a worker's, its logs/
and its partitions' series and overview stores, which it can always count again from the
stream.
"""

import datetime
import os
from pathlib import Path

DATA1 = "data1"
DATA2 = "data2"
TIME_INDEX = "data1.timeindex"
DETAILS = "data1.details"
SEEN = "data1.seen"
SERIES = "series.sqlite3"
OVERVIEW = "overview.sqlite3"
TEMP_SUFFIX = ".tmp"
SET_ASIDE_INFIX = ".bad-"
INGEST_LOCK = "ingest.lock"
WORKER_LOCK = "worker.lock"
LOGS = "logs"

STREAM = "MINI_ANALYTICS"
SUBJECT_PREFIX = "mini_analytics.events."
CHECKPOINT_BUCKET = "mini_analytics_checkpoints"
CHECKPOINT_KEY_PREFIX = "partition."
# In the same bucket: the stream's partitions (storage/stream_setup.py); the key a cluster
# created before the partition count existed recorded them under; and the workers' signs of
# life and the partitions' leases (storage/leases.py).
PARTITIONS_KEY = "config.partitions"
LEGACY_PARTITIONS_KEY = "config.sdk-partitions"
MEMBER_KEY_PREFIX = "member."
LEASE_KEY_PREFIX = "lease."
# Written (empty) before every read of the checkpoints (storage/stream_checkpoint_store.py).
READ_BARRIER_KEY = "read-barrier"
WORKER_PING_PREFIX = "mini_analytics.workers."
SERIES_QUERY_PREFIX = "mini_analytics.series."
OVERVIEW_QUERY_PREFIX = "mini_analytics.overview."
# The header of a message holding an SDK event: its details (storage/details.py's item, with
# the receive time), JSON, ASCII only (as a header must be).
DETAILS_HEADER = "Mini-Analytics-Details"


def partition_subject(partition):
    return SUBJECT_PREFIX + partition


def checkpoint_key(partition):
    return CHECKPOINT_KEY_PREFIX + partition


def partition_names(count):
    """The stream's partitions when it has `count` of them: p1 to p<count>."""
    return [f"p{n}" for n in range(1, count + 1)]


def lease_key(partition):
    return LEASE_KEY_PREFIX + partition


def member_key(member):
    return MEMBER_KEY_PREFIX + member


def worker_ping_subject(partition):
    return WORKER_PING_PREFIX + partition


def series_query_subject(partition):
    return SERIES_QUERY_PREFIX + partition


def overview_query_subject(partition):
    return OVERVIEW_QUERY_PREFIX + partition


class Layout:
    """The paths of one state folder."""

    def __init__(self, root):
        self.root = Path(root)
        self.data1 = self.root / DATA1
        self.data2 = self.root / DATA2
        self.time_index = self.root / TIME_INDEX
        self.details = self.root / DETAILS
        self.seen = self.root / SEEN
        self.series = self.root / SERIES
        self.overview = self.root / OVERVIEW
        self.ingest_lock = self.root / INGEST_LOCK
        self.worker_lock = self.root / WORKER_LOCK

    def partition_series(self, partition):
        """A cluster worker's series store of one partition."""
        return self.root / f"series-{partition}.sqlite3"

    def partition_overview(self, partition):
        """A cluster worker's overview store of one partition."""
        return self.root / f"overview-{partition}.sqlite3"

    def log_file(self, program):
        return self.root / LOGS / f"{program}.log"

    def set_aside(self, path, now=None):
        """Where to keep a rejected file: `<name>.bad-<UTC time>`, unique to the microsecond."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        return path.with_name(path.name + SET_ASIDE_INFIX + now.strftime("%Y%m%dT%H%M%S.%fZ"))


def temp_path(path):
    """The temp file a durable replace of `path` writes first."""
    return Path(f"{path}{TEMP_SUFFIX}")


def names_open_file(path, fd):
    """True if `path` still names the file open on `fd`: it was not replaced or removed.

    Both processes hold data1 open; a file renamed or deleted under them keeps being read or
    written through the old descriptor, so each checks that the name still leads to it.
    """
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
