"""overview.duckdb: the experience overview kept as its screen views (facts), in DuckDB.

The worker is its one writer and, since DuckDB lets one process at a time open a database,
its one reader too: the worker answers the overview's reads (storage/views/overview_store.py
keeps rows of every answer up to date at each commit instead; docs/benchmarks.md, "The views
as facts in a column store", measures both).

It is derived from the SDK events as sent, and stands at a position of its own in them, as
overview.sqlite3 does: an offset in data1.details on one machine, a stream sequence in
cluster mode (a store per partition).

Format (version 2), a DuckDB database. Times are Unix seconds, device time.

    fact      (experience, moment, device, carried, screen, revision): one row per screen
              view counted, each once: the experience's key (derived_store.ExperienceKeys),
              the install (storage/views/sketches.person_key of "anon:" + its anonymousID),
              the userID key the view carried (0 if none), and its screen and revision ids as
              codes of `text` ("" for a missing one)
    text      (code, text): the screen and revision ids, each once
    link      (device, user, moment): an install's links to a userID (worker/people.py), a
              row per pair and commit with the earliest moment the commit saw; a pair's
              first link is the least of its rows
    person    (device, person): each linked install's person, the userID key its views
              count as when they carry none (worker/people.py's rule)
    session   (experience, device, first, last, views, began_on, first_screen): every
              session of every install (worker/sessions.py's rule: the maximal runs of an
              install's views of an experience with no gap longer than the timeout), its
              first and last moment, how many views, the revision and screen codes of its
              first view
    name      (experience, screen, moment, name): names as seen, a row per commit and name
              with its latest moment; the latest by (moment, name) is the name
    experience_key  as in the other derived stores
    state     one row: version, session_timeout, source, position, log_end, events,
              set_aside, updated_at (as overview.sqlite3's)

Invariants, true at every commit because everything changes in one DuckDB transaction:

    fact      == the screen views before position in the source, each once
    session   == the sessions of fact's views by the rule, with the store's session_timeout:
              a commit merges its views with the sessions they can join (sessions_of),
              whatever order and however late they came
    link      holds every link before position
    person    == the rule applied to link: a commit works it out again for every install
              linked to a user its links name

A view's identification and the people of any range are worked out when asked, from fact
and person: a late login changes an install's person row, and needs no recount.

Like the other derived stores, a commit needs atomicity, not durability (DuckDB commits
through its write-ahead log; docs/benchmarks.md has it through SIGKILLs and power losses).
"""

import collections
import contextlib
import itertools
import threading

import duckdb
import numpy

from storage.durable import move_durably
from storage.layout import Layout
from storage.views import derived_store
from storage.views.overview_store import (MAX_INSTALLS_PER_USER, MAX_POSITION, WHOLE,
                                          CorruptOverview)
from storage.views.sketches import EXACT_DURATION_BELOW, encode_distinct, encode_histogram
from storage.views.derived_store import utc_now

VERSION = 2  # 2: session.first_screen, so that a commit need not read a session's views
# DuckDB's own memory (its cache of the stores' blocks, and what a query holds), past which it
# evicts blocks and spills to disk (Layout.overview_facts_spill): by default 80 % of the
# machine's, so a worker's memory would grow with its store. On the bench's backlog (2 M
# events): peak RSS 237 -> 227 MB over the catch-up, its reads 0 to 5 % slower. It is a
# DuckDB instance's, and the stores of a folder share one (_Folder): a cluster worker's, one
# a partition, would otherwise cache up to it each.
MEMORY_LIMIT = "128MB"

SCHEMA = """
CREATE TABLE fact (experience BIGINT NOT NULL, moment BIGINT NOT NULL, device BIGINT NOT NULL,
    carried BIGINT NOT NULL, screen INTEGER NOT NULL, revision INTEGER NOT NULL);
CREATE TABLE text (code INTEGER NOT NULL, text VARCHAR NOT NULL);
CREATE TABLE link (device BIGINT NOT NULL, user_key BIGINT NOT NULL, moment BIGINT NOT NULL);
CREATE TABLE person (device BIGINT NOT NULL, person BIGINT NOT NULL);
CREATE TABLE session (experience BIGINT NOT NULL, device BIGINT NOT NULL,
    first BIGINT NOT NULL, last BIGINT NOT NULL, views BIGINT NOT NULL,
    began_on INTEGER NOT NULL, first_screen INTEGER NOT NULL);
CREATE TABLE name (experience BIGINT NOT NULL, screen VARCHAR NOT NULL,
    moment BIGINT NOT NULL, name VARCHAR NOT NULL);
CREATE TABLE experience_key (key INTEGER NOT NULL, project VARCHAR NOT NULL,
    experience BIGINT NOT NULL);
CREATE TABLE state (version INTEGER NOT NULL, session_timeout INTEGER NOT NULL,
    source BLOB NOT NULL, position BIGINT NOT NULL, log_end BIGINT NOT NULL,
    events BIGINT NOT NULL, set_aside BIGINT NOT NULL, updated_at VARCHAR NOT NULL);
"""

OverviewState = collections.namedtuple(
    "OverviewState", "session_timeout source position log_end events set_aside")

# The stored sessions (s) that a commit's views of an (experience, device) pair, from `lo` to
# `hi` (t: a row of `touched`), can join: those within the timeout of them. Any other keeps
# its gap of more than the timeout to them, and so its views and its boundaries.
_NEAR = ("s.experience = t.experience AND s.device = t.device "
         "AND s.last >= t.lo - $timeout AND s.first <= t.hi + $timeout")


def sessions_of(views, timeout, ranks, sessions=None):
    """The session table's rows (columns, as arrays) of `views` (columns experience, device,
    moment, screen and revision code, as arrays) merged with `sessions` (the table's
    columns): the stored sessions of their (experience, device) pairs that they can join.

    A view begins a session when it is its pair's first, or more than `timeout` after the
    latest moment before it (a stored session stands for its views: its moments run from
    first to last, with no gap longer than the timeout between them). A session begins on
    the revision of its first view by (moment, screen id, revision id), worker/sessions.py's
    order within a second, which `ranks` (a code's place among the texts) gives. Views of
    one second are never parted: their gap is 0. So a commit reads none of the views of the
    sessions it extends, which grow with an install's use."""
    parts = [(views["experience"], views["device"], views["moment"], views["moment"],
              numpy.ones(len(views["moment"]), numpy.int64), views["screen"],
              views["revision"])]
    if sessions is not None:
        parts.append((sessions["experience"], sessions["device"], sessions["first"],
                      sessions["last"], sessions["views"], sessions["first_screen"],
                      sessions["began_on"]))
    experience, device, start, end, count, screen, revision = (
        numpy.concatenate(column) for column in zip(*parts))
    order = numpy.lexsort((ranks[revision], ranks[screen], start, device, experience))
    experience, device, start, end, count, screen, revision = (
        column[order] for column in (experience, device, start, end, count, screen, revision))
    new_pair = numpy.ones(len(order), bool)
    new_pair[1:] = (experience[1:] != experience[:-1]) | (device[1:] != device[:-1])
    # The latest moment reached within its pair up to each item (a stored session's last,
    # not the start of the view just before, when views landed inside it): one running
    # maximum for every pair at once, over the ends' ranks offset by the pair's place, so
    # that each pair's values are above every earlier pair's and none carries over.
    moments, rank = numpy.unique(end, return_inverse=True)
    pair = numpy.cumsum(new_pair) - 1
    reached = moments[numpy.maximum.accumulate(pair * len(moments) + rank) % len(moments)]
    begins = new_pair.copy()
    begins[1:] |= start[1:] - reached[:-1] > timeout
    first = numpy.flatnonzero(begins)
    last = numpy.append(first[1:], len(order)) - 1
    return {"experience": experience[first], "device": device[first],
            "first": start[first], "last": reached[last],
            "views": numpy.add.reduceat(count, first), "began_on": revision[first],
            "first_screen": screen[first]}


# The person of each install in the table relinked: the user of its first link by device
# time (ties: the smaller key), among users linked from at most MAX_INSTALLS_PER_USER
# installs (worker/people.py).
_PERSONS = f"""
WITH first_links AS (
    SELECT device, user_key, min(moment) AS moment FROM link SEMI JOIN relinked USING (device)
    GROUP BY device, user_key),
crowded AS (
    SELECT user_key FROM link WHERE user_key IN (SELECT user_key FROM first_links)
    GROUP BY user_key HAVING count(DISTINCT device) > {MAX_INSTALLS_PER_USER})
SELECT device, arg_min(user_key, (moment, user_key)) AS person FROM first_links
WHERE user_key NOT IN (SELECT user_key FROM crowded) GROUP BY device
"""


def read_state(path):
    """The OverviewState of the store at `path` when no process holds it open, or None if
    there is none. Raises duckdb.Error if it cannot be read (held by a worker, damaged)."""
    if not path.exists():
        return None
    with duckdb.connect(str(path), read_only=True) as db:
        (state,) = db.execute(
            "SELECT session_timeout, source, position, log_end, events, set_aside FROM state"
        ).fetchall()
    return OverviewState(*state)


_NO_LINKS = numpy.array([], dtype=numpy.int64)


class Batch:
    """A commit's facts, gathered as columns: its screen views and links (worker/sdk_events.py's
    SdkEvents), and the latest names it saw."""

    def __init__(self):
        self.experience, self.moment, self.device, self.carried = [], [], [], []
        self.screen, self.revision = [], []
        # (device, user, moment) arrays: each (device, user) pair once, with the earliest
        # moment seen
        self.links = (_NO_LINKS,) * 3
        self.names = {}  # (experience, screen) -> (moment, name), the latest
        # and the latest names of the counted columns, as arrays (experience, screen,
        # moment, name) each: the table keeps a name's rows, and its reads take the latest
        self.named = []
        self.events = 0
        self.set_aside = 0

    def __len__(self):
        return len(self.moment)


class FactStore:
    """The worker's side: open (or create), commit a Batch with the source's new position,
    reset; and the reads."""

    def __init__(self, path):
        self.path = path
        self.db = None  # a connection of its folder's DuckDB, using the store (_Folder)
        self._alias = None
        self.keys = derived_store.ExperienceKeys()
        self._codes = {}  # text -> code
        self._new_codes = []
        self._ranks = None  # _text_ranks(), until a code is made or forgotten
        self.timeout = None
        self._reading = threading.Lock()  # held by a read (reading()) and by close()

    def open(self, session_timeout):
        """Open the store, creating it empty (for `session_timeout`) if missing; return its
        OverviewState. Raises CorruptOverview if the file is not a store this code can
        trust (then it is closed)."""
        fresh = not self.path.exists()
        try:
            self.db, self._alias = _Folder.attach(self.path)
            if fresh:
                with self._transaction() as db:
                    db.execute(SCHEMA)
                    db.execute("INSERT INTO state VALUES (?, ?, ''::BLOB, 0, 0, 0, 0, ?)",
                               [VERSION, session_timeout, utc_now()])
            rows = self.db.execute(
                "SELECT version, session_timeout, source, position, log_end, events, "
                "set_aside FROM state").fetchall()
            if len(rows) != 1:
                raise derived_store.Unusable(f"its state table has {len(rows)} rows, not 1")
            (version, *state), = rows
            if version != VERSION:
                raise derived_store.Unusable(f"format version {version}, not {VERSION}")
            self.keys.load(_Rows(self.db))
            self._codes = dict(self.db.execute("SELECT text, code FROM text").fetchall())
            self._ranks = None
        except (duckdb.Error, derived_store.Unusable) as problem:
            # duckdb.IOException among them: another process holds the store (a worker
            # still running), which the caller must not take for damage.
            if isinstance(problem, duckdb.IOException) and "lock" in str(problem):
                raise
            self.close()
            raise CorruptOverview(f"{type(problem).__name__}: {problem}") from None
        self.timeout = state[0]
        return OverviewState(*state)

    def set_aside(self):
        """Move the store (closed) and its write-ahead log out of the way together, kept
        for inspection; return where the store went."""
        self.close()
        if not self.path.exists():
            return None
        aside = Layout(self.path.parent).set_aside(self.path)
        wal = self.path.with_name(self.path.name + ".wal")
        # The log first: were it left behind alone, DuckDB would replay it into the new
        # store. The store without it is the store at its last checkpoint, still whole.
        if wal.exists():
            move_durably(wal, aside.with_name(aside.name + ".wal"))
        move_durably(self.path, aside)
        return aside

    @staticmethod
    def batch():
        """An empty Batch, for the next commit."""
        return Batch()

    def code(self, text):
        """The code of a screen or revision id, a new one written with the next commit."""
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self._codes)
            self._new_codes.append((code, text))
            self._ranks = None
        return code

    def _text_ranks(self):
        """Each code's place among the texts in their order (an array indexed by code): the
        order of screen and revision ids within a second, as worker/sessions.py sorts them
        (Python orders str by code point, as DuckDB orders VARCHAR by UTF-8 bytes)."""
        if self._ranks is None:
            texts = sorted(self._codes.items())
            self._ranks = numpy.empty(len(texts), numpy.int64)
            self._ranks[[code for _, code in texts]] = numpy.arange(len(texts))
        return self._ranks

    def commit(self, batch, source, position, log_end):
        """Add `batch` and move the position, in one transaction: the facts, links and
        names appended, and its views merged with the stored sessions they can join
        (sessions_of). Returns how many users its links made crowded (linked from more than
        MAX_INSTALLS_PER_USER installs)."""
        try:
            with self._transaction() as db:
                self.keys.write_new(_Rows(db))
                if self._new_codes:
                    codes, texts = zip(*self._new_codes)
                    _append(db, "text", code=numpy.array(codes, dtype=numpy.int32),
                            text=list(texts))
                if len(batch):
                    facts = {"experience": numpy.array(batch.experience, dtype=numpy.int64),
                             "moment": numpy.array(batch.moment, dtype=numpy.int64),
                             "device": numpy.array(batch.device, dtype=numpy.int64),
                             "carried": numpy.array(batch.carried, dtype=numpy.int64),
                             "screen": numpy.array(batch.screen, dtype=numpy.int32),
                             "revision": numpy.array(batch.revision, dtype=numpy.int32)}
                    db.register("batch_facts", facts)  # read whole, twice
                    try:
                        db.execute(f"INSERT INTO fact SELECT {', '.join(facts)} FROM "
                                   "batch_facts")
                        db.execute("CREATE TEMP TABLE touched AS SELECT experience, device, "
                                   "min(moment) AS lo, max(moment) AS hi FROM batch_facts "
                                   "GROUP BY experience, device")
                    finally:
                        db.unregister("batch_facts")
                    # Taken out and given back merged: one pass over the session table.
                    joined = db.execute(f"DELETE FROM session AS s USING touched AS t WHERE "
                                        f"{_NEAR} RETURNING s.*",
                                        {"timeout": self.timeout}).fetchnumpy()
                    _append(db, "session", **sessions_of(facts, self.timeout,
                                                         self._text_ranks(), joined))
                    db.execute("DROP TABLE touched")
                crowding = 0
                devices, users, moments = batch.links
                if len(devices):
                    db.register("linked_users", {"user_key": users})
                    installs_of = (f"SELECT count(*) FROM (SELECT user_key FROM link SEMI JOIN "
                                   f"linked_users USING (user_key) GROUP BY user_key HAVING "
                                   f"count(DISTINCT device) > {MAX_INSTALLS_PER_USER})")
                    (crowded_before,), = db.execute(installs_of).fetchall()
                    _append(db, "link", device=devices, user_key=users, moment=moments)
                    (crowded_after,), = db.execute(installs_of).fetchall()
                    crowding = crowded_after - crowded_before
                    # An install's person hangs on its own links and on whether each user
                    # it is linked to is crowded, which only that user's new links change:
                    # so the installs linked to a user of this commit's links are all whose
                    # person can have changed.
                    db.execute("CREATE TEMP TABLE relinked AS SELECT DISTINCT device FROM "
                               "link SEMI JOIN linked_users USING (user_key)")
                    db.unregister("linked_users")
                    db.execute("DELETE FROM person AS p USING relinked AS r "
                               "WHERE p.device = r.device")
                    db.execute("INSERT INTO person " + _PERSONS)
                    db.execute("DROP TABLE relinked")
                named = list(batch.named)
                if batch.names:
                    (experiences, screens), latest = zip(*batch.names), batch.names.values()
                    moments, names = zip(*latest)
                    named.append((numpy.array(experiences, numpy.int64),
                                  numpy.array(screens, object),
                                  numpy.array(moments, numpy.int64), numpy.array(names, object)))
                if named:
                    experience, screen, moment, name = map(numpy.concatenate, zip(*named))
                    _append(db, "name", experience=experience, screen=screen, moment=moment,
                            name=name)
                db.execute("UPDATE state SET source = ?, position = ?, log_end = ?, "
                           "events = events + ?, set_aside = set_aside + ?, updated_at = ?",
                           [source, position, log_end, batch.events, batch.set_aside,
                            utc_now()])
        except BaseException:
            self.keys.forget_new()
            for code, text in self._new_codes:
                del self._codes[text]
            self._ranks = None
            raise
        finally:
            self._new_codes = []
        return crowding

    def reset(self, session_timeout):
        """Empty the store and its position in one transaction (for a recount)."""
        with self._transaction() as db:
            self.keys.reset(_Rows(db))
            for table in ("fact", "text", "link", "person", "session", "name"):
                db.execute(f"DELETE FROM {table}")
            db.execute("UPDATE state SET session_timeout = ?, source = ''::BLOB, position = 0, "
                       "log_end = 0, events = 0, set_aside = 0, updated_at = ?",
                       [session_timeout, utc_now()])
        self._codes, self._new_codes, self.timeout = {}, [], session_timeout
        self._ranks = None

    @contextlib.contextmanager
    def reading(self):
        """A cursor of the store for one read (from any thread), closed after it. Closing
        the store (or setting it aside) waits for it: it detaches the store, which would
        end a read still running."""
        with self._reading:
            if self.db is None:
                raise CorruptOverview(f"{self.path.name} is closed (being set aside?)")
            cursor = self.db.cursor()
            try:
                cursor.execute(f"USE {self._alias}")  # a new connection uses none
                yield cursor
            finally:
                cursor.close()

    def close(self):
        with self._reading:
            if self.db is not None:
                _Folder.detach(self.path, self.db, self._alias)
                self.db = self._alias = None

    def _transaction(self):
        return _transaction(self.db)


class _Folder:
    """The DuckDB database instance of a folder's stores, each ATTACHed to it under an alias
    of its own: DuckDB's MEMORY_LIMIT and its spill folder are an instance's, so a cluster
    worker's stores (one a partition) share one limit rather than each caching up to its
    own. Closed when its last store is detached (a closed store's file is free for another
    process, or for being set aside). Each store keeps its own file and write-ahead log, so
    a commit is still one store's transaction, atomic as before."""

    _open = {}  # folder -> [the instance's connection, how many stores are attached]
    _lock = threading.Lock()
    _aliases = itertools.count()

    @classmethod
    def attach(cls, path):
        """(A connection using the store at `path`, its alias), the store attached (created
        if missing). Raises duckdb.Error if it cannot be (damaged, held by a process)."""
        with cls._lock:
            folder = path.parent
            if folder not in cls._open:
                cls._open[folder] = [duckdb.connect(":memory:", config={
                    "threads": 1, "memory_limit": MEMORY_LIMIT,
                    "temp_directory": str(Layout(folder).overview_facts_spill)}), 0]
            instance = cls._open[folder]
            alias = f"store_{next(cls._aliases)}"
            db = instance[0].cursor()
            instance[1] += 1
        attached = None
        try:
            db.execute(f"ATTACH '{_sql_text(path)}' AS {alias}")
            attached = alias
            db.execute(f"USE {alias}")
        except BaseException:
            cls.detach(path, db, attached)
            raise
        return db, alias

    @classmethod
    def detach(cls, path, db, alias):
        """Detach the store attached as `alias` (None: it was not) and close `db`; the
        instance with it if it was its folder's last."""
        try:
            if alias is not None:
                db.execute("USE memory")  # the instance's own, which is never detached
                db.execute(f"DETACH {alias}")
        finally:
            db.close()
            with cls._lock:
                instance = cls._open[path.parent]
                instance[1] -= 1
                if instance[1] == 0:
                    del cls._open[path.parent]
                    instance[0].close()


def _sql_text(path):
    """`path` as the text of an SQL string literal."""
    return str(path).replace("'", "''")


def _append(db, table, **columns):
    """Append `columns` (name: a numpy array or a list, the table's columns in its order)
    to `table`: DuckDB reads them whole, where executemany() would run a statement a row."""
    db.register("appending", {name: values if type(values) is numpy.ndarray
                              else numpy.array(values, dtype=object)
                              for name, values in columns.items()})
    try:
        db.execute(f"INSERT INTO {table} SELECT {', '.join(columns)} FROM appending")
    finally:
        db.unregister("appending")


class _transaction:
    """One transaction on `db`: committed when the block ends, rolled back if anything in
    it raises."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN TRANSACTION")
        return self.db

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


# The views of the sessions `chosen` (t: session) selects: each view's install, the first
# moment of its session (with the install, the session's name), its moment, its screen's
# code, the session's first revision's code, its position in the session, and the next
# view's screen code and moment (none for a session's last). The order within a second is
# worker/sessions.py's: by screen id, then revision id.
FLOW_VIEWS = """
WITH chosen AS (
    SELECT t.experience, t.device, t.first, t.last, t.began_on FROM session AS t
    WHERE {chosen}),
views AS (
    SELECT f.device, f.moment, f.screen, c.first, c.began_on, s.text AS screen_id,
        r.text AS revision_id
    FROM fact AS f JOIN chosen AS c ON f.experience = c.experience AND f.device = c.device
        AND f.moment BETWEEN c.first AND c.last
    JOIN text AS s ON s.code = f.screen JOIN text AS r ON r.code = f.revision)
SELECT device, first, moment, screen, began_on, row_number() OVER session AS position,
    lead(screen) OVER session AS next_screen, lead(moment) OVER session AS next_moment
FROM views WINDOW session AS (PARTITION BY device, first ORDER BY moment, screen_id, revision_id)
"""


class _Rows:
    """A DuckDB connection as derived_store.ExperienceKeys uses one: execute() gives the
    rows."""

    def __init__(self, db):
        self.db = db

    def execute(self, statement, parameters=()):
        return self.db.execute(statement, list(parameters)).fetchall()

    def executemany(self, statement, rows):
        self.db.executemany(statement, [list(row) for row in rows])


# The joins that give a fact's screen id (s.text) and revision id (r.text).
_SCREEN = "JOIN text AS s ON s.code = t.screen"
_REVISION = "JOIN text AS r ON r.code = t.revision"
_NO_ONE = encode_distinct(numpy.array([], dtype=numpy.int64))


def _people(db, groups, joins, where, parameters):
    """{(group's values): (people, identified)} of the facts (t) `where` selects, by the
    SQL expressions `groups`, both encoded (storage/views/sketches.py). A view is counted
    as its userID, else its install's person, else its
    install (worker/people.py); identified if it is one of the first two."""
    named = ", ".join(f"{group} AS g{index}" for index, group in enumerate(groups))
    # The distinct (group, person) pairs, brought over as columns: a Python object a person
    # would cost more than DuckDB's whole query.
    columns = db.execute(
        f"SELECT DISTINCT {named}, CASE WHEN t.carried != 0 THEN t.carried ELSE "
        "coalesce(p.person, t.device) END AS who, (t.carried != 0 OR p.person IS NOT NULL) "
        f"AS identified FROM fact AS t LEFT JOIN person AS p USING (device) {joins} "
        f"WHERE {where} ORDER BY ALL", parameters).fetchnumpy()
    who, identified = columns["who"], columns["identified"]
    return {key: (encode_distinct(who[first:last]),
                  encode_distinct(who[first:last][identified[first:last]]))
            for key, first, last in _runs(columns, len(groups))}


def _sessions(db, groups, joins, where, parameters):
    """{(group's values): [sessions, duration_sum, session_screens, bounces, durations]} of
    the sessions (t) `where` selects, by the SQL expressions `groups`; durations encoded
    (storage/views/sketches.py)."""
    named = ", ".join(f"{group} AS g{index}" for index, group in enumerate(groups))
    chosen = (f"WITH chosen AS (SELECT {named}, t.last - t.first AS duration, t.views "
              f"FROM session AS t {joins} WHERE {where}) ")
    figures = {tuple(key): [sessions, duration_sum, screens, bounces, b""]
               for *key, sessions, duration_sum, screens, bounces in db.execute(
                   chosen + "SELECT * EXCLUDE (duration, views), count(*), sum(duration), "
                   "sum(views), count(*) FILTER (WHERE views = 1) FROM chosen GROUP BY ALL",
                   parameters).fetchall()}
    for key, durations in _histograms(
            db, chosen + "SELECT * EXCLUDE (duration, views), duration AS value FROM chosen",
            parameters).items():
        figures[key][4] = durations
    return figures


def _histograms(db, values, parameters):
    """{(group's values): histogram, encoded as sketches.encode_durations does} of the query
    `values`: its columns g0, g1, ... name a group, `value` is a duration (or a position)."""
    columns = db.execute(
        f"SELECT * EXCLUDE (value), {_DURATION_BUCKET} AS bucket, count(*) AS sessions "
        f"FROM ({values}) GROUP BY ALL ORDER BY ALL", parameters).fetchnumpy()
    return {key: encode_histogram(columns["bucket"][first:last],
                                  columns["sessions"][first:last])
            for key, first, last in _runs(columns, len(columns) - 2)}


# sketches.duration_bucket(value), in SQL: a value below EXACT_DURATION_BELOW (2**12) is
# its own bucket, a larger one keeps its 12 leading bits.
_DURATION_BUCKET = "CASE WHEN value < 4096 THEN value " + " ".join(
    f"WHEN value < {1 << (bits + 1)} THEN value >> {bits - 11} << {bits - 11}"
    for bits in range(12, 63)) + " END"
assert EXACT_DURATION_BELOW == 4096


def _runs(columns, groups):
    """[(values, first, last)]: the runs of rows with the same values of the columns g0, g1,
    ... (`groups` of them) in `columns` (numpy arrays, ordered by those first)."""
    values = [columns[f"g{index}"] for index in range(groups)]
    rows = len(values[0])
    changes = numpy.zeros(max(rows - 1, 0), dtype=bool)
    for column in values:
        changes |= column[1:] != column[:-1]
    starts = [0, *(numpy.flatnonzero(changes) + 1).tolist()] if rows else []
    keys = zip(*(column[starts].tolist() for column in values))
    return list(zip(keys, starts, starts[1:] + [rows]))


class FactReader:
    """The overview's reads (storage/views/overview_store.READS, the rows
    app/overview_query.py and app/flow_query.py merge), worked out from the facts: a row
    where overview.sqlite3 keeps a bucket's row, its people encoded as
    storage/views/sketches.py's People (exact up to EXACT_LIMIT). Reads `store` (a
    FactStore) through its reading()."""

    def __init__(self, store):
        self.store = store

    def run(self, calls, project=""):
        """The rows of each read in `calls` ([(name, *arguments)]) of `project`'s
        experiences, all from one snapshot."""
        # Closing the cursor ends its transaction, which wrote only temporary tables.
        with self.store.reading() as db:
            db.execute("BEGIN TRANSACTION")
            reads = _FactReads(db, project)
            return [list(getattr(reads, name)(*arguments)) for name, *arguments in calls]


class _FactReads:
    """The reads of one run(): what several reads of a question share (a range's figures,
    an experience's sessions) is worked out once."""

    def __init__(self, db, project):
        self.db = db
        self.project = project
        self._figured = {}  # (level, start, end, experience) -> _figures()
        self._flowing = None  # (experience, start, end) whose views are in flow_views
        self._text = None  # _texts()

    def _keys(self, experience=None):
        """(SQL that restricts `t.experience` to the project's keys, its parameters), and a
        function from key to experience id."""
        if not self.project:
            if experience is None:
                return "t.experience >= 0", [], lambda key: key
            return "t.experience = ?", [experience], lambda key: key
        keys = dict(self.db.execute(
            "SELECT key, experience FROM experience_key WHERE project = ?"
            + ("" if experience is None else " AND experience = ?"),
            [self.project] + ([] if experience is None else [experience])).fetchall())
        listed = ", ".join(str(int(key)) for key in keys) or "NULL"
        return f"t.experience IN ({listed})", [], keys.__getitem__

    def _figures(self, level, start, end, experience=None):
        """{(bucket, key): [views, people, identified, sessions, duration_sum,
        session_screens, bounces, {duration bucket: sessions}]} of [start, end), `level`
        wide buckets (WHOLE: one bucket, start)."""
        asked = (level, start, end, experience)
        if asked not in self._figured:
            self._figured[asked] = self._figure(level, start, end, experience)
        return self._figured[asked]

    def _figure(self, level, start, end, experience):
        where, parameters, _ = self._keys(experience)

        def bucket(column):
            if level == WHOLE:
                return str(int(start))
            return f"(t.{column} - t.{column} % {int(level)})"

        rows = collections.defaultdict(lambda: [0, _NO_ONE, _NO_ONE, 0, 0, 0, 0, b""])
        in_range = f"{where} AND t.moment >= ? AND t.moment < ?"
        for key, at, views in self.db.execute(
                f"SELECT t.experience, {bucket('moment')}, count(*) FROM fact AS t "
                f"WHERE {in_range} GROUP BY ALL", [*parameters, start, end]).fetchall():
            rows[at, key][0] = views
        for (key, at), people in _people(self.db, ["t.experience", bucket("moment")], "",
                                         in_range, [*parameters, start, end]).items():
            rows[at, key][1:3] = people
        for (key, at), figures in _sessions(
                self.db, ["t.experience", bucket("first")], "",
                f"{where} AND t.first >= ? AND t.first < ?", [*parameters, start, end]).items():
            rows[at, key][3:] = figures
        return rows

    def experience_rows(self, level, start, end, experience):
        return [(at, experience, views, people, identified,
                 sessions, duration_sum, screens, bounces, durations)
                for (at, _), (views, people, identified, sessions, duration_sum, screens,
                              bounces, durations)
                in sorted(self._figures(level, start, end, experience).items())]

    def experience_sums(self, level, start, end):
        _, _, experience_of = self._keys()
        return [(experience_of(key), views, sessions, duration_sum, screens, bounces)
                for (_, key), (views, _, _, sessions, duration_sum, screens, bounces, _)
                in self._figures(WHOLE, start, end).items()]

    def experience_sketches(self, level, start, end):
        _, _, experience_of = self._keys()
        return [(experience_of(key), people, identified, durations)
                for (_, key), (_, people, identified, _, _, _, _, durations)
                in self._figures(WHOLE, start, end).items()]

    def screen_rows(self, experience, start, end):
        where, parameters, _ = self._keys(experience)
        in_range = f"{where} AND t.moment >= ? AND t.moment < ?"
        people = _people(self.db, ["s.text"], _SCREEN, in_range, [*parameters, start, end])
        return [(screen, views, people[screen,][0]) for screen, views in self.db.execute(
            f"SELECT s.text, count(*) FROM fact AS t {_SCREEN} WHERE {in_range} GROUP BY s.text",
            [*parameters, start, end]).fetchall()]

    def names(self, experience):
        where, parameters, experience_of = self._keys(experience)
        if experience is None:
            where += " AND t.screen = ''"
        return [(experience_of(key), screen, moment, name) for key, screen, moment, name
                in self.db.execute(
                    "SELECT t.experience, t.screen, max(t.moment), arg_max(t.name, "
                    f"(t.moment, t.name)) FROM name AS t WHERE {where} GROUP BY ALL",
                    parameters).fetchall()]

    def state(self):
        return [OverviewState(*row) for row in self.db.execute(
            "SELECT session_timeout, source, position, log_end, events, set_aside FROM state"
        ).fetchall()]

    # The flows' reads: a row per revision (and screen, exit or move) over the range.

    def _flow_views(self, experience, start, end):
        """The experience's views of sessions starting in [start, end), as FLOW_VIEWS
        gives them, in the temporary table flow_views."""
        if self._flowing == (experience, start, end):
            return
        self._flowing = (experience, start, end)
        where, parameters, _ = self._keys(experience)
        self.db.execute("CREATE OR REPLACE TEMP TABLE flow_views AS " + FLOW_VIEWS.format(
            chosen=f"{where} AND t.first >= ? AND t.first < ?"), [*parameters, start, end])

    def _texts(self):
        """{code: screen or revision id}."""
        if self._text is None:
            self._text = dict(self.db.execute("SELECT code, text FROM text").fetchall())
        return self._text

    def revision_rows(self, experience, start, end):
        where, parameters, _ = self._keys(experience)
        in_range = f"{where} AND t.moment >= ? AND t.moment < ?"
        people = _people(self.db, ["r.text"], _REVISION, in_range, [*parameters, start, end])
        rows = {}
        for revision, views, first_seen, last_seen in self.db.execute(
                "SELECT r.text, count(*), min(t.moment), max(t.moment) FROM fact AS t "
                f"{_REVISION} WHERE {in_range} GROUP BY r.text",
                [*parameters, start, end]).fetchall():
            rows[revision] = [views, first_seen, last_seen, people[revision,][0], 0, 0, 0, b""]
        for (revision,), (sessions, duration_sum, _, bounces, durations) in _sessions(
                self.db, ["r.text"], "JOIN text AS r ON r.code = t.began_on",
                f"{where} AND t.first >= ? AND t.first < ?", [*parameters, start, end]).items():
            rows.setdefault(revision, [0, 2**62, -1, _NO_ONE])[4:] = (
                sessions, duration_sum, bounces, durations)
        return [(revision, views, first_seen, last_seen, people, sessions,
                 duration_sum, bounces, durations)
                for revision, (views, first_seen, last_seen, people, sessions, duration_sum,
                               bounces, durations) in rows.items()]

    def flow_screen_rows(self, experience, start, end):
        self._flow_views(experience, start, end)
        # Each session's first view of each screen it reached: its position (capped) and
        # how long after the session's start.
        reached = ("SELECT began_on AS g0, screen AS g1, min(position) AS position, "
                   "min(moment) - first AS seconds FROM flow_views "
                   "GROUP BY began_on, screen, device, first")
        histograms = [
            _histograms(self.db, f"SELECT g0, g1, least(position, ?) AS value FROM ({reached})",
                        [MAX_POSITION]),
            _histograms(self.db, f"SELECT g0, g1, seconds AS value FROM ({reached})", []),
            _histograms(self.db, "SELECT began_on AS g0, screen AS g1, next_moment - moment "
                        "AS value FROM flow_views WHERE next_screen IS NOT NULL", [])]
        texts = self._texts()
        return [(texts[revision], texts[screen],
                 *(histogram.get((revision, screen), b"") for histogram in histograms))
                for revision, screen in histograms[0]]

    def flow_exit_rows(self, experience, start, end):
        self._flow_views(experience, start, end)
        return self._counted_texts(
            "WITH ends AS (SELECT device, first, screen AS exit FROM flow_views WHERE "
            "next_screen IS NULL), reached AS (SELECT DISTINCT began_on, device, first, screen "
            "FROM flow_views) SELECT r.began_on, e.exit, r.screen, count(*) FROM reached AS r "
            "JOIN ends AS e USING (device, first) GROUP BY ALL")

    def flow_move_rows(self, experience, start, end):
        self._flow_views(experience, start, end)
        return self._counted_texts(
            "SELECT began_on, screen, next_screen, count(*) FROM flow_views WHERE next_screen "
            "IS NOT NULL GROUP BY ALL")

    def _counted_texts(self, query):
        """The rows of `query`, each a count after codes of screen and revision ids, with
        the ids for the codes."""
        texts = self._texts()
        return [(*(texts[code] for code in codes), count)
                for *codes, count in self.db.execute(query).fetchall()]

    def goal_people(self, experience, start, end, screen):
        where, parameters, _ = self._keys(experience)
        return [(revision, people) for (revision,), (people, _) in _people(
            self.db, ["r.text"], _SCREEN + " " + _REVISION,
            f"{where} AND t.moment >= ? AND t.moment < ? AND s.text = ?",
            [*parameters, start, end, screen]).items()]
