"""The state folder: every file name in it, in one place (LevelDB's filename.h).

    file              written by                         read by
    data1             storage/log/writer.py (ingest)     storage/log/reader.py (worker)
    data1.timeindex   storage/log/time_index.py's        storage/log/time_index.py's reader
                      writer (ingest, via the log's      (worker; ingest: is the worker
                      writer)                            stalled?)
    data1.details     storage/log/details.py's writer    storage/log/details.py's read_groups
                      (ingest, via the log's writer;     (ingest: the dedupe index) and
                      each group's counted columns by    read_stretch (the worker, for the
                      storage/log/counted.py's encode)   overview: the counted columns)
    data1.seen/       storage/log/seen_index.py (ingest) storage/log/seen_index.py (ingest)
                      a folder: MANIFEST (and MANIFEST.tmp) and <n>.run, named in the
                      module's docstring
    data1.details.bad-<time>, data1.seen.bad-<time>
                      storage/log/details.py,            the operator
                      storage/log/seen_index.py (set
                      aside, never deleted)
    data2             storage/log/checkpoint_store.py    storage/log/checkpoint_store.py
                      (worker: commit)                   (worker: recovery; ingest: read side;
                                                         `python -m worker status`)
    data2.tmp         storage/durable.py (the commit's   nobody: removed by the worker at start
                      temp file, renamed over data2)
    data2.bad-<time>  storage/log/checkpoint_store.py    the operator (a rejected checkpoint,
                      (set aside, never deleted)         kept for inspection)
    series.sqlite3 (and its -wal, -shm)
                      storage/views/series_store.py      storage/views/series_store.py
                      (worker: commit)                   (ingest: /series, /counts?from=)
    series.sqlite3.bad-<time>
                      storage/views/series_store.py      the operator
                      (set aside)
    overview.sqlite3 (and its -wal, -shm)
                      storage/views/overview_store.py    storage/views/overview_store.py
                      (worker: worker/overview.py)       (ingest: /experiences)
    overview.sqlite3.bad-<time>
                      storage/views/overview_store.py    the operator
                      (set aside)
    overview.duckdb (and its .wal; and overview.duckdb.tmp/, DuckDB's while a query passes
                      the MEMORY_LIMIT of the folder's stores), instead of overview.sqlite3 with
                      MINI_ANALYTICS_OVERVIEW_STORE=duckdb
                      storage/views/overview_facts.py    storage/views/overview_facts.py
                      (worker: worker/overview.py)       (worker: worker/overview_answers.py,
                                                         for the ingest's /experiences)
    overview.duckdb.bad-<time> (and its .wal)
                      storage/views/overview_facts.py    the operator
                      (set aside)
    ingest.lock       storage/lockfile.py: held by the ingest; probed by nothing
    worker.lock       storage/lockfile.py: held by the worker (and `rebuild`); probed by the
                      ingest to tell whether a worker is alive
    worker.sock       worker/overview_answers.py listens on it: the overview's reads, which
                      storage/local_messages.py asks for the ingest and `python -m worker
                      status` (overview.duckdb opens in one process only)
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
not in files: storage/stream/names.py names the stream, its subjects and the bucket's keys,
with the module that writes and reads each. A worker's state folder holds its partitions'
stores:

    series-<partition>.sqlite3 in the worker's state folder: the partition's counts over
                      time, series.sqlite3's format with the stream sequence as its offset
                      storage/views/series_store.py (the worker owning the partition writes it and
                      answers the ingest's questions about it on the subject
                      mini_analytics.series.<partition>: app/cluster_readside.py asks)
    overview-<partition>.sqlite3 in the worker's state folder: the partition's experience
                      overview, overview.sqlite3's format counted from the details header
                      (Mini-Analytics-Details) of the partition's SDK messages, the stream
                      sequence as its position; storage/views/overview_store.py (the worker owning
                      the partition writes it and answers the ingest's reads of it on the
                      subject mini_analytics.overview.<partition>: app/cluster_readside.py)
    overview-<partition>.duckdb (and its .wal), instead, with MINI_ANALYTICS_OVERVIEW_STORE=duckdb:
                      the same in overview.duckdb's format, storage/views/overview_facts.py;
                      the worker's stores share one DuckDB, its memory limit and its
                      overview.duckdb.tmp/
    seen-<partition>.sqlite3 in the worker's state folder: which of the partition's SDK
                      events repeat an earlier one (the dedupe at the partition), with the
                      keys of the last window as sorted runs; storage/views/seen_store.py
                      (the worker owning the partition writes and reads it).
                      seen-<partition>-views.sqlite3: the same, from the first message,
                      while the views are counted again

In cluster mode an ingest node's state folder holds only its logs/; a worker's, its logs/
and its partitions' seen, series and overview stores, which it can always count again from
the stream.
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
OVERVIEW_FACTS = "overview.duckdb"
TEMP_SUFFIX = ".tmp"
SET_ASIDE_INFIX = ".bad-"
INGEST_LOCK = "ingest.lock"
WORKER_LOCK = "worker.lock"
WORKER_SOCKET = "worker.sock"
LOGS = "logs"

def partition_names(count):
    """The stream's partitions when it has `count` of them: p1 to p<count>."""
    return [f"p{n}" for n in range(1, count + 1)]


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
        self.overview_facts = self.root / OVERVIEW_FACTS
        # DuckDB's spill folder, shared by the folder's overview.duckdb stores (one DuckDB).
        self.overview_facts_spill = self.root / (OVERVIEW_FACTS + TEMP_SUFFIX)
        self.ingest_lock = self.root / INGEST_LOCK
        self.worker_lock = self.root / WORKER_LOCK
        self.worker_socket = self.root / WORKER_SOCKET

    def partition_series(self, partition):
        """A cluster worker's series store of one partition."""
        return self.root / f"series-{partition}.sqlite3"

    def partition_overview(self, partition):
        """A cluster worker's overview store of one partition."""
        return self.root / f"overview-{partition}.sqlite3"

    def partition_overview_facts(self, partition):
        """The same with MINI_ANALYTICS_OVERVIEW_STORE=duckdb."""
        return self.root / f"overview-{partition}.duckdb"

    def partition_seen(self, partition, views=False):
        """A cluster worker's record of which SDK events of one partition are repeats; with
        `views`, the one its views ask while they are counted again from the first message."""
        return self.root / f"seen-{partition}{'-views' if views else ''}.sqlite3"

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
