"""What the worker's SQLite stores share: series.sqlite3 (storage/views/series_store.py) and
overview.sqlite3 (storage/views/overview_store.py). Each is a view derived from the log, with its
own position in it: the worker alone writes it, the ingest only reads it.

* create() makes an empty store under a temp name and renames it into place durably: a
  reader never sees a store without its tables. open_writer() opens it and checks its
  format's version.
* writer() is the worker's connection: WAL, and synchronous=NORMAL. A commit needs
  atomicity, not durability: the log is the truth, and a power loss that takes the last
  commits back leaves an older position to count on from, as exact.
* transaction() is every write: all of it or none of it.
* set_aside() moves a store that cannot be trusted out of the way, kept for inspection.
* Readers gives each ingest thread its own read-only connection (sqlite3 wants one per
  thread), opened again when the worker replaced the file.
* ExperienceKeys files each project's experiences under keys of their own (KEYS_TABLE), so
  that the stores' tables and their readers are the same with projects as without.
"""

import contextlib
import datetime
import os
import sqlite3
import threading

from storage.durable import move_durably
from storage.layout import temp_path


def sidecars(path):
    """SQLite's write-ahead log and shared-memory index beside a store."""
    return [path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def writer(path):
    db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextlib.contextmanager
def transaction(db):
    """One write transaction on the connection `db` (autocommit mode, as writer() opens it):
    committed when the block ends, rolled back if anything in it (or the commit) raises, and
    the error raised again. BEGIN IMMEDIATE takes the write lock before the first statement,
    so that no statement of the block can fail for want of it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


class Unusable(Exception):
    """The file is not a store this code can trust; the message says why."""


def open_writer(path, version, columns, functions=()):
    """The worker's connection to the store at `path`, with the SQL `functions` ((name,
    two-argument function)) its commits use, and its one state row's `columns`. Raises
    Unusable if it is not a readable store of format `version`."""
    db = None
    try:
        db = writer(path)
        for name, function in functions:
            db.create_function(name, 2, function, deterministic=True)
        rows = db.execute(f"SELECT version, {columns} FROM state").fetchall()
        if len(rows) != 1:
            raise Unusable(f"its state table has {len(rows)} rows, not 1")
        found, *state = rows[0]
        if found != version:
            raise Unusable(f"format version {found!r}; this program reads {version}")
        return db, state
    except (sqlite3.DatabaseError, Unusable) as problem:
        if db is not None:
            db.close()
        if isinstance(problem, Unusable):
            raise
        raise Unusable(f"not a readable store ({problem})") from None


def create(path, schema, first_state, parameters):
    """Make an empty store at `path`: `schema`'s tables, and its state row inserted by
    `first_state` with `parameters`."""
    temp = temp_path(path)
    for leftover in (temp, *sidecars(temp)):
        if leftover.exists():
            os.unlink(leftover)  # from a creation that crashed: never a store
    db = writer(temp)
    db.executescript(schema)
    db.execute(first_state, parameters)
    db.close()  # checkpoints the WAL into the file and removes it
    move_durably(temp, path)


def set_aside(layout, path):
    """Move the (closed) store at `path` aside; return where it went, or None if there was
    none."""
    if not path.exists():
        return None
    aside = layout.set_aside(path)
    move_durably(path, aside)
    for leftover in sidecars(path):  # belong to the store just moved; never replayed
        if leftover.exists():
            os.unlink(leftover)
    return aside


# An experience is filed, in every table of a store, under an integer key: in the default
# project its id (0 to 2**63 - 1; the series' ALL, -1, for all of its events), and in a named
# project (storage/projects.py) a key of its own, -2 and below, given when the store first
# counts it and listed here. Each store gives its own keys, in the same transaction as the
# rows filed under them: a key never outlives or predates its rows.
KEYS_TABLE = """
CREATE TABLE IF NOT EXISTS experience_key (key INTEGER PRIMARY KEY, project TEXT NOT NULL,
    experience INTEGER NOT NULL, UNIQUE (project, experience));
"""
FIRST_PROJECT_KEY = -2


class ExperienceKeys:
    """The worker's side of a store's experience keys: the key of each (project, experience
    id), new ones given as they are asked for and written with the commit that uses them."""

    def __init__(self):
        self._keys = {}  # (project, experience) -> key, of named projects
        self._new = []  # (key, project, experience) given since the last commit
        self._next = FIRST_PROJECT_KEY

    def load(self, db):
        self._keys = {(project, experience): key for key, project, experience
                      in db.execute("SELECT key, project, experience FROM experience_key")}
        self._new = []
        self._next = min(self._keys.values(), default=FIRST_PROJECT_KEY + 1) - 1

    def key(self, project, experience):
        """The key `experience` (an id, or -1 for all of the project's) is filed under."""
        if not project:
            return experience
        key = self._keys.get((project, experience))
        if key is None:
            key = self._keys[project, experience] = self._next
            self._next -= 1
            self._new.append((key, project, experience))
        return key

    def write_new(self, db):
        """Write the keys given since the last commit, inside the commit's transaction."""
        if self._new:
            db.executemany("INSERT INTO experience_key VALUES (?, ?, ?)", self._new)
            self._new = []

    def forget_new(self):
        """The commit that was to write them failed: its keys were never given."""
        for key, project, experience in self._new:
            del self._keys[project, experience]
        self._next += len(self._new)
        self._new = []

    def reset(self, db):
        """Forget every key (the store is emptied, in the caller's transaction)."""
        db.execute("DELETE FROM experience_key")
        self._keys, self._new, self._next = {}, [], FIRST_PROJECT_KEY


def key_of(db, project, experience):
    """The ingest's side: the key `experience` of `project` is filed under in the store open
    on `db`, or None if the store holds nothing of it."""
    if not project:
        return experience
    row = db.execute("SELECT key FROM experience_key WHERE project = ? AND experience = ?",
                     (project, experience)).fetchone()
    return row[0] if row else None


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class Writer:
    """The worker's side of a store, what every store's writer has: where it is, its
    connection once open, closing it, and setting the store aside."""

    def __init__(self, layout, path):
        self.layout = layout
        self.path = path
        self.db = None

    def set_aside(self):
        """Move the store out of the way, kept for inspection; return where it went."""
        self.close()
        return set_aside(self.layout, self.path)

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None


class Readers:
    """The ingest's connections to one store, one per thread."""

    def __init__(self, path):
        self.path = path
        self._local = threading.local()

    def connection(self):
        """This thread's connection, or None while there is no store. Opened again when the
        worker replaced the file (it sets a rejected store aside and starts a new one)."""
        try:
            identity = os.stat(self.path).st_ino
        except FileNotFoundError:
            return None
        local = self._local
        if getattr(local, "identity", None) != identity:
            if getattr(local, "db", None) is not None:
                local.db.close()
            # mode=rw: never create the store (only the worker does); query_only: never
            # write to it either.
            local.db = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=5,
                                       isolation_level=None, check_same_thread=False)
            local.db.execute("PRAGMA query_only=1")
            local.identity = identity
        return local.db
