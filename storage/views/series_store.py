"""series.sqlite3: how many events happened when, per minute and per hour, for all events
together and per experience. The worker is its one writer; the ingest's read side reads it.

Format (version 2), SQLite in WAL mode:

    minute(bucket, experience, count)   bucket: Unix second at the minute's start (UTC)
    hour(bucket, experience, count)     bucket: Unix second at the hour's start
    state(version, offset, fingerprint, events, newest_minute, updated_at), one row
    experience_key(key, project, experience)
                                        a named project's experiences' keys
                                        (storage/views/derived_store.py: ExperienceKeys)
    project_minute(project, newest_minute)
                                        a named project's newest minute with events (the
                                        default project's is the state's)

    experience is the experience id, or -1 (ALL) for all events together, in the default
    project; a key in experience_key in a named one (its ALL too). Only buckets that
    have events have rows. Keyed by bucket first: a commit appends at the end (new minutes),
    a range of time is one range of the key, and one experience's series is one seek per
    bucket. Minute rows older than the retention before the newest minute with events of
    their project are dropped (each project's minutes are kept by its own events, none by
    another's); hour rows are kept for good.

Invariants, true at every commit because the buckets and the offset change in one SQLite
transaction (atomic, like data2's rename):

    the hour and minute rows == the events of data1[0:offset], each in the bucket of the
                                second its time index gives it
    sum of hour rows of ALL  == events (the default project's)

data1 is the source of truth and this store is derived from it, as data2 is: a commit needs
atomicity, not durability (synchronous=NORMAL). A power loss may take the last commits
back; the worker then counts on from the older offset, which is as exact.
"""

import collections

from storage.layout import Layout
from storage.views import derived_store
from storage.views.derived_store import utc_now

VERSION = 2
ALL = -1
MINUTE, HOUR = 60, 3600
TABLES = {MINUTE: "minute", HOUR: "hour"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS minute (bucket INTEGER NOT NULL, experience INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (bucket, experience)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hour (bucket INTEGER NOT NULL, experience INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (bucket, experience)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (version INTEGER NOT NULL, offset INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, events INTEGER NOT NULL, newest_minute INTEGER NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS project_minute (project TEXT PRIMARY KEY,
    newest_minute INTEGER NOT NULL) WITHOUT ROWID;
""" + derived_store.KEYS_TABLE

UPSERT = ("INSERT INTO {table} (bucket, experience, count) VALUES (?, ?, ?) "
          "ON CONFLICT (bucket, experience) DO UPDATE SET count = count + excluded.count")


class CorruptSeries(Exception):
    """series.sqlite3 exists but cannot be trusted; the message says why."""


class SeriesState(collections.namedtuple(
        "SeriesState", "offset fingerprint events newest_minute")):
    """The store's one-row state table: where it stands in data1, and what it holds."""


STATE_COLUMNS = ", ".join(SeriesState._fields)  # read in this order into a SeriesState


class SeriesStore(derived_store.Writer):
    """The worker's side: open (or create), commit increments with their offset, set aside."""

    def __init__(self, state_dir, minute_retention, path=None):
        """`path`: the store's file, series.sqlite3 in the state folder unless given (a
        cluster worker keeps one per partition: Layout.partition_series)."""
        layout = Layout(state_dir)
        super().__init__(layout, path or layout.series)
        self.minute_retention = minute_retention
        self.keys = derived_store.ExperienceKeys()

    def open(self, empty_fingerprint):
        """Open the store, creating it empty if missing; return its SeriesState.

        Raises CorruptSeries if the file is not a store this code can trust.
        """
        if not self.path.exists():
            self._create(empty_fingerprint)
        try:
            self.db, state = derived_store.open_writer(self.path, VERSION, STATE_COLUMNS)
        except derived_store.Unusable as problem:
            raise CorruptSeries(str(problem)) from None
        self.keys.load(self.db)
        return SeriesState(*state)

    def _create(self, empty_fingerprint):
        derived_store.create(self.path, SCHEMA, "INSERT INTO state VALUES (?, 0, ?, 0, 0, '')",
                             (VERSION, empty_fingerprint))

    def commit(self, minute_rows, hour_rows, offset, fingerprint):
        """Add the rows ([(bucket start, experience, count)] in bucket order, `experience` an
        id or ALL, or (project, id or ALL) of a named project: worker/tally.py's) to the minute
        and hour buckets and move the offset to `offset`, in one transaction. The caller has
        made data1 durable up to `offset`."""
        db = self.db
        added = sum(count for _, experience, count in hour_rows if experience == ALL)
        newest = {}  # project -> its newest minute in these rows, from its ALL rows
        for bucket, experience, _ in minute_rows:
            if experience == ALL:
                newest[""] = bucket
            elif type(experience) is tuple and experience[1] == ALL:
                newest[experience[0]] = bucket
        minute_rows, hour_rows = self._keyed(minute_rows), self._keyed(hour_rows)
        try:
            with derived_store.transaction(db):
                self.keys.write_new(db)
                db.executemany(UPSERT.format(table="minute"), minute_rows)
                db.executemany(UPSERT.format(table="hour"), hour_rows)
                db.execute("UPDATE state SET offset = ?, fingerprint = ?, events = events + ?, "
                           "newest_minute = max(newest_minute, ?), updated_at = ?",
                           (offset, fingerprint, added, newest.pop("", 0), utc_now()))
                # Kept relative to the newest event, not to the clock: a recount from data1
                # keeps exactly the same minutes.
                db.execute("DELETE FROM minute WHERE bucket < "
                           "(SELECT newest_minute FROM state) - ? AND experience >= -1",
                           (self.minute_retention,))
                for project, minute in newest.items():
                    db.execute("INSERT INTO project_minute VALUES (?, ?) ON CONFLICT "
                               "(project) DO UPDATE SET newest_minute = max(newest_minute, "
                               "excluded.newest_minute)", (project, minute))
                    db.execute("DELETE FROM minute WHERE bucket < (SELECT newest_minute FROM "
                               "project_minute WHERE project = ?) - ? AND experience IN "
                               "(SELECT key FROM experience_key WHERE project = ?)",
                               (project, self.minute_retention, project))
        except BaseException:
            self.keys.forget_new()
            raise

    def _keyed(self, rows):
        """The rows with each named project's experience as its key."""
        key = self.keys.key
        return [row if type(row[1]) is int else (row[0], key(*row[1]), row[2]) for row in rows]

    def reset(self, empty_fingerprint):
        """Empty the store and its offset in one transaction (for a recount from 0)."""
        with derived_store.transaction(self.db) as db:
            self.keys.reset(db)
            db.execute("DELETE FROM project_minute")
            db.execute("DELETE FROM minute")
            db.execute("DELETE FROM hour")
            db.execute("UPDATE state SET offset = 0, fingerprint = ?, events = 0, "
                       "newest_minute = 0, updated_at = ?", (empty_fingerprint, utc_now()))



class SeriesReader:
    """The ingest's side: sums of buckets, read in one snapshot per question."""

    def __init__(self, state_dir, path=None):
        self.path = path or Layout(state_dir).series
        self._db = derived_store.Readers(self.path).connection

    def buckets(self, step, experience, start, end, project=""):
        """{bucket start: count} of the `step` table (MINUTE or HOUR) in [start, end), of
        `experience` (an id, or ALL) of `project`."""
        db = self._db()
        if db is None:
            return {}
        experience = derived_store.key_of(db, project, experience)
        if experience is None:
            return {}
        first = start - start % step
        # One key seek per bucket of the range (the buckets are generated, not scanned): as
        # fast for one experience among 10,000 as for all events.
        rows = db.execute(
            "WITH RECURSIVE wanted(bucket) AS (SELECT ? UNION ALL SELECT bucket + ? FROM wanted "
            f"WHERE bucket + ? < ?) SELECT s.bucket, s.count FROM wanted CROSS JOIN "
            f"{TABLES[step]} AS s ON s.bucket = wanted.bucket AND s.experience = ?",
            (first, step, step, end, experience))
        return dict(rows.fetchall())

    def counts(self, step, start, end, project=""):
        """{experience id: count} of `project` over the `step` table's buckets in
        [start, end)."""
        db = self._db()
        if db is None:
            return {}
        if not project:
            rows = db.execute(f"SELECT experience, sum(count) FROM {TABLES[step]} "
                              "WHERE bucket >= ? AND bucket < ? AND experience >= 0 "
                              "GROUP BY experience", (start, end))
            return dict(rows.fetchall())
        rows = db.execute(f"SELECT k.experience, sum(s.count) FROM {TABLES[step]} AS s JOIN "
                          "experience_key AS k ON k.key = s.experience WHERE s.bucket >= ? "
                          "AND s.bucket < ? AND k.project = ? AND k.experience >= 0 "
                          "GROUP BY k.experience", (start, end, project))
        return dict(rows.fetchall())

    def state(self, project=""):
        """The store's SeriesState, or None while there is no store; its newest_minute is
        `project`'s."""
        db = self._db()
        if db is None:
            return None
        state = SeriesState(*db.execute(f"SELECT {STATE_COLUMNS} FROM state").fetchone())
        if project:
            row = db.execute("SELECT newest_minute FROM project_minute WHERE project = ?",
                             (project,)).fetchone()
            state = state._replace(newest_minute=row[0] if row else 0)
        return state

    @staticmethod
    def position(state):
        """Where counts read at `state` stand in the log, as /counts reports it."""
        return {"offset": state.offset}
