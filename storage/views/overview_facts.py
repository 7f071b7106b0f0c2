"""overview.duckdb: the experience overview kept as its screen views (facts), in DuckDB.

The worker is its one writer and, since DuckDB lets one process at a time open a database,
its one reader too: the worker answers the overview's reads (storage/views/overview_store.py
keeps rows of every answer up to date at each commit instead; docs/benchmarks.md, "The views
as facts in a column store", measures both).

It is derived from the SDK events as sent, and stands at a position of its own in them, as
overview.sqlite3 does: an offset in data1.details on one machine, a stream sequence in
cluster mode (a store per partition).

Format (version 1), a DuckDB database. Times are Unix seconds, device time.

    fact      (experience, moment, device, carried, screen, revision): one row per screen
              view counted, each once: the experience's key (derived_store.ExperienceKeys),
              the install (storage/views/sketches.person_key of "anon:" + its anonymousID),
              the userID key the view carried (0 if none), and its screen and revision ids as
              codes of `text` ("" for a missing one)
    text      (code, text): the screen and revision ids, each once
    link      (device, user, moment): an install's links to a userID (worker/people.py), a
              row per pair and commit with the earliest moment the commit saw; a pair's
              first link is the least of its rows
    session   (experience, device, first, last, views, began_on): every session of every
              install (worker/sessions.py's rule: the maximal runs of an install's views of
              an experience with no gap longer than the timeout), its first and last
              moment, how many views, the revision code of its first view
    name      (experience, screen, moment, name): names as seen, a row per commit and name
              with its latest moment; the latest by (moment, name) is the name
    experience_key  as in the other derived stores
    state     one row: version, session_timeout, source, position, log_end, events,
              set_aside, updated_at (as overview.sqlite3's)

Invariants, true at every commit because everything changes in one DuckDB transaction:

    fact      == the screen views before position in the source, each once
    session   == the sessions of fact's views by the rule, with the store's session_timeout:
              a commit recomputes the sessions of every (experience, install) it adds views
              to, from all their views, whatever order and however late they came
    link      holds every link before position

A person, a view's identification and the people of any range are worked out when asked,
from fact and link (worker/people.py's rule, in SQL): a late login needs no recount.

Like the other derived stores, a commit needs atomicity, not durability (DuckDB commits
through its write-ahead log; docs/benchmarks.md has it through SIGKILLs and power losses).
"""

import collections

import duckdb
import numpy

from storage.views import derived_store
from storage.views.sketches import duration_bucket, encode_durations, encode_people
from storage.views.derived_store import utc_now

VERSION = 1
# The rules' bounds, here with the SQL that applies them (worker/people.py and worker/flows.py
# describe the rules): a userID linked from more installs than this links none of them (a
# test account, a shared login); a screen first reached at this step or later is counted at
# this step.
MAX_INSTALLS_PER_USER = 100
MAX_POSITION = 50

SCHEMA = """
CREATE TABLE fact (experience BIGINT NOT NULL, moment BIGINT NOT NULL, device BIGINT NOT NULL,
    carried BIGINT NOT NULL, screen INTEGER NOT NULL, revision INTEGER NOT NULL);
CREATE TABLE text (code INTEGER NOT NULL, text VARCHAR NOT NULL);
CREATE TABLE link (device BIGINT NOT NULL, user_key BIGINT NOT NULL, moment BIGINT NOT NULL);
CREATE TABLE session (experience BIGINT NOT NULL, device BIGINT NOT NULL,
    first BIGINT NOT NULL, last BIGINT NOT NULL, views BIGINT NOT NULL,
    began_on INTEGER NOT NULL);
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

# The sessions of the (experience, device) pairs in `touched`, from all their facts: a view
# begins a session when it is the pair's first, or more than the timeout after the one
# before. A session begins on the revision of its first view by (moment, screen id,
# revision id), worker/sessions.py's order within a second.
_SESSIONS = """
WITH views AS (
    SELECT f.experience, f.device, f.moment, f.revision, s.text AS screen_id,
        r.text AS revision_id
    FROM fact AS f SEMI JOIN touched AS t ON f.experience = t.experience AND f.device = t.device
    JOIN text AS s ON s.code = f.screen JOIN text AS r ON r.code = f.revision),
marked AS (
    SELECT *, CASE WHEN moment - lag(moment) OVER pair <= ? THEN 0 ELSE 1 END AS begins
    FROM views WINDOW pair AS (PARTITION BY experience, device
                               ORDER BY moment, screen_id, revision_id)),
numbered AS (
    SELECT *, sum(begins) OVER (PARTITION BY experience, device
                                ORDER BY moment, screen_id, revision_id
                                ROWS UNBOUNDED PRECEDING) AS number
    FROM marked)
SELECT experience, device, min(moment), max(moment), count(*),
    arg_min(revision, (moment, screen_id, revision_id))
FROM numbered GROUP BY experience, device, number
"""

# Each install's person: the user of its first link by device time (ties: the smaller key),
# among users linked from at most MAX_INSTALLS_PER_USER installs (worker/people.py).
_PERSONS = f"""
WITH first_links AS (
    SELECT device, user_key, min(moment) AS moment FROM link GROUP BY device, user_key),
crowded AS (
    SELECT user_key FROM first_links GROUP BY user_key
    HAVING count(*) > {MAX_INSTALLS_PER_USER})
SELECT device, arg_min(user_key, (moment, user_key)) AS person FROM first_links
WHERE user_key NOT IN (SELECT user_key FROM crowded) GROUP BY device
"""


class Batch:
    """A commit's facts, gathered as columns: its screen views and links (worker/overview.py's
    SdkEvents), and the latest names it saw."""

    def __init__(self):
        self.experience, self.moment, self.device, self.carried = [], [], [], []
        self.screen, self.revision = [], []
        self.links = {}  # (device, user) -> the earliest moment seen
        self.names = {}  # (experience, screen) -> (moment, name), the latest
        self.events = 0
        self.set_aside = 0

    def __len__(self):
        return len(self.moment)


class FactStore:
    """The worker's side: open (or create), commit a Batch with the source's new position,
    reset; and the reads."""

    def __init__(self, path):
        self.path = path
        self.db = None
        self.keys = derived_store.ExperienceKeys()
        self._codes = {}  # text -> code
        self._new_codes = []
        self.timeout = None

    def open(self, session_timeout):
        """Open the store, creating it empty (for `session_timeout`) if missing; return its
        OverviewState."""
        fresh = not self.path.exists()
        self.db = duckdb.connect(str(self.path), config={"threads": 1})
        if fresh:
            with self._transaction() as db:
                db.execute(SCHEMA)
                db.execute("INSERT INTO state VALUES (?, ?, ''::BLOB, 0, 0, 0, 0, ?)",
                           [VERSION, session_timeout, utc_now()])
        version, *state = self.db.execute(
            "SELECT version, session_timeout, source, position, log_end, events, set_aside "
            "FROM state").fetchone()
        if version != VERSION:
            raise derived_store.Unusable(f"format version {version}, not {VERSION}")
        self.keys.load(_Rows(self.db))
        self._codes = dict(self.db.execute("SELECT text, code FROM text").fetchall())
        self.timeout = state[0]
        return OverviewState(*state)

    def code(self, text):
        """The code of a screen or revision id, a new one written with the next commit."""
        code = self._codes.get(text)
        if code is None:
            code = self._codes[text] = len(self._codes)
            self._new_codes.append((code, text))
        return code

    def commit(self, batch, source, position, log_end):
        """Add `batch` and move the position, in one transaction: the facts, links and
        names appended, and the sessions of every (experience, install) it has views of
        computed again from all their views."""
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
                    _append(db, "fact", **facts)
                    db.register("batch_facts", facts)
                    db.execute("CREATE TEMP TABLE touched AS SELECT DISTINCT experience, "
                               "device FROM batch_facts")
                    db.unregister("batch_facts")
                    db.execute("DELETE FROM session AS s USING touched AS t WHERE "
                               "s.experience = t.experience AND s.device = t.device")
                    db.execute("INSERT INTO session " + _SESSIONS, [self.timeout])
                    db.execute("DROP TABLE touched")
                if batch.links:
                    (devices, users), moments = zip(*batch.links), batch.links.values()
                    _append(db, "link", device=numpy.array(devices, dtype=numpy.int64),
                            user_key=numpy.array(users, dtype=numpy.int64),
                            moment=numpy.fromiter(moments, numpy.int64, len(moments)))
                if batch.names:
                    (experiences, screens), named = zip(*batch.names), batch.names.values()
                    moments, names = zip(*named)
                    _append(db, "name",
                            experience=numpy.array(experiences, dtype=numpy.int64),
                            screen=list(screens), moment=numpy.array(moments, numpy.int64),
                            name=list(names))
                db.execute("UPDATE state SET source = ?, position = ?, log_end = ?, "
                           "events = events + ?, set_aside = set_aside + ?, updated_at = ?",
                           [source, position, log_end, batch.events, batch.set_aside,
                            utc_now()])
        except BaseException:
            self.keys.forget_new()
            for code, text in self._new_codes:
                del self._codes[text]
            raise
        finally:
            self._new_codes = []

    def reset(self, session_timeout):
        """Empty the store and its position in one transaction (for a recount)."""
        with self._transaction() as db:
            self.keys.reset(_Rows(db))
            for table in ("fact", "text", "link", "session", "name"):
                db.execute(f"DELETE FROM {table}")
            db.execute("UPDATE state SET session_timeout = ?, source = ''::BLOB, position = 0, "
                       "log_end = 0, events = 0, set_aside = 0, updated_at = ?",
                       [session_timeout, utc_now()])
        self._codes, self._new_codes, self.timeout = {}, [], session_timeout

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None

    def _transaction(self):
        return _transaction(self.db)

    # The reads.

    def experience_figures(self, start, end):
        """{experience key: (views, people, identified, sessions, duration_sum,
        session_screens, bounces, {duration: sessions})} of every experience with views or
        sessions starting in [start, end): `people` and `identified` the distinct person
        keys (a view's userID, else its install's person, else its install), exactly."""
        figures = collections.defaultdict(lambda: [0, [], [], 0, 0, 0, 0, {}])
        db = self.db
        db.execute("BEGIN TRANSACTION")  # one snapshot for both queries
        try:
            for experience, views, people, identified in db.execute(
                    f"WITH person AS ({_PERSONS}), seen AS ("
                    "SELECT f.experience, CASE WHEN f.carried != 0 THEN f.carried ELSE "
                    "coalesce(p.person, f.device) END AS who, (f.carried != 0 OR p.person IS "
                    "NOT NULL) AS known FROM fact AS f LEFT JOIN person AS p USING (device) "
                    "WHERE f.moment >= ? AND f.moment < ?) "
                    "SELECT experience, count(*), list(DISTINCT who), "
                    "list(DISTINCT who) FILTER (WHERE known) FROM seen GROUP BY experience",
                    [start, end]).fetchall():
                row = figures[experience]
                row[0], row[1], row[2] = views, people, identified or []
            for experience, sessions, duration_sum, screens, bounces, durations in db.execute(
                    "WITH d AS (SELECT experience, last - first AS duration, views FROM "
                    "session WHERE first >= ? AND first < ?) "
                    "SELECT experience, count(*), sum(duration), sum(views), "
                    "count(*) FILTER (WHERE views = 1), histogram(duration) FROM d "
                    "GROUP BY experience", [start, end]).fetchall():
                row = figures[experience]
                row[3:8] = [sessions, duration_sum, screens, bounces, dict(durations)]
        finally:
            db.execute("COMMIT")
        return dict(figures)


    def experience_flow(self, experience, start, end, revision=None):
        """The flow of one experience's sessions starting in [start, end) (of those begun
        on `revision` only, if given), worked out from their views (worker/flows.py's
        rule; views in one second in the order of their screen and revision ids):
        (sessions, {screen: (sessions that reached it, sessions that ended on it,
        [its first position in each, capped at MAX_POSITION], [seconds from each session's
        start to it], [seconds on it before the next view, each view but a session's
        last]}), {(screen, next screen): moves})."""
        chosen = [experience, self.timeout, start, end]
        if revision is not None:
            chosen.append(revision)
        db = self.db
        db.execute("BEGIN TRANSACTION")
        try:
            db.execute("CREATE OR REPLACE TEMP TABLE flow_views AS " + _FLOW_VIEWS.format(
                revision="" if revision is None else "AND began_on = ?"), chosen)
            sessions, = db.execute(
                "SELECT count(*) FROM (SELECT DISTINCT device, number FROM flow_views)"
            ).fetchone()
            screens = {screen: [0, 0, [], [], []] for screen, in db.execute(
                "SELECT DISTINCT screen FROM flow_views").fetchall()}
            for screen, reached, positions, to_reach in db.execute(
                    "SELECT screen, count(*), list(least(position, ?)), list(moment - first) "
                    "FROM (SELECT screen, device, number, min(position) AS position, "
                    "min(moment) AS moment, any_value(first) AS first FROM flow_views "
                    "GROUP BY screen, device, number) GROUP BY screen",
                    [MAX_POSITION]).fetchall():
                screens[screen][0], screens[screen][2], screens[screen][3] = (
                    reached, positions, to_reach)
            for screen, exits in db.execute(
                    "SELECT screen, count(*) FROM flow_views WHERE next_screen IS NULL "
                    "GROUP BY screen").fetchall():
                screens[screen][1] = exits
            for screen, seconds in db.execute(
                    "SELECT screen, list(next_moment - moment) FROM flow_views WHERE "
                    "next_screen IS NOT NULL GROUP BY screen").fetchall():
                screens[screen][4] = seconds
            moves = dict(((source, target), count) for source, target, count in db.execute(
                "SELECT screen, next_screen, count(*) FROM flow_views WHERE next_screen IS NOT "
                "NULL GROUP BY screen, next_screen").fetchall())
            db.execute("DROP TABLE flow_views")
        finally:
            db.execute("COMMIT")
        return sessions, {screen: tuple(row) for screen, row in screens.items()}, moves


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


# One experience's views with their sessions: each view's install, moment, screen and
# revision ids, the session it is in (device, number), its position in it, the session's
# first moment and first revision, and the next view of the session (none for its last).
_FLOW_VIEWS = """
WITH views AS (
    SELECT f.device, f.moment, s.text AS screen, r.text AS revision FROM fact AS f
    JOIN text AS s ON s.code = f.screen JOIN text AS r ON r.code = f.revision
    WHERE f.experience = ?),
marked AS (
    SELECT *, CASE WHEN moment - lag(moment) OVER install <= ? THEN 0 ELSE 1 END AS begins,
        row_number() OVER install AS step
    FROM views WINDOW install AS (PARTITION BY device ORDER BY moment, screen, revision)),
numbered AS (
    SELECT *, sum(begins) OVER (PARTITION BY device ORDER BY step) AS number FROM marked),
placed AS (
    SELECT device, number, moment, screen, step - min(step) OVER whole + 1 AS position,
        min(moment) OVER whole AS first, first_value(revision) OVER session AS began_on,
        lead(screen) OVER session AS next_screen, lead(moment) OVER session AS next_moment
    FROM numbered
    WINDOW session AS (PARTITION BY device, number ORDER BY step),
        whole AS (PARTITION BY device, number))
SELECT * FROM placed WHERE first >= ? AND first < ? {revision}
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


class FactReader:
    """The overview's reads (storage/views/overview_store.READS, the rows
    app/overview_query.py and app/flow_query.py merge), worked out from the facts: a row
    where overview.sqlite3 keeps a bucket's row, its people the exact set of their keys.
    `connect()` gives a DuckDB connection to the store (a cursor of the worker's)."""

    def __init__(self, connect, session_timeout):
        self.connect = connect
        self.timeout = session_timeout

    def run(self, calls, project=""):
        """The rows of each read in `calls` ([(name, *arguments)]) of `project`'s
        experiences, all from one snapshot."""
        db = self.connect()
        try:
            db.execute("BEGIN TRANSACTION")
            db.execute("CREATE OR REPLACE TEMP TABLE person AS " + _PERSONS)
            reads = _FactReads(db, project, self.timeout)
            return [list(getattr(reads, name)(*arguments)) for name, *arguments in calls]
        finally:
            db.close()  # and with it the transaction, which wrote only temporary tables


class _FactReads:
    """The reads of one run(): what several reads of a question share (a range's figures,
    an experience's sessions) is worked out once."""

    def __init__(self, db, project, timeout):
        self.db = db
        self.project = project
        self.timeout = timeout
        self._figured = {}  # (level, start, end, experience) -> _figures()
        self._flowing = None  # (experience, start, end) whose views are in flow_views

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
        wide buckets (a level of 0: one bucket, start)."""
        asked = (level, start, end, experience)
        if asked not in self._figured:
            self._figured[asked] = self._figure(level, start, end, experience)
        return self._figured[asked]

    def _figure(self, level, start, end, experience):
        where, parameters, _ = self._keys(experience)

        def bucket(column):
            return f"(t.{column} - t.{column} % {int(level)})" if level else str(int(start))

        rows = collections.defaultdict(lambda: [0, set(), set(), 0, 0, 0, 0, {}])
        for key, at, views, people, identified in self.db.execute(
                f"SELECT t.experience, {bucket('moment')}, count(*), "
                "list(DISTINCT CASE WHEN t.carried != 0 THEN t.carried ELSE "
                "coalesce(p.person, t.device) END), list(DISTINCT CASE WHEN t.carried != 0 "
                "THEN t.carried ELSE p.person END) FILTER (WHERE t.carried != 0 OR p.person IS "
                "NOT NULL) FROM fact AS t LEFT JOIN person AS p USING (device) "
                f"WHERE {where} AND t.moment >= ? AND t.moment < ? GROUP BY ALL",
                [*parameters, start, end]).fetchall():
            row = rows[at, key]
            row[0], row[1], row[2] = views, set(people), set(identified or ())
        for key, at, duration, sessions, screens, bounces in self.db.execute(
                f"SELECT t.experience, {bucket('first')}, t.last - t.first, count(*), "
                "sum(t.views), count(*) FILTER (WHERE t.views = 1) FROM session AS t "
                f"WHERE {where} AND t.first >= ? AND t.first < ? GROUP BY ALL",
                [*parameters, start, end]).fetchall():
            row = rows[at, key]
            row[3] += sessions
            row[4] += duration * sessions
            row[5] += screens
            row[6] += bounces
            bucketed = duration_bucket(duration)
            row[7][bucketed] = row[7].get(bucketed, 0) + sessions
        return rows

    def experience_rows(self, level, start, end, experience):
        return [(at, experience, views, encode_people(people), encode_people(identified),
                 sessions, duration_sum, screens, bounces, encode_durations(durations))
                for (at, _), (views, people, identified, sessions, duration_sum, screens,
                              bounces, durations)
                in sorted(self._figures(level, start, end, experience).items())]

    def experience_sums(self, level, start, end):
        _, _, experience_of = self._keys()
        return [(experience_of(key), views, sessions, duration_sum, screens, bounces)
                for (_, key), (views, _, _, sessions, duration_sum, screens, bounces, _)
                in self._figures(0, start, end).items()]

    def experience_sketches(self, level, start, end):
        _, _, experience_of = self._keys()
        return [(experience_of(key), encode_people(people), encode_people(identified),
                 encode_durations(durations))
                for (_, key), (_, people, identified, _, _, _, _, durations)
                in self._figures(0, start, end).items()]

    def screen_rows(self, experience, start, end):
        where, parameters, _ = self._keys(experience)
        return [(screen, views, encode_people(set(people))) for screen, views, people
                in self.db.execute(
                    "SELECT s.text, count(*), list(DISTINCT CASE WHEN t.carried != 0 THEN "
                    "t.carried ELSE coalesce(p.person, t.device) END) FROM fact AS t "
                    "JOIN text AS s ON s.code = t.screen LEFT JOIN person AS p USING (device) "
                    f"WHERE {where} AND t.moment >= ? AND t.moment < ? GROUP BY s.text",
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
        return [OverviewState(*self.db.execute(
            "SELECT session_timeout, source, position, log_end, events, set_aside FROM state"
        ).fetchone())]

    # The flows' reads: a row per revision (and screen, exit or move) over the range.

    def _flow_views(self, experience, start, end):
        """The experience's views of sessions starting in [start, end), as _FLOW_VIEWS
        gives them, in the temporary table flow_views."""
        if self._flowing == (experience, start, end):
            return
        self._flowing = (experience, start, end)
        where, parameters, _ = self._keys(experience)
        self.db.execute("CREATE OR REPLACE TEMP TABLE flow_views AS " + _FLOW_VIEWS.format(
            revision="").replace("f.experience = ?", where.replace("t.", "f.")),
            [*parameters, self.timeout, start, end])

    def revision_rows(self, experience, start, end):
        where, parameters, _ = self._keys(experience)
        rows = {}
        for revision, views, first_seen, last_seen, people in self.db.execute(
                "SELECT r.text, count(*), min(t.moment), max(t.moment), list(DISTINCT CASE "
                "WHEN t.carried != 0 THEN t.carried ELSE coalesce(p.person, t.device) END) "
                "FROM fact AS t JOIN text AS r ON r.code = t.revision LEFT JOIN person AS p "
                f"USING (device) WHERE {where} AND t.moment >= ? AND t.moment < ? "
                "GROUP BY r.text", [*parameters, start, end]).fetchall():
            rows[revision] = [views, first_seen, last_seen, set(people), 0, 0, 0, {}]
        for revision, duration, sessions, bounces in self.db.execute(
                "SELECT r.text, t.last - t.first, count(*), count(*) FILTER (WHERE t.views = 1) "
                "FROM session AS t JOIN text AS r ON r.code = t.began_on "
                f"WHERE {where} AND t.first >= ? AND t.first < ? GROUP BY ALL",
                [*parameters, start, end]).fetchall():
            row = rows.setdefault(revision, [0, 2**62, -1, set(), 0, 0, 0, {}])
            row[4] += sessions
            row[5] += duration * sessions
            row[6] += bounces
            bucketed = duration_bucket(duration)
            row[7][bucketed] = row[7].get(bucketed, 0) + sessions
        return [(revision, views, first_seen, last_seen, encode_people(people), sessions,
                 duration_sum, bounces, encode_durations(durations))
                for revision, (views, first_seen, last_seen, people, sessions, duration_sum,
                               bounces, durations) in rows.items()]

    def flow_screen_rows(self, experience, start, end):
        self._flow_views(experience, start, end)
        histograms = collections.defaultdict(lambda: ({}, {}, {}))
        for revision, screen, position, to_reach in self.db.execute(
                "SELECT began_on, screen, least(min(position), ?), min(moment) - "
                "any_value(first) FROM flow_views GROUP BY began_on, screen, device, number",
                [MAX_POSITION]).fetchall():
            positions, reaching, _ = histograms[revision, screen]
            positions[position] = positions.get(position, 0) + 1
            bucketed = duration_bucket(to_reach)
            reaching[bucketed] = reaching.get(bucketed, 0) + 1
        for revision, screen, seconds in self.db.execute(
                "SELECT began_on, screen, next_moment - moment FROM flow_views WHERE "
                "next_screen IS NOT NULL").fetchall():
            on_screen = histograms[revision, screen][2]
            bucketed = duration_bucket(seconds)
            on_screen[bucketed] = on_screen.get(bucketed, 0) + 1
        return [(revision, screen, *(encode_durations(histogram) for histogram in row))
                for (revision, screen), row in histograms.items()]

    def flow_exit_rows(self, experience, start, end):
        self._flow_views(experience, start, end)
        return self.db.execute(
            "WITH ends AS (SELECT device, number, screen AS exit FROM flow_views WHERE "
            "next_screen IS NULL), reached AS (SELECT DISTINCT began_on, device, number, "
            "screen FROM flow_views) SELECT r.began_on, e.exit, r.screen, count(*) FROM "
            "reached AS r JOIN ends AS e USING (device, number) GROUP BY ALL").fetchall()

    def flow_move_rows(self, experience, start, end):
        self._flow_views(experience, start, end)
        return self.db.execute(
            "SELECT began_on, screen, next_screen, count(*) FROM flow_views WHERE "
            "next_screen IS NOT NULL GROUP BY ALL").fetchall()

    def goal_people(self, experience, start, end, screen):
        where, parameters, _ = self._keys(experience)
        return [(revision, encode_people(set(people))) for revision, people in self.db.execute(
            "SELECT r.text, list(DISTINCT CASE WHEN t.carried != 0 THEN t.carried ELSE "
            "coalesce(p.person, t.device) END) FROM fact AS t JOIN text AS s ON s.code = "
            "t.screen JOIN text AS r ON r.code = t.revision LEFT JOIN person AS p USING "
            f"(device) WHERE {where} AND t.moment >= ? AND t.moment < ? AND s.text = ? "
            "GROUP BY r.text", [*parameters, start, end, screen]).fetchall()]
