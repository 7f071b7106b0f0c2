"""The experience overview, counted from the SDK events' details into an overview store.

The events are read by worker/sdk_events.py (SdkEvents: which are screen views, of which
install and user). OverviewCounter holds the counting rule: screen views placed in their
hours, sessions (worker/sessions.py), their flows (worker/flows.py) and people
(worker/people.py), the changes committed with the new position in one transaction
(storage/views/overview_store.py).
Both workers use it: Overview, below, on data1.details, and the cluster's worker on each
partition's messages (worker/stream_runner.py).

On one machine the worker calls advance(end) once data1 is durable and counted up to `end`:
every group of data1.details whose data1 bytes end there or before is counted, or, when the
overview is far behind, as many as fit in a slice of time, the rest in the next passes
(worker/runner.py: the counts never wait for the overview).

Only a group whose data1 bytes the worker has already read is counted. The ingest writes a
group before its data1 bytes and takes it back only if that data1 write fails, so a group
whose bytes are in data1 is never taken back; and the group read at that place is the one
describing those bytes (a group taken back was replaced before its successor's bytes went
to data1). Before a commit claims a stretch of the details file, that stretch is made
durable, as data1 is before data2 claims it.

The position is the details file's own (an offset in it, and the file's identity), so a
store built from another details file, or with another session timeout, or ahead of the
file, is never continued: it is set aside and the overview counted again from the start.
"""

import collections
import itertools
import logging
import os
import time

import numpy

from storage.layout import Layout, names_open_file
from storage.log.details import HEADER, read_header
from storage.views.overview_store import (BOUNCES, DURATION_SUM, DURATIONS, IDENTIFIED, PEOPLE,
                                          REVISION_FIRST_SEEN, REVISION_IDENTIFIED,
                                          REVISION_LAST_SEEN, REVISION_PEOPLE, REVISION_VIEWS,
                                          SCREEN_PEOPLE, SCREEN_VIEWS, SESSION_SCREENS,
                                          MAX_INSTALLS_PER_USER, SESSIONS, VIEWS, Changes,
                                          CorruptOverview, OverviewStore)
from storage.views.sketches import duration_bucket
from worker.columns import EXPERIENCE_NAME, REVISION, SCREEN, SCREEN_NAME
from worker.flows import add_session, extend_session
from worker.overview_answers import OverviewAnswers
from worker.people import person_of
from worker.sdk_events import (VIEW_DEVICE, VIEW_EXPERIENCE, VIEW_EXPERIENCE_NAMED, VIEW_MOMENT,
                               VIEW_SCREEN_NAMED, VIEWER, SdkEvents, stored_text)
from worker.sessions import extend, place

log = logging.getLogger("worker")
# Commit at least every this many SDK events, which bounds the memory a catch-up holds.
# Measured on a catch-up of 206,170 SDK events with flows: peak RSS 304 MB at 100,000, 185 MB
# at 50,000, 119 MB at 25,000, at about the same events per CPU-second (within the noise).
COMMIT_EVENTS = 50_000
# overview.duckdb's commits (FactCounter) hold twice as many: each scans the store's fact,
# session and link tables whole (semi joins), so fewer commits pay less. On the bench's
# backlog (2 M events) in process: 122,000 -> 134,000 SDK events a CPU-second, peak RSS 206
# -> 227 MB with FactStore's MEMORY_LIMIT (200,000: 136,000, and 272 MB even with DuckDB held
# to 64 MB).
FACT_COMMIT_EVENTS = 100_000
# A commit sized by the time left (OverviewCounter.commit_size) holds at least this many: each
# commit costs a transaction and a read of its installs' sessions, and the overview must move
# on in every slice of time it is given, however short.
MIN_COMMIT_EVENTS = 1_000


class OverviewCounter:
    """One overview store and the rule that fills it: screen views in, placed in their hours
    and sessions, committed with the source's new position. Shared by the worker on
    data1.details (Overview, below) and by each partition of the cluster's worker
    (worker/stream_runner.py); `source_name` names the source in the log."""

    def __init__(self, store, session_timeout, source_name):
        self.store = store
        self.timeout = int(session_timeout)
        self.source_name = source_name
        self.source = b""  # the identity of what it is counted from; b"" until a commit
        self.position = 0  # how far in it
        self.log_end = 0
        # How long an SDK event took to count in the last commits (seconds, a moving
        # average), or None before the first: sizes a commit that must end by a given time.
        self.seconds_per_event = None

    def open(self):
        """Open the store, and start it over if it cannot be continued (then its position
        is 0)."""
        try:
            state = self.store.open(self.timeout)
        except CorruptOverview as problem:
            self.start_over(f"{self.store.path.name} is unusable: {problem}")  # opens it anew
            return
        if state.session_timeout != self.timeout:
            self.start_over(f"it was counted with a session timeout of "
                            f"{state.session_timeout}s, and the timeout is now "
                            f"{self.timeout}s", aside=False)
            return
        self.source, self.position, self.log_end = state.source, state.position, state.log_end
        log.info("overview store %s at %s position %d, %d SDK events", self.store.path.name,
                 self.source_name, self.position, state.events)

    def start_over(self, reason, aside=True):
        """Never continue from a store that cannot be trusted: set it aside (or, when it is
        sound but of another source or rule, empty it) and count from the start."""
        if aside:
            where = self.store.set_aside()
            log.error("OVERVIEW REJECTED: %s; moved it aside to %s; counting %s again from "
                      "the start", reason, where, self.source_name)
            self.store.open(self.timeout)
        else:
            log.warning("overview: %s; counting %s again from the start", reason,
                        self.source_name)
            self.store.reset(self.timeout)
        self.source, self.position, self.log_end = b"", 0, 0

    def rebuild(self):
        """Empty the store, for a recount from the start."""
        try:
            self.store.open(self.timeout)
        except CorruptOverview as problem:
            self.start_over(f"{self.store.path.name} is unusable: {problem}")
        self.store.reset(self.timeout)
        self.source, self.position, self.log_end = b"", 0, 0

    def commit_size(self, until=None):
        """How many SDK events to gather for the next commit: most_events(), or with `until`
        (a time.monotonic() moment) about as many as can be counted by then at the speed of
        the last commits, so that a slice of time ends near its end even when one commit
        would take longer than the whole slice. Never fewer than MIN_COMMIT_EVENTS (the
        first commit, whose speed is not known yet, holds that many)."""
        most = self.most_events()
        if until is None:
            return most
        if self.seconds_per_event is None:
            return min(most, MIN_COMMIT_EVENTS)
        fits = (until - time.monotonic()) / self.seconds_per_event
        return int(min(most, max(MIN_COMMIT_EVENTS, fits)))

    @staticmethod
    def most_events():
        """The most SDK events a commit holds."""
        return COMMIT_EVENTS

    def count(self, read, source, position, log_end):
        """Place the screen views and links of `read` (SdkEvents) and commit them with the
        new position; the events it set aside are counted in the store's state and logged.
        The caller has made the source durable up to `position`."""
        if not read.events and position == self.position:
            return 0
        started = time.monotonic()
        read.columns_as_views()
        views, set_aside = read.views, read.set_aside
        changes = Changes()
        changes.events = read.events
        changes.set_aside = len(set_aside)
        self._log_set_aside(set_aside)
        # Every install's state in a few queries, not a few per view.
        viewing = set(map(VIEW_DEVICE, views))
        persons, changed = self._link(changes, read.links, viewing)
        stored = self.store.sessions(viewing | changed)
        for (device, experience), sessions in stored.items():
            if device in changed:  # its people are counted again wherever it has views
                for first, last, _ in sessions:
                    changes.recount.update((experience, hour) for hour in
                                           range(first - first % 3600, last + 1, 3600))
        # Each experience's key, in the order first viewed (a new key is numbered in order).
        filed_under = self.store.keys.key
        keys = {experience: filed_under(*experience)
                for experience in dict.fromkeys(map(VIEW_EXPERIENCE, views))}
        # An install's batch views a few screens many times: each distinct viewer of a
        # screen in an hour (counted in C) adds its views and its person once.
        for (experience, hour, screen, revision, device, carried), seen in \
                collections.Counter(map(VIEWER, views)).items():
            experience = keys[experience]
            user = carried or persons.get(device)
            person = user or device
            row = changes.hour(experience, hour)
            row[VIEWS] += seen
            row[PEOPLE].add(person)
            if user:
                row[IDENTIFIED].add(person)
            row = changes.screen(experience, screen, hour, revision)
            row[SCREEN_VIEWS] += seen
            row[SCREEN_PEOPLE].add(person)
            changes.viewers.add((experience, hour, screen, revision, device, carried))
            row = changes.revision((experience, hour, revision))
            row[REVISION_VIEWS] += seen
            row[REVISION_PEOPLE].add(person)
            if user:
                row[REVISION_IDENTIFIED].add(person)
        placing = collections.defaultdict(list)  # (device, experience) -> its views here
        moments = collections.defaultdict(list)  # (experience, hour, revision) -> its views'
        for experience, hour, screen, revision, device, _, moment, _, _ in views:
            placing[device, experience].append((moment, screen, revision))
            moments[experience, hour, revision].append(moment)
        for (experience, hour, revision), seen in moments.items():
            row = changes.revision((keys[experience], hour, revision))
            first, last = min(seen), max(seen)
            if row[REVISION_FIRST_SEEN] is None or first < row[REVISION_FIRST_SEEN]:
                row[REVISION_FIRST_SEEN] = first
            if row[REVISION_LAST_SEEN] is None or last > row[REVISION_LAST_SEEN]:
                row[REVISION_LAST_SEEN] = last
        _names(changes, keys, views)
        for (device, experience), placed in placing.items():
            self._place(changes, stored, device, keys[experience], placed)
        self.store.commit(changes, source, position, log_end)
        self.source, self.position, self.log_end = source, position, log_end
        self._note_speed(started, read.events)
        return read.events

    @staticmethod
    def _log_crowding(users):
        """One line for the `users` a commit's links made crowded, if any."""
        if users:
            log.warning("overview: %d userIDs are now linked from more than %d installs each "
                        "(a test account, a shared login?): they link none of them, so those "
                        "installs' anonymous views count for each install "
                        "(worker/people.py)", users, MAX_INSTALLS_PER_USER)

    def _log_set_aside(self, set_aside):
        """One line for the events a commit sets aside ((id, why)), naming the first."""
        if set_aside:
            named, why = set_aside[0]
            log.error("overview: %d SDK events in %s cannot be counted and are set aside "
                      "(kept in the source, counted in /stats as overview_set_aside), e.g. "
                      "event %s: %s", len(set_aside), self.source_name, named, why)

    def _note_speed(self, started, events):
        """Fold the commit begun at `started` (time.monotonic()) into seconds_per_event."""
        if events:
            took = (time.monotonic() - started) / events
            last = self.seconds_per_event
            self.seconds_per_event = took if last is None else (last + took) / 2

    def _link(self, changes, links, viewing):
        """Add `links` ((device, user, moment)) to the store's, and find each install's
        person by the people rule (worker/people.py). Returns ({device: its person's user
        key} for the `viewing` installs and those whose person changed, the installs whose
        person changed); the changes are recorded in `changes`."""
        store = self.store
        earliest = _earliest_links(links)
        linking = {device for device, _ in earliest}
        known = store.links(linking)
        new_installs = collections.Counter()  # user -> installs linked to it first here
        for (device, user), moment in earliest.items():
            mine = known[device]
            if user not in mine:
                new_installs[user] += 1
            if user not in mine or moment < mine[user]:
                mine[user] = changes.links[device, user] = moment
        installs = store.installs(new_installs)
        crowding = {user for user, added in new_installs.items()
                    if installs.get(user, 0) <= MAX_INSTALLS_PER_USER
                    < installs.get(user, 0) + added}
        self._log_crowding(len(crowding))
        # Every install linked to a user that just became crowded loses that link too.
        affected = linking | store.linked_to(crowding)
        known.update(store.links(affected - known.keys()))
        users = {user for device in affected for user in known[device]}
        installs.update(store.installs(users - new_installs.keys()))  # the rest asked above
        crowded = {user for user in users
                   if installs.get(user, 0) + new_installs[user] > MAX_INSTALLS_PER_USER}
        persons = store.persons(viewing | affected)
        changed = set()
        for device in affected:
            person = person_of(known[device], crowded)
            if person != persons.get(device):
                changes.persons[device] = persons[device] = person
                changed.add(device)
        return persons, changed

    def close(self):
        self.store.close()

    def _place(self, changes, stored, device, experience, views):
        """Place an install's screen views of an experience ((moment, screen, revision)) in
        its sessions (`stored`: every session of the commit's installs, as loaded from the
        store, kept whole in place), all at once: the sessions they replace are counted out
        and the sessions they are now in counted in, each once however many views it gained.
        Views that extend the last session at its end (an install's next batch) change its
        flow by theirs alone, and its stored views are appended to, not read."""
        sessions = stored[device, experience]
        extension = extend(sessions, views, self.timeout)
        replaced, joined = extension or place(sessions, views, self.timeout)
        changes.replace_sessions(device, experience, replaced, joined)
        for session in replaced:
            _count_session(changes, experience, session, -1)
        for session in joined:
            _count_session(changes, experience, session, 1)
        if extension:
            extend_session(changes, experience, replaced[0], joined[0])
            joined = joined[1:]  # runs after a gap: sessions of their own
        else:
            for session in replaced:
                add_session(changes, experience, session, -1)
        for session in joined:
            add_session(changes, experience, session, 1)


class Overview:
    """The overview on one machine: counted from data1.details into overview.sqlite3, or
    with `facts` into overview.duckdb (storage/views/overview_facts.py), whose reads only
    this process can make: it answers the ingest's (worker/overview_answers.py)."""

    def __init__(self, state_dir, session_timeout, facts=False):
        self.layout = Layout(state_dir)
        self.answers = None
        if facts:
            # Only a worker keeping overview.duckdb loads DuckDB (21 MB of memory).
            from storage.views.overview_facts import FactReader, FactStore

            store = FactStore(self.layout.overview_facts)
            self.counter = FactCounter(store, session_timeout, "data1.details")
            self.answers = OverviewAnswers(self.layout.worker_socket, FactReader(store),
                                           lambda: self.counter.position)
        else:
            self.counter = OverviewCounter(OverviewStore(state_dir), session_timeout,
                                           "data1.details")
        self.details = None  # read-only descriptor of data1.details, once it exists

    def recover(self):
        self.counter.open()
        if self.answers is not None:
            self.answers.start()

    def rebuild(self):
        self.counter.rebuild()

    def _open_details(self):
        """The details file's identity, checked against the store's position; None while
        there is no details file (no SDK event yet)."""
        path = self.layout.details
        if self.details is not None and not names_open_file(path, self.details):
            os.close(self.details)
            self.details = None
        if self.details is None:
            try:
                self.details = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        identity = read_header(self.details)
        if identity is None:
            return None  # being begun: its header is not written yet
        counter = self.counter
        if counter.source and identity != counter.source:
            counter.start_over("data1.details was begun anew (another file than the one it "
                               "was counted from)", aside=False)
        elif counter.position > os.fstat(self.details).st_size:
            counter.start_over(f"it is counted to offset {counter.position} of "
                               "data1.details, which is shorter")
        return identity

    def advance(self, data1_end, until=None):
        """Count the details groups whose data1 bytes end at or before `data1_end` (read and
        made durable by the caller) and commit them; with `until` (a time.monotonic()
        moment), in commits sized to end by then (OverviewCounter.commit_size), and stop at
        the first commit past it. Returns True once every such group is counted, False if
        some are left for the next call."""
        identity = self._open_details()
        if identity is None:
            return True
        counter = self.counter
        started, counted, screens, done = time.monotonic(), 0, 0, True
        start = offset = max(counter.position, HEADER.size)
        end = counter.log_end
        read = SdkEvents()  # of the groups read since the last commit
        size = counter.commit_size(until)
        while True:
            if counted and not read.events and until is not None and time.monotonic() >= until:
                done = False  # a commit made, its time up, and what follows left for the next
                break
            stretch = read.read_stretch(self.details, offset, data1_end, size - read.events)
            if stretch.data1_end is not None:
                offset, end = stretch.end, stretch.data1_end
            if read.events >= size:
                counted += self._commit(read, identity, offset, end)
                screens += read.screen_views()
                read = SdkEvents()
                size = counter.commit_size(until)
            if stretch.ended:
                break
        counted += self._commit(read, identity, offset, end)
        screens += read.screen_views()
        if counted:
            log.info("overview: counted %d SDK events (%d screen views) in %.3fs; details "
                     "offset %d -> %d%s", counted, screens, time.monotonic() - started, start,
                     offset, "" if done else "; more to count, after the next counts")
        return done

    def _commit(self, read, identity, offset, end):
        if read.events:
            # The store must never claim details a power loss could undo.
            os.fdatasync(self.details)
        return self.counter.count(read, identity, offset, end)

    def close(self):
        if self.answers is not None:
            self.answers.close()
        self.counter.close()
        if self.details is not None:
            os.close(self.details)
            self.details = None


def _names(changes, keys, views):
    """Keep the latest name of each experience and screen among `views` in changes.names
    (by device time; ties go to the greater name): the latest moment of each distinct name
    first, then the latest of those."""
    moments = list(map(VIEW_MOMENT, views))
    latest = {}  # (experience, name) or (experience, screen, name) -> its latest moment
    for named, moment in itertools.chain(zip(map(VIEW_EXPERIENCE_NAMED, views), moments),
                                         zip(map(VIEW_SCREEN_NAMED, views), moments)):
        if moment > latest.get(named, -1):
            latest[named] = moment
    for named, moment in latest.items():
        experience, *screen, name = named
        if name:
            _name(changes.names, (keys[experience], screen[0] if screen else ""), moment, name)


def _name(names, key, moment, name):
    """Keep `name`, seen at `moment`, as the name of `key` in `names` if it is the latest
    (ties go to the greater name)."""
    known = names.get(key)
    if known is None or (moment, name) > known:
        names[key] = (moment, name)


def _column_names(rows, view, texts, screen, stored_screens, experience, keyed):
    """The latest name of each experience and of each (experience, screen) among a
    ProjectRows' screen views (`view`, a boolean array), as _names keeps them (by device
    time; ties go to the greater name; an empty name names nothing), as four arrays:
    experience key, screen id ("" for an experience's name), moment, name. As
    FactCounter._add_columns has them: `texts`, rows.texts and "" (no screen id); `screen`,
    each view's screen as its position there, and `stored_screens`, those made storable
    (_stored_texts); `experience`, each view's experience as its place in `keyed`, their
    keys. Found with one sort a column, no Python object made a row: each distinct name
    made storable and ranked once (a commit's names are thousands of rows; the store's
    reads take the latest of them)."""
    moment = rows.moment[view]
    found = []
    for column, by_screen in ((EXPERIENCE_NAME, False), (SCREEN_NAME, True)):
        present = rows.named[view, column]
        name = rows.text[view, column][present]
        stored, places = _stored_texts(texts, name)
        places = places[stored[places].astype(bool)]  # an empty name names nothing
        if not len(places):
            continue
        # Each name ranked as strings compare, so that moment * len(places) + rank orders
        # as (moment, name) does, in one int64: moments are under 2**40, and a commit's
        # distinct names fewer than its rows (at most a commit's events and one group's, far
        # under 2**23).
        distinct = stored[places].tolist()
        ranked = places[sorted(range(len(places)), key=distinct.__getitem__)]
        rank = numpy.full(len(texts), -1, numpy.int64)
        rank[ranked] = numpy.arange(len(ranked))
        kept = rank[name] >= 0
        latest = moment[present][kept] * len(ranked) + rank[name[kept]]
        where = screen[present][kept] if by_screen else 0
        group = experience[present][kept] * len(texts) + where
        order = numpy.argsort(group)  # a group's order within it is the max's to ignore
        group = group[order]
        starts = numpy.flatnonzero(numpy.concatenate(([True], group[1:] != group[:-1])))
        best = numpy.maximum.reduceat(latest[order], starts)  # each group's latest
        group = group[starts]
        where = group % len(texts)
        screens = stored_screens[where] if by_screen else numpy.full(len(group), "", object)
        found.append((keyed[group // len(texts)], screens, best // len(ranked),
                      stored[ranked[best % len(ranked)]]))
    return found


def _stored_texts(texts, positions):
    """(an object array of `texts`' length: the texts at `positions` (an int array) made
    storable (stored_text), each once, None elsewhere; the distinct positions, an array)."""
    seen = numpy.zeros(len(texts), bool)
    seen[positions] = True
    places = numpy.flatnonzero(seen)
    stored = numpy.empty(len(texts), object)
    stored[places] = list(map(stored_text, map(texts.__getitem__, places.tolist())))
    return stored, places


def _earliest_links(links):
    """{(device, user): the earliest moment they were linked} of `links`, (device, user,
    moment) each (SdkEvents.links): _earliest_link_arrays, as a dict."""
    device, user, moment = _earliest_link_arrays(*_link_arrays(links))
    return dict(zip(zip(device.tolist(), user.tolist()), moment.tolist()))


def _link_arrays(links):
    """`links`, (device, user, moment) each (SdkEvents.links), as three int64 arrays."""
    return tuple(numpy.array(links, numpy.int64).reshape(-1, 3).T)


def _earliest_link_arrays(device, user, moment):
    """The first link of each (device, user) pair among links given as three arrays (the
    one the people rule dates the pair by: worker/people.py), found with a sort: each pair
    once, with its earliest moment, as three arrays."""
    order = numpy.lexsort((moment, user, device))
    device, user, moment = device[order], user[order], moment[order]
    first = numpy.ones(len(device), bool)  # the earliest of each (device, user)
    first[1:] = (device[1:] != device[:-1]) | (user[1:] != user[:-1])
    return device[first], user[first], moment[first]


def _count_session(changes, experience, session, sign):
    """Count a session in (sign 1) or out (sign -1) of the hour it starts in."""
    first, last, views = session
    screens = len(views)
    row = changes.hour(experience, first - first % 3600)
    row[SESSIONS] += sign
    row[DURATION_SUM] += sign * (last - first)
    row[SESSION_SCREENS] += sign * screens
    row[BOUNCES] += sign * (screens == 1)
    durations = row[DURATIONS]
    bucket = duration_bucket(last - first)
    durations[bucket] = durations.get(bucket, 0) + sign


class FactCounter(OverviewCounter):
    """OverviewCounter for storage/views/overview_facts.FactStore (overview.duckdb): a
    stretch's screen views and links appended as facts with the source's new position;
    sessions, people and flows are the store's to work out. Opening, starting over and
    sizing commits are OverviewCounter's, up to FACT_COMMIT_EVENTS a commit."""

    @staticmethod
    def most_events():
        return FACT_COMMIT_EVENTS

    def count(self, read, source, position, log_end):
        if not read.events and position == self.position:
            return 0
        started = time.monotonic()
        store = self.store
        projects = read.columns()  # first: the rows it sets aside are counted below
        batch = store.batch()
        batch.events, batch.set_aside = read.events, len(read.set_aside)
        self._log_set_aside(read.set_aside)
        key, code = store.keys.key, store.code
        keys = {experience: key(*experience)
                for experience in dict.fromkeys(map(VIEW_EXPERIENCE, read.views))}
        codes = {}
        for experience, _, screen, revision, device, carried, moment, _, _ in read.views:
            batch.experience.append(keys[experience])
            batch.moment.append(moment)
            batch.device.append(device)
            batch.carried.append(carried)
            screen_code = codes.get(screen)
            if screen_code is None:
                screen_code = codes[screen] = code(screen)
            batch.screen.append(screen_code)
            revision_code = codes.get(revision)
            if revision_code is None:
                revision_code = codes[revision] = code(revision)
            batch.revision.append(revision_code)
        links = [_link_arrays(read.links)]
        _names(batch, keys, read.views)
        if projects:
            self._add_columns(batch, projects, codes, links)
        batch.links = _earliest_link_arrays(*map(numpy.concatenate, zip(*links)))
        self._log_crowding(store.commit(batch, source, position, log_end))
        self.source, self.position, self.log_end = source, position, log_end
        self._note_speed(started, read.events)
        return read.events

    def _add_columns(self, batch, projects, codes, links):
        """Add the ProjectRows `projects` to `batch` as arrays (after what it holds),
        each experience keyed once, in the order first seen, and each screen and revision id
        coded once; and their links to `links`, as (device, user, moment) arrays."""
        store = self.store
        parts = {name: [numpy.array(getattr(batch, name), numpy.int64)]
                 for name in ("experience", "moment", "device", "carried", "screen",
                              "revision")}
        for rows in projects:
            view = rows.views()
            numbers, first = numpy.unique(rows.experience[view], return_index=True)
            keyed = numpy.zeros(len(numbers), numpy.int64)
            for at in numpy.argsort(first, kind="stable").tolist():
                keyed[at] = store.keys.key(rows.project, int(numbers[at]))
            experience_at = numpy.searchsorted(numbers, rows.experience[view])
            experience = keyed[experience_at]
            texts = rows.texts + [""]  # a screen view without a screen or revision id: ""
            screen, revision = rows.positions(SCREEN, view), rows.positions(REVISION, view)
            coded = numpy.zeros(len(texts), numpy.int64)
            stored, places = _stored_texts(texts, numpy.concatenate((screen, revision)))
            for at, text in zip(places.tolist(), stored[places].tolist()):
                code = codes.get(text)
                if code is None:
                    code = codes[text] = store.code(text)
                coded[at] = code
            for name, column in (("experience", experience), ("moment", rows.moment[view]),
                                 ("device", rows.device[view]),
                                 ("carried", rows.carried[view]),
                                 ("screen", coded[screen]), ("revision", coded[revision])):
                parts[name].append(column)
            linked = rows.carried != 0
            links.append((rows.device[linked], rows.carried[linked], rows.moment[linked]))
            batch.named += _column_names(rows, view, texts, screen, stored, experience_at,
                                         keyed)
        for name, listed in parts.items():
            setattr(batch, name, numpy.concatenate(listed))
