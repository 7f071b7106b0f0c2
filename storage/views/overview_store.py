"""overview.sqlite3: the experience overview (screen views, people, sessions and their
durations, screens), per experience, per hour, day and week. The worker is its one writer
(worker/overview.py); the ingest's read side reads it (app/overview_query.py).

It is derived from the SDK events as sent, and stands at a position of its own in them, as
series.sqlite3 stands at one in data1: on one machine in data1.details; in cluster mode a
worker keeps one per partition (overview-<partition>.sqlite3), counted from the details that
ride with the partition's messages, its position a stream sequence.

Format (version 6), SQLite in WAL mode. Times are Unix seconds; a bucket is the second at
the start of its UTC hour, UTC day or week (7 days from a Thursday 00:00 UTC, as weeks fall
from the Unix epoch); all times are the devices' (storage/log/details.py: "time").

    experience_hour, experience_day, experience_week
                                      one row per (bucket, experience) with screen views:
        views            screen views in the bucket
        people           distinct people who viewed a screen in it (storage/views/sketches.People)
        identified       those of them who are userIDs (the rest are installs linked to none)
        sessions         sessions that start in the bucket
        duration_sum     their durations, seconds
        session_screens  their screen views
        bounces          those of them with one screen view
        durations        their durations' histogram (storage/views/sketches: encode_durations)
    screen_hour                       one row per (experience, hour, screen id, revision id):
                                      views, people (read for one experience at a time: no
                                      day rows needed)
    name            (experience, screen, moment, name): the latest name seen, by device time
                    (screen '' for the experience's own name); ties go to the greater name
    session         (device, experience, first, last, summary): every session of every
                    install, kept at any age, so that a view however late joins the sessions
                    it falls within the timeout of (worker/sessions.py); summary is what its
                    flow needs to be extended at its end without reading its views
                    (StoredViews)
    session_part    (device, experience, first, part, views): a session's views in order,
                    in parts: the views it began with (part 0), then those of each batch
                    that extended it at its end, each part numbered by the views before it.
                    An extension appends a part rather than writing the session's views
                    again, so that it costs its own views, however long the session grew.
    viewer          (experience, hour, screen, revision, device, carried): who viewed a
                    screen of a revision in an hour: the install, and the userID key the
                    view carried (0 if none); what the people of an hour are counted again
                    from when an install's person changes
    revision_hour   one row per (experience, hour, revision) (worker/flows.py): its screen
                    views, first_seen and last_seen (their earliest and latest moment), the
                    people and identified people who viewed it; the sessions that start in
                    the hour on it, duration_sum, bounces, durations
    flow_screen     (experience, hour, revision, screen): of the sessions starting in the
                    hour on the revision, the histograms (encode_durations) of the step at
                    which they first reached the screen (positions), of the seconds until
                    then (to_reach), and of the seconds spent on it (on_screen)
    flow_exit       (experience, hour, revision, exit, reached, sessions): sessions that
                    ended on `exit` having reached `reached`
    flow_move       (experience, hour, revision, source, target, moves): views of `target`
                    right after `source` in a session
    link            (device, user, moment): each install's links to a userID, with the
                    device time of the first (worker/people.py)
    person          (device, user): the person of each install that has one, by the people
                    rule (worker/people.py); an install not listed is a person of its own
    state           one row: version, session_timeout (the sessions' rule: a store built
                    with another is counted again), source (what it is counted from: the
                    details file's identity, or the stream's), position (how far in it: an
                    offset in the details file, or a stream sequence), log_end (the data1
                    offset its last counted group ends at; the sequence again in cluster
                    mode), events, updated_at, set_aside (SDK events read that could not
                    be counted, worker/sdk_events.SdkEvents)

    experience_key  (key, project, experience): a named project's experiences' keys
                    (storage/views/derived_store.py: ExperienceKeys); `experience` in every
                    table above is such a key, which in the default project is the id

    A device is storage/views/sketches.person_key("anon:" + its anonymousID), a user
    person_key("user:" + its userID), in a named project of those texts prefixed with its
    id (storage/projects.person_text); a view's person is the user it carries, else its
    install's person, else its install.

Invariants, true at every commit because everything changes in one SQLite transaction:

    the rows == the overview of the screen views before position in the source (the groups
                of data1.details, or the partition's messages), whatever order and however
                late they came in (worker/sessions.py, worker/flows.py, worker/people.py)
    session holds every session of every install, and session_part its views in order,
                each once across its parts; sessions starting in a bucket are counted in
                that bucket's rows (the experience's and, by its first view's revision, the
                flow's), each once
    people and identified of every hour row (experience, screen, revision) == the persons
                of its viewer rows by the links in link, and of every day and week row ==
                the union of its hours':
                an install whose person changes has every hour it has sessions in counted
                again, with its days and weeks, in the same transaction

Like the series store, it is a derived view (storage/views/derived_store.py): a commit needs
atomicity, not durability. A power loss may take the last commits back; the worker counts on
from the older position.
"""

import collections
import functools
import sqlite3

import msgspec

from storage.layout import Layout
from storage.views import derived_store
from storage.views.derived_store import utc_now
from storage.views.sketches import (People, add_durations, encode_durations, encode_people,
                                    merge_people)

VERSION = 6
HOUR, DAY, WEEK = 3600, 86400, 7 * 86400
# The levels of experience rows: a range is read from the fewest rows (pieces(), below).
LEVELS = {HOUR: "hour", DAY: "day", WEEK: "week"}
# The level a read of an experience's figures asks for to have its whole range, however the
# store keeps it: here its pieces' rows, from overview.duckdb one row
# (storage/views/overview_facts.py).
WHOLE = 0

# One table per level, alike.
EXPERIENCE_TABLE = """
CREATE TABLE experience_{level} (bucket INTEGER NOT NULL, experience INTEGER NOT NULL,
    views INTEGER NOT NULL, people BLOB NOT NULL, identified BLOB NOT NULL,
    sessions INTEGER NOT NULL, duration_sum INTEGER NOT NULL, session_screens INTEGER NOT NULL,
    bounces INTEGER NOT NULL, durations BLOB NOT NULL,
    PRIMARY KEY (bucket, experience)) WITHOUT ROWID;
"""
SCHEMA = "".join(EXPERIENCE_TABLE.format(level=level) for level in LEVELS.values()) + """
CREATE TABLE screen_hour (experience INTEGER NOT NULL, bucket INTEGER NOT NULL,
    screen TEXT NOT NULL, revision TEXT NOT NULL, views INTEGER NOT NULL, people BLOB NOT NULL,
    PRIMARY KEY (experience, bucket, screen, revision)) WITHOUT ROWID;
CREATE TABLE name (experience INTEGER NOT NULL, screen TEXT NOT NULL, moment INTEGER NOT NULL,
    name TEXT NOT NULL, PRIMARY KEY (experience, screen)) WITHOUT ROWID;
CREATE TABLE session (device INTEGER NOT NULL, experience INTEGER NOT NULL,
    first INTEGER NOT NULL, last INTEGER NOT NULL, summary TEXT NOT NULL,
    PRIMARY KEY (device, experience, first)) WITHOUT ROWID;
CREATE TABLE session_part (device INTEGER NOT NULL, experience INTEGER NOT NULL,
    first INTEGER NOT NULL, part INTEGER NOT NULL, views TEXT NOT NULL,
    PRIMARY KEY (device, experience, first, part)) WITHOUT ROWID;
CREATE TABLE viewer (experience INTEGER NOT NULL, hour INTEGER NOT NULL, screen TEXT NOT NULL,
    revision TEXT NOT NULL, device INTEGER NOT NULL, carried INTEGER NOT NULL,
    PRIMARY KEY (experience, hour, screen, revision, device, carried)) WITHOUT ROWID;
CREATE TABLE revision_hour (experience INTEGER NOT NULL, bucket INTEGER NOT NULL,
    revision TEXT NOT NULL, views INTEGER NOT NULL, first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL, people BLOB NOT NULL, identified BLOB NOT NULL,
    sessions INTEGER NOT NULL, duration_sum INTEGER NOT NULL, bounces INTEGER NOT NULL,
    durations BLOB NOT NULL, PRIMARY KEY (experience, bucket, revision)) WITHOUT ROWID;
CREATE TABLE flow_screen (experience INTEGER NOT NULL, bucket INTEGER NOT NULL,
    revision TEXT NOT NULL, screen TEXT NOT NULL, positions BLOB NOT NULL,
    to_reach BLOB NOT NULL, on_screen BLOB NOT NULL,
    PRIMARY KEY (experience, bucket, revision, screen)) WITHOUT ROWID;
CREATE TABLE flow_exit (experience INTEGER NOT NULL, bucket INTEGER NOT NULL,
    revision TEXT NOT NULL, exit TEXT NOT NULL, reached TEXT NOT NULL,
    sessions INTEGER NOT NULL,
    PRIMARY KEY (experience, bucket, revision, exit, reached)) WITHOUT ROWID;
CREATE TABLE flow_move (experience INTEGER NOT NULL, bucket INTEGER NOT NULL,
    revision TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
    moves INTEGER NOT NULL,
    PRIMARY KEY (experience, bucket, revision, source, target)) WITHOUT ROWID;
CREATE TABLE link (device INTEGER NOT NULL, user INTEGER NOT NULL, moment INTEGER NOT NULL,
    PRIMARY KEY (device, user)) WITHOUT ROWID;
CREATE INDEX link_by_user ON link (user, device);
CREATE TABLE person (device INTEGER PRIMARY KEY, user INTEGER NOT NULL);
CREATE TABLE state (version INTEGER NOT NULL, session_timeout INTEGER NOT NULL,
    source BLOB NOT NULL, position INTEGER NOT NULL, log_end INTEGER NOT NULL,
    events INTEGER NOT NULL, updated_at TEXT NOT NULL, set_aside INTEGER NOT NULL DEFAULT 0);
""" + derived_store.KEYS_TABLE

EXPERIENCE_COLUMNS = ("views", "people", "identified", "sessions", "duration_sum",
                      "session_screens", "bounces", "durations")


# The rules' bounds, shared by both stores (worker/people.py and worker/flows.py describe the
# rules; storage/views/overview_facts.py applies them in SQL): a userID linked from more
# installs than this links none of them (a test account, a shared login); a screen first
# reached at this step or later is counted at this step.
MAX_INSTALLS_PER_USER = 100
MAX_POSITION = 50


class CorruptOverview(Exception):
    """The overview's store (overview.sqlite3, or overview.duckdb) exists but cannot be
    trusted; the message says why."""


OverviewState = collections.namedtuple(
    "OverviewState", "session_timeout source position log_end events set_aside")
STATE_COLUMNS = ", ".join(OverviewState._fields)


# An hour's changes, as Changes.hour() gives them.
(VIEWS, PEOPLE, IDENTIFIED, SESSIONS, DURATION_SUM, SESSION_SCREENS, BOUNCES,
 DURATIONS) = range(8)
# A screen's hour's changes, as Changes.screen() gives them.
SCREEN_VIEWS, SCREEN_PEOPLE = range(2)
# A flow screen's histograms, as Changes.flow_screen() gives them.
POSITIONS, TO_REACH, ON_SCREEN = range(3)
# A revision's hour's changes, as Changes.revision() gives them.
(REVISION_VIEWS, REVISION_FIRST_SEEN, REVISION_LAST_SEEN, REVISION_PEOPLE, REVISION_IDENTIFIED,
 REVISION_SESSIONS, REVISION_DURATION_SUM, REVISION_BOUNCES, REVISION_DURATIONS) = range(9)


# A session's views and summary are written and read at every commit that changes it:
# msgspec's JSON, several times faster than the json module's for these small lists.
_JSON_ENCODER = msgspec.json.Encoder()
_JSON_DECODER = msgspec.json.Decoder()


def encode_views(first, views, revision=None):
    """A session's views (worker/sessions.py) as stored: JSON, [[seconds after `first`,
    screen id, revision id], ...], each revision left out where it is the view before's
    (the first's too where it is `revision`: views to append to a session whose last view
    is on it)."""
    encoded = []
    for moment, screen, view_revision in views:
        if view_revision == revision:
            encoded.append([moment - first, screen])
        else:
            encoded.append([moment - first, screen, view_revision])
            revision = view_revision
    return _JSON_ENCODER.encode(encoded).decode()


def decode_views(first, text, revision=None):
    """encode_views's `text` as views again, `revision` the one encode_views was given."""
    views = []
    for view in _JSON_DECODER.decode(text):
        if len(view) == 3:
            revision = view[2]
        views.append((first + view[0], view[1], revision))
    return views


class StoredViews:
    """A stored session's views, read only when needed, with the summary its flow needs to
    be extended at its end without them (worker/flows.extend_session): how many views, the
    revision of the first (the one the session began on), the last view (moment, screen,
    revision) and the screens it reached. A session that an install's next batch extends
    (the common case) gains a part of its own in the store (session_part), at the cost of
    the views added rather than of its whole length.

    The summary is stored as JSON: [count, first revision, last moment - first, last
    screen, last revision, [screens reached, in the order first reached]]."""

    __slots__ = ("first", "_summary", "_load", "base", "added")

    def __init__(self, first, summary, load, base=None, added=()):
        self.first = first
        self._summary = summary  # its JSON, as read, until asked for
        self._load = load  # reads the views, when asked for
        self.base = base  # the stored session this one extends, if it does
        self.added = added  # the views this one has beyond it

    @classmethod
    def of(cls, first, views):
        """The stored form of a new session's `views` (a list, in order)."""
        reached = list(dict.fromkeys(screen for _, screen, _ in views))
        last_moment, last_screen, last_revision = views[-1]
        return cls(first, [len(views), views[0][2], last_moment - first, last_screen,
                           last_revision, reached], lambda: list(views))

    def summary(self):
        """(count, first revision, last view, screens reached in order)."""
        summary = self._summary
        if type(summary) is str:
            summary = self._summary = _JSON_DECODER.decode(summary)
        count, began_on, last_after, last_screen, last_revision, reached = summary
        return count, began_on, (self.first + last_after, last_screen, last_revision), reached

    def __len__(self):
        return self.summary()[0]

    def decoded(self):
        if self.base is not None:
            return self.base.decoded() + list(self.added)
        return self._load()

    def extended(self, added):
        """The views of this session followed by `added` (in order, none sorting before
        this one's last view), without reading this one's."""
        count, began_on, _, reached = self.summary()
        last_moment, last_screen, last_revision = added[-1]
        return StoredViews(
            self.first,
            [count + len(added), began_on, last_moment - self.first, last_screen,
             last_revision, reached + [screen for screen in dict.fromkeys(
                 screen for _, screen, _ in added) if screen not in reached]],
            None, self, added)

    def stored(self):
        """(summary, parts) as the store keeps them: the summary's JSON, and the parts to
        write, [(part, views' JSON)]: all of a new session's (one), or the one an extension
        adds to the parts of the stored session it extends (a commit extends a session once:
        it places each install's views of an experience together)."""
        summary = self._summary
        if type(summary) is not str:
            summary = _JSON_ENCODER.encode(summary).decode()
        if self.base is None:
            return summary, [(0, encode_views(self.first, self._load()))]
        count, _, (_, _, last_revision), _ = self.base.summary()
        return summary, [(count, encode_views(self.first, self.added, last_revision))]


class Changes:
    """What a stretch of screen views changes, per hour bucket, as the worker gathers it.

    Session figures may go down: a late view that joins two sessions takes both out (from the
    buckets they started in) and puts the joined one in. People may go down too: an install
    whose person changes has its hours in `recount`, whose people are counted again from
    their viewers at commit."""

    def __init__(self):
        # (experience, hour) -> [views, person keys (a set), identified person keys,
        # sessions, duration_sum, session_screens, bounces, {duration bucket: +-sessions}]
        self.hours = {}
        self.screens = {}  # (experience, screen, hour, revision) -> [views, person keys]
        self.names = {}  # (experience, screen) -> (moment, name), the latest
        self.sessions = {}  # (device, experience, first) -> [first, last, views], new
        self.sessions_gone = set()  # (device, experience, first) of sessions replaced
        self.viewers = set()  # (experience, hour, screen, revision, device, carried)
        # worker/flows.py's figures: (experience, hour, revision) -> [views, first_seen,
        # last_seen, person keys, identified person keys, sessions, duration_sum, bounces,
        # {duration bucket: +-sessions}]
        self.revisions = {}
        # (experience, hour, revision, screen) -> [positions, to_reach, on_screen], each
        # {bucket: +-sessions}
        self.flow_screens = {}
        self.flow_exits = {}  # (experience, hour, revision, exit, reached) -> +-sessions
        self.flow_moves = {}  # (experience, hour, revision, source, target) -> +-moves
        self.links = {}  # (device, user) -> moment: links new or found earlier
        self.persons = {}  # device -> its person's user key now, or None: those changed
        self.recount = set()  # (experience, hour) whose people are counted again
        self.events = 0  # SDK events read (screen views and the rest)
        self.set_aside = 0  # of those, the ones that could not be counted

    def hour(self, experience, hour):
        """The changes of one experience's hour, to add to in place."""
        changes = self.hours.get((experience, hour))
        if changes is None:
            changes = self.hours[experience, hour] = [0, set(), set(), 0, 0, 0, 0, {}]
        return changes

    def screen(self, experience, screen, hour, revision):
        changes = self.screens.get((experience, screen, hour, revision))
        if changes is None:
            changes = self.screens[experience, screen, hour, revision] = [0, set()]
        return changes

    def revision(self, key):
        """The changes of one (experience, hour, revision), to add to in place."""
        changes = self.revisions.get(key)
        if changes is None:
            changes = self.revisions[key] = [0, None, None, set(), set(), 0, 0, 0, {}]
        return changes

    def flow_screen(self, key, screen):
        """The flow changes of one screen of an (experience, hour, revision)."""
        changes = self.flow_screens.get((*key, screen))
        if changes is None:
            changes = self.flow_screens[(*key, screen)] = [{}, {}, {}]
        return changes

    def replace_sessions(self, device, experience, replaced, joined):
        """Record that the sessions `joined` (kept as they are: lists, or a StoredViews
        extended) took the place of `replaced`."""
        # A session extended at its end keeps its stored parts, and gains one; any other
        # replaced session goes, parts and all, even where a joined one takes its key.
        extended = {first for first, _, views in joined
                    if type(views) is StoredViews and views.base is not None}
        for first, _, _ in replaced:
            if first not in extended:
                self.sessions_gone.add((device, experience, first))
        for session in joined:
            first, _, _ = session
            self.sessions[device, experience, first] = session


class OverviewStore(derived_store.Writer):
    """The worker's side: open (or create), read what it holds of some installs and users,
    commit, set aside."""

    def __init__(self, state_dir, path=None):
        layout = Layout(state_dir)
        super().__init__(layout, path or layout.overview)
        self.keys = derived_store.ExperienceKeys()

    def open(self, session_timeout):
        """Open the store, creating it empty (for `session_timeout`) if missing; return its
        OverviewState. Raises CorruptOverview if the file is not a store this code can
        trust."""
        if not self.path.exists():
            self._create(session_timeout)
        try:
            self.db, state = derived_store.open_writer(
                self.path, VERSION, STATE_COLUMNS,
                [("merge_people", merge_people), ("add_durations", add_durations)])
        except derived_store.Unusable as problem:
            raise CorruptOverview(str(problem)) from None
        self.keys.load(self.db)
        return OverviewState(*state)

    def _create(self, session_timeout):
        derived_store.create(self.path, SCHEMA,
                             "INSERT INTO state VALUES (?, ?, x'', 0, 0, 0, '', 0)",
                             (VERSION, session_timeout))

    def _each_part(self, keys, query):
        """The rows of `query` (with a {marks} for an IN list) for every key, asked 500 at a
        time (within SQLite's limit on parameters)."""
        keys = list(keys)
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            yield from self.db.execute(query.format(marks=",".join("?" * len(part))), part)

    def sessions(self, devices):
        """{(device, experience): its sessions, [[first, last, views], ...] by first} of
        these installs, their views StoredViews (worker/sessions.views_of reads them)."""
        sessions = collections.defaultdict(list)
        for device, experience, first, last, summary in self._each_part(
                devices, "SELECT device, experience, first, last, summary FROM session "
                         "WHERE device IN ({marks}) ORDER BY device, experience, first"):
            sessions[device, experience].append([first, last, StoredViews(
                first, summary, functools.partial(self._views, device, experience, first))])
        return sessions

    def _views(self, device, experience, first):
        """A stored session's views, from its parts."""
        views, revision = [], None
        for part, in self.db.execute(
                "SELECT views FROM session_part WHERE device = ? AND experience = ? AND "
                "first = ? ORDER BY part", (device, experience, first)):
            views += decode_views(first, part, revision)
            revision = views[-1][2]
        return views

    def links(self, devices):
        """{device: {user: moment of its first link}} of these installs (those with links)."""
        links = collections.defaultdict(dict)
        for device, user, moment in self._each_part(
                devices, "SELECT device, user, moment FROM link WHERE device IN ({marks})"):
            links[device][user] = moment
        return links

    def persons(self, devices):
        """{device: its person's user key} of those of these installs that have one."""
        return dict(self._each_part(
            devices, "SELECT device, user FROM person WHERE device IN ({marks})"))

    def installs(self, users):
        """{user: how many installs are linked to it} of these users (those linked)."""
        return dict(self._each_part(
            users, "SELECT user, count(*) FROM link WHERE user IN ({marks}) GROUP BY user"))

    def linked_to(self, users):
        """The installs linked to any of these users."""
        return {device for device, in self._each_part(
            users, "SELECT device FROM link WHERE user IN ({marks})")}

    def commit(self, changes, source, position, log_end):
        """Apply `changes` and move the position, in one transaction. The caller has made
        the source durable up to `position`."""
        db = self.db
        try:
            with derived_store.transaction(db):
                self.keys.write_new(db)
                rows = changes.hours
                for level in LEVELS:  # each level added up from the finer one before it
                    rows = self._experience_rows(level, rows)
                self._screen_rows(changes)
                self._write(
                    "INSERT INTO name VALUES (?, ?, ?, ?) ON CONFLICT (experience, screen) DO "
                    "UPDATE SET moment = excluded.moment, name = excluded.name WHERE "
                    "(excluded.moment, excluded.name) > (moment, name)",
                    [(experience, screen, moment, name)
                     for (experience, screen), (moment, name) in changes.names.items()])
                self._sessions(changes)
                self._write("INSERT OR IGNORE INTO viewer VALUES (?, ?, ?, ?, ?, ?)",
                            changes.viewers)
                self._flow_rows(changes)
                self._write("INSERT OR REPLACE INTO link VALUES (?, ?, ?)",
                            [(*key, moment) for key, moment in changes.links.items()])
                self._write("DELETE FROM person WHERE device = ?",
                            [(device,) for device, user in changes.persons.items()
                             if user is None])
                self._write("INSERT OR REPLACE INTO person VALUES (?, ?)",
                            [(device, user) for device, user in changes.persons.items()
                             if user is not None])
                self._count_people_again(changes.recount)
                db.execute("UPDATE state SET source = ?, position = ?, log_end = ?, "
                           "events = events + ?, set_aside = set_aside + ?, updated_at = ?",
                           (source, position, log_end, changes.events, changes.set_aside,
                            utc_now()))
        except BaseException:
            self.keys.forget_new()
            raise

    def _sessions(self, changes):
        """Write the sessions that changed: the replaced ones go, a session extended at its
        end gains a part, and any other is written whole."""
        rows, parts = [], []
        for (device, experience, first), (_, last, views) in changes.sessions.items():
            if type(views) is not StoredViews:
                views = StoredViews.of(first, views)
            summary, new_parts = views.stored()
            rows.append((device, experience, first, last, summary))
            parts += [(device, experience, first, part, text) for part, text in new_parts]
        for table in ("session", "session_part"):
            self._write(f"DELETE FROM {table} WHERE device = ? AND experience = ? AND "
                        "first = ?", changes.sessions_gone)
        self._write("INSERT OR REPLACE INTO session VALUES (?, ?, ?, ?, ?)", rows)
        self._write("INSERT INTO session_part VALUES (?, ?, ?, ?, ?)", parts)

    def _write(self, statement, rows):
        """executemany(statement, rows), the rows in the order of their keys (each row's
        tuple begins with its table's primary key): rows next to each other in a table's
        B-tree are written one after the other, each page found once rather than again and
        again in an order a dict happened to keep."""
        self.db.executemany(statement, sorted(rows))

    def _count_people_again(self, hours):
        """Set the people of these (experience, hour)s, of their screens and of their
        revisions to the persons of their viewers by the links as they stand now (after this
        commit's), and the people of their days and weeks to the union of their hours' and
        days': what an install's changed person takes out of them and puts in."""
        for experience, hour in sorted(hours):
            people, identified = set(), set()
            screens = collections.defaultdict(set)  # (screen, revision) -> people
            revisions = collections.defaultdict(lambda: (set(), set()))
            for screen, revision, device, carried, user in self.db.execute(
                    "SELECT viewer.screen, viewer.revision, viewer.device, viewer.carried, "
                    "person.user FROM viewer LEFT JOIN person ON person.device = viewer.device "
                    "WHERE viewer.experience = ? AND viewer.hour = ?", (experience, hour)):
                user = carried or user
                person = user or device
                revision_people, revision_identified = revisions[revision]
                people.add(person)
                screens[screen, revision].add(person)
                revision_people.add(person)
                if user:
                    identified.add(person)
                    revision_identified.add(person)
            self.db.execute("UPDATE experience_hour SET people = ?, identified = ? "
                            "WHERE bucket = ? AND experience = ?",
                            (encode_people(people), encode_people(identified), hour,
                             experience))
            self.db.executemany(
                "UPDATE screen_hour SET people = ? WHERE experience = ? AND bucket = ? AND "
                "screen = ? AND revision = ?",
                [(encode_people(persons), experience, hour, screen, revision)
                 for (screen, revision), persons in screens.items()])
            self.db.executemany(
                "UPDATE revision_hour SET people = ?, identified = ? WHERE experience = ? AND "
                "bucket = ? AND revision = ?",
                [(encode_people(persons), encode_people(known), experience, hour, revision)
                 for revision, (persons, known) in revisions.items()])
        finer, parts = hours, HOUR
        for level in (DAY, WEEK):  # a day's people are its hours', a week's its days'
            buckets = {(experience, bucket - bucket % level) for experience, bucket in finer}
            for experience, bucket in sorted(buckets):
                people, identified = People(), People()
                starts = list(range(bucket, bucket + level, parts))
                for stored, stored_identified in self.db.execute(
                        f"SELECT people, identified FROM experience_{LEVELS[parts]} WHERE "
                        f"experience = ? AND bucket IN ({','.join('?' * len(starts))})",
                        (experience, *starts)):
                    people.merge_encoded(stored)
                    identified.merge_encoded(stored_identified)
                self.db.execute(f"UPDATE experience_{LEVELS[level]} SET people = ?, "
                                "identified = ? WHERE bucket = ? AND experience = ?",
                                (people.encode(), identified.encode(), bucket, experience))
            finer, parts = buckets, level

    def _experience_rows(self, level, finer):
        """Add the changes to the `level` table's rows: one upsert per row, the sums added
        and the people and durations merged by SQL functions (merge_people, add_durations),
        in SQLite's loop rather than a read and a write per row. `finer`:
        the changes of the level below ({(experience, bucket): changes}, Changes.hours for
        HOUR itself); returns this level's, for the next."""
        if level == HOUR:
            merged = finer
        else:
            merged = {}  # the finer buckets' changes, added up per day or week
            for (experience, bucket), row in finer.items():
                key = (experience, bucket - bucket % level)
                total = merged.get(key)
                if total is None:
                    merged[key] = [row[VIEWS], set(row[PEOPLE]), set(row[IDENTIFIED]),
                                   *row[SESSIONS:BOUNCES + 1], dict(row[DURATIONS])]
                    continue
                total[PEOPLE].update(row[PEOPLE])
                total[IDENTIFIED].update(row[IDENTIFIED])
                for index in (VIEWS, SESSIONS, DURATION_SUM, SESSION_SCREENS, BOUNCES):
                    total[index] += row[index]
                durations = total[DURATIONS]
                for duration, sessions in row[DURATIONS].items():
                    durations[duration] = durations.get(duration, 0) + sessions
        self._write(
            f"INSERT INTO experience_{LEVELS[level]} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (bucket, experience) DO UPDATE SET views = views + excluded.views, "
            "people = merge_people(people, excluded.people), "
            "identified = merge_people(identified, excluded.identified), "
            "sessions = sessions + excluded.sessions, "
            "duration_sum = duration_sum + excluded.duration_sum, "
            "session_screens = session_screens + excluded.session_screens, "
            "bounces = bounces + excluded.bounces, "
            "durations = add_durations(durations, excluded.durations)",
            [(bucket, experience, views, encode_people(people), encode_people(identified),
              sessions, duration_sum, session_screens, bounces, encode_durations(durations))
             for (experience, bucket), (views, people, identified, sessions, duration_sum,
                                        session_screens, bounces, durations)
             in _changing(merged)])
        return merged

    def _flow_rows(self, changes):
        """Add worker/flows.py's changes: each row's counts added, its histograms merged.
        A session taken out in a later commit than the one that put it in (it gained a view,
        or a late one moved its start to another hour) can leave a row of the flow's at
        nothing: it goes, so that the store is the same whatever the commits' boundaries."""
        self._write(
            "INSERT INTO revision_hour VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (experience, bucket, revision) DO UPDATE SET "
            "views = views + excluded.views, "
            "first_seen = min(first_seen, excluded.first_seen), "
            "last_seen = max(last_seen, excluded.last_seen), "
            "people = merge_people(people, excluded.people), "
            "identified = merge_people(identified, excluded.identified), "
            "sessions = sessions + excluded.sessions, "
            "duration_sum = duration_sum + excluded.duration_sum, "
            "bounces = bounces + excluded.bounces, "
            "durations = add_durations(durations, excluded.durations)",
            # A revision's hour changed only by a session taken out has no views here:
            # its stored first and last seen stay (min and max with these bounds).
            [(experience, hour, revision, views,
              2**62 if first_seen is None else first_seen,
              -1 if last_seen is None else last_seen, encode_people(people),
              encode_people(identified), sessions, duration_sum, bounces,
              encode_durations(durations))
             for (experience, hour, revision), (views, first_seen, last_seen, people,
                                                identified, sessions, duration_sum, bounces,
                                                durations)
             in _changing(changes.revisions)])
        self._write(
            "INSERT INTO flow_screen VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (experience, bucket, revision, screen) DO UPDATE SET "
            # Most changes add to one histogram of the three (the seconds on a screen of a
            # session that grew): the others are left as they are, without a call to Python.
            "positions = CASE excluded.positions WHEN x'' THEN positions ELSE "
            "add_durations(positions, excluded.positions) END, "
            "to_reach = CASE excluded.to_reach WHEN x'' THEN to_reach ELSE "
            "add_durations(to_reach, excluded.to_reach) END, "
            "on_screen = CASE excluded.on_screen WHEN x'' THEN on_screen ELSE "
            "add_durations(on_screen, excluded.on_screen) END",
            [(*key, *(encode_durations(histogram) for histogram in histograms))
             for key, histograms in _changing(changes.flow_screens)])
        for table, pair, column, rows in (
                ("flow_exit", "exit, reached", "sessions", changes.flow_exits),
                ("flow_move", "source, target", "moves", changes.flow_moves)):
            self._write(
                f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (experience, "
                f"bucket, revision, {pair}) DO UPDATE SET {column} = {column} + "
                f"excluded.{column}",
                [(*key, count) for key, count in rows.items() if count])
            first, second = pair.split(", ")
            self._write(
                f"DELETE FROM {table} WHERE experience = ? AND bucket = ? AND revision = ? "
                f"AND {first} = ? AND {second} = ? AND {column} = 0",
                [key for key, count in rows.items() if count < 0])
        self._write(
            "DELETE FROM flow_screen WHERE experience = ? AND bucket = ? AND revision = ? "
            "AND screen = ? AND positions = x'' AND to_reach = x'' AND on_screen = x''",
            [key for key, histograms in changes.flow_screens.items()
             if any(count < 0 for histogram in histograms for count in histogram.values())])

    def _screen_rows(self, changes):
        self._write(
            "INSERT INTO screen_hour VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (experience, bucket, screen, revision) DO UPDATE SET "
            "views = views + excluded.views, people = merge_people(people, excluded.people)",
            [(experience, hour, screen, revision, views, encode_people(people))
             for (experience, screen, hour, revision), (views, people)
             in changes.screens.items()])

    def reset(self, session_timeout):
        """Empty the store and its position in one transaction (for a recount)."""
        with derived_store.transaction(self.db) as db:
            self.keys.reset(db)
            for table in (*(f"experience_{level}" for level in LEVELS.values()),
                          "screen_hour", "name", "session", "session_part", "viewer", "link",
                          "person", "revision_hour", "flow_screen", "flow_exit", "flow_move"):
                db.execute(f"DELETE FROM {table}")
            db.execute("UPDATE state SET session_timeout = ?, source = x'', "
                       "position = 0, log_end = 0, events = 0, set_aside = 0, updated_at = ?",
                       (session_timeout, utc_now()))


def _changing(rows):
    """The (key, changes) of `rows` whose changes change something: a session taken out and
    put in again (a late view, or a view more of a session counted before) leaves most of its
    rows as they were, and those are not written."""
    for key, row in rows.items():
        if any(any(part.values()) if type(part) is dict else part for part in row):
            yield key, row


def pieces(start, end):
    """[start, end) (whole hours) as [(HOUR, DAY or WEEK, start, end)]: the fewest rows that
    cover it: whole weeks from the week rows, whole UTC days around them from the day rows,
    the hours at either end from the hour rows. A read of level WHOLE reads these."""
    first_day, last_day = -(-start // DAY) * DAY, end // DAY * DAY
    if first_day >= last_day:
        return [(HOUR, start, end)]
    first_week, last_week = -(-first_day // WEEK) * WEEK, last_day // WEEK * WEEK
    if first_week >= last_week:
        parts = [(HOUR, start, first_day), (DAY, first_day, last_day), (HOUR, last_day, end)]
    else:
        parts = [(HOUR, start, first_day), (DAY, first_day, first_week),
                 (WEEK, first_week, last_week), (DAY, last_week, last_day),
                 (HOUR, last_day, end)]
    return [part for part in parts if part[1] < part[2]]


class OverviewReader:
    """The ingest's side: the rows of a range, read in one snapshot per question."""

    def __init__(self, state_dir, path=None):
        self.path = path or Layout(state_dir).overview
        self._db = derived_store.Readers(self.path).connection

    def run(self, calls, project=""):
        """The rows of each read in `calls` ([(name, *arguments)], a name of READS) of
        `project`'s experiences, all read in one snapshot: every read sees the same commit.
        Raises NoOverview while there is no usable store."""
        db = self._db()
        if db is None:
            raise NoOverview("no overview yet: the worker has not created "
                             f"{self.path.name} (is MINI_ANALYTICS_OVERVIEW off?)")
        reads = _Reads(db, project)
        try:
            db.execute("BEGIN")
            try:
                return [list(getattr(reads, name)(*arguments)) for name, *arguments in calls]
            finally:
                db.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise NoOverview(f"{self.path.name} is unreadable ({error}); the worker will set "
                             "it aside and count the overview again") from None


class NoOverview(Exception):
    """There is no usable overview store now (none yet, or a damaged one); the message says
    why."""


# The reads OverviewReader.run answers: also what a cluster worker answers for the ingest.
READS = ("experience_rows", "experience_sums", "experience_sketches", "screen_rows", "names",
         "state", "revision_rows", "flow_screen_rows", "flow_exit_rows", "flow_move_rows",
         "goal_people")


class _Reads:
    """The reads of one project's experiences: each takes and gives experience ids, and
    reads the rows filed under their keys (derived_store.ExperienceKeys), none of another
    project's."""

    def __init__(self, db, project):
        self.db = db
        self.project = project

    def _key(self, experience):
        """The key of one of the project's experiences, or None if the store has nothing of
        it (its reads are then empty)."""
        return derived_store.key_of(self.db, self.project, experience)

    def _every(self, table, columns, where, parameters):
        """`columns` (each prefixed t.) of the project's rows of `table` that meet `where`,
        the experience's id first."""
        if not self.project:
            return self.db.execute(
                f"SELECT t.experience, {columns} FROM {table} AS t WHERE t.experience >= 0 "
                f"AND {where}", parameters)
        return self.db.execute(
            f"SELECT k.experience, {columns} FROM {table} AS t JOIN experience_key AS k ON "
            f"k.key = t.experience WHERE k.project = ? AND {where}",
            (self.project, *parameters))

    def experience_rows(self, level, start, end, experience):
        """(bucket, experience, views, people, identified, sessions, duration_sum,
        session_screens, bounces, durations) of one experience in the `level` table (HOUR or
        DAY), [start, end); or of its pieces(), for WHOLE."""
        if level == WHOLE:
            return [row for part in pieces(start, end)
                    for row in self.experience_rows(*part, experience)]
        key = self._key(experience)
        if key is None:
            return []
        # One key seek per bucket (generated, not scanned), as in the series store.
        return self.db.execute(
            "WITH RECURSIVE wanted(bucket) AS (SELECT ? UNION ALL SELECT bucket + ? FROM "
            f"wanted WHERE bucket + ? < ?) SELECT t.bucket, ?, "
            f"{', '.join('t.' + column for column in EXPERIENCE_COLUMNS)} FROM wanted "
            f"CROSS JOIN experience_{LEVELS[level]} AS t ON t.bucket = wanted.bucket AND "
            "t.experience = ?", (start - start % level, level, level, end, experience, key))

    def experience_sums(self, level, start, end):
        """(experience, views, sessions, duration_sum, session_screens, bounces), summed over
        the `level` table's buckets in [start, end), for every experience; for WHOLE, those
        of each of its pieces(), an experience's rows to be added."""
        if level == WHOLE:
            return [row for part in pieces(start, end) for row in self.experience_sums(*part)]
        return self._every(
            f"experience_{LEVELS[level]}", "sum(t.views), sum(t.sessions), "
            "sum(t.duration_sum), sum(t.session_screens), sum(t.bounces)",
            "t.bucket >= ? AND t.bucket < ? GROUP BY t.experience", (start, end))

    def experience_sketches(self, level, start, end):
        """(experience, people, identified, durations) of every row of the `level` table in
        [start, end) (for WHOLE, of its pieces())."""
        if level == WHOLE:
            return [row for part in pieces(start, end)
                    for row in self.experience_sketches(*part)]
        return self._every(f"experience_{LEVELS[level]}", "t.people, t.identified, t.durations",
                           "t.bucket >= ? AND t.bucket < ?", (start, end))

    def screen_rows(self, experience, start, end):
        """(screen, views, people) of the experience's screens, each hour of [start, end)."""
        return self.db.execute(
            "SELECT screen, views, people FROM screen_hour "
            "WHERE experience = ? AND bucket >= ? AND bucket < ?",
            (self._key(experience), start, end))

    def state(self):
        """The store's state row, as an OverviewState."""
        return [OverviewState(*self.db.execute(f"SELECT {STATE_COLUMNS} FROM state").fetchone())]

    def names(self, experience):
        """(experience, screen, moment, name) rows: every experience's own name (screen ''),
        or with `experience`, its own and its screens'."""
        if experience is None:
            return self._every("name", "t.screen, t.moment, t.name", "t.screen = ''", ())
        return self.db.execute("SELECT ?, screen, moment, name FROM name WHERE experience = ?",
                               (experience, self._key(experience)))

    # worker/flows.py's figures: one experience's hour rows of [start, end), every revision.

    def revision_rows(self, experience, start, end):
        """(revision, views, first_seen, last_seen, people, sessions, duration_sum, bounces,
        durations)."""
        return self.db.execute(
            "SELECT revision, views, first_seen, last_seen, people, sessions, duration_sum, "
            "bounces, durations FROM revision_hour WHERE experience = ? AND bucket >= ? AND "
            "bucket < ?", (self._key(experience), start, end))

    def flow_screen_rows(self, experience, start, end):
        """(revision, screen, positions, to_reach, on_screen)."""
        return self.db.execute(
            "SELECT revision, screen, positions, to_reach, on_screen FROM flow_screen "
            "WHERE experience = ? AND bucket >= ? AND bucket < ?",
            (self._key(experience), start, end))

    def flow_exit_rows(self, experience, start, end):
        """(revision, exit, reached, sessions)."""
        return self.db.execute(
            "SELECT revision, exit, reached, sum(sessions) FROM flow_exit WHERE experience = ? "
            "AND bucket >= ? AND bucket < ? GROUP BY revision, exit, reached HAVING "
            "sum(sessions) != 0", (self._key(experience), start, end))

    def flow_move_rows(self, experience, start, end):
        """(revision, source, target, moves)."""
        return self.db.execute(
            "SELECT revision, source, target, sum(moves) FROM flow_move WHERE experience = ? "
            "AND bucket >= ? AND bucket < ? GROUP BY revision, source, target HAVING "
            "sum(moves) != 0", (self._key(experience), start, end))

    def goal_people(self, experience, start, end, screen):
        """(revision, people) of one screen: the people who viewed it, each hour."""
        return self.db.execute(
            "SELECT revision, people FROM screen_hour WHERE experience = ? AND bucket >= ? AND "
            "bucket < ? AND screen = ?", (self._key(experience), start, end, screen))
