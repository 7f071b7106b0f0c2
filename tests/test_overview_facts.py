"""storage/views/overview_facts.py against the ledger (tests/overview_reference.py): the
figures of every experience over any range equal what the screen views and links say,
whatever the commits' boundaries, the arrival order and the lateness."""

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import overview_reference as ref
from bench import traffic as generator
from storage.layout import Layout
from storage.local_messages import WorkerOverview
from storage.log.details import HEADER, read_groups
from storage.projects import person_text
from storage.views.overview_facts import FLOW_VIEWS, FactReader, FactStore
from storage.views.overview_store import MAX_INSTALLS_PER_USER, MAX_POSITION, NoOverview
from storage.views.sketches import person_key
from test_flows import flows
from test_overview import END, QUERIES, TIMEOUT, answers, count, ingest
from worker.overview import FactCounter
from worker.sdk_events import SdkEvents
from worker.overview_answers import OverviewAnswers


def count_facts(root, commit_events):
    """Read data1.details into a FactStore in commits of about `commit_events`."""
    counter = FactCounter(FactStore(root / "overview.duckdb"), TIMEOUT, "data1.details")
    counter.open()
    fd = os.open(root / "data1.details", os.O_RDONLY)
    try:
        read, end = SdkEvents(), HEADER.size
        for group in read_groups(fd):
            read.read_group(group)
            end = group.end
            if read.events >= commit_events:
                counter.count(read, b"details", end, group.data1_end)
                read = SdkEvents()
        counter.count(read, b"details", end, 0)
    finally:
        os.close(fd)
    return counter


@pytest.fixture(scope="module")
def traffic():
    return generator.generate(seed=7, devices=120, experiences=6, days=4, end=END)


@pytest.mark.parametrize("commit_events", [13, 97, 10**6])
def test_every_figure_equals_the_ledger(tmp_path, traffic, commit_events):
    ingest(tmp_path, traffic.batches)
    counter = count_facts(tmp_path, commit_events)
    assert traffic.late and traffic.retries  # the arrival order is not the device order
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    end = int(END.timestamp())
    ranges = [(0, 2**40), (end - 86400, end), (end - 3 * 86400 - 1800, end - 86400 + 7)]
    checked = 0
    for start, stop in ranges:
        want = ref.overview(traffic.views, TIMEOUT, start, stop, people)
        got = experience_figures(counter.store, start, stop)
        for experience, figures in want.items():
            (views, persons, identified, count, duration_sum, screens, bounces,
             durations) = got[experience]
            assert views == figures["screen_views"]
            assert len(persons) == figures["users"]
            assert len(identified) == figures["identified_users"]
            assert count == figures["sessions"]
            if count:
                assert round(duration_sum / count, 2) == figures["avg_session_seconds"]
                assert round(screens / count, 2) == figures["screens_per_session"]
                assert round(bounces / count, 4) == figures["bounce_rate"]
                ordered = sorted(second for second, times in durations.items()
                                 for _ in range(times))
                assert ref.nearest_rank_median(ordered) == figures["median_session_seconds"]
            checked += 1
    counter.close()
    assert checked >= 12


def screen(anonymous, moment, experience=1, user=None, screen_id="s1", revision="r1"):
    event = {"type": "screen", "anonymousID": anonymous,
             "properties": {"experienceID": str(experience), "id": screen_id,
                            "experienceRevisionID": revision}}
    if user:
        event["userID"] = user
    return {"event": event, "time": moment * 1000}


def identify(anonymous, moment, user):
    return {"event": {"type": "identify", "anonymousID": anonymous, "userID": user},
            "time": moment * 1000}


def facts_of(tmp_path, *commits):
    counter = FactCounter(FactStore(tmp_path / "overview.duckdb"), TIMEOUT, "test")
    counter.open()
    for position, items in enumerate(commits, 1):
        read = SdkEvents()
        read.read(items)
        counter.count(read, b"test", position, position)
    return counter


def test_a_gap_of_the_timeout_is_one_session_and_a_second_more_two(tmp_path):
    start = 1_790_000_000
    counter = facts_of(tmp_path, [screen("a", start), screen("a", start + TIMEOUT)],
                       [screen("a", start + 2 * TIMEOUT + 1)])
    (_, _, _, sessions, duration_sum, screens, bounces, _), = \
        experience_figures(counter.store, 0, 2**40).values()
    assert (sessions, duration_sum, screens, bounces) == (2, TIMEOUT, 3, 1)
    counter.close()


def test_alike_views_in_one_second_are_one_session(tmp_path):
    """Views alike to the second (one screen, one revision) have no order among them: however
    a query orders them, they are in one session. Sessions were once numbered row by row,
    and such ties, ordered one way to mark a session's start and another to number it, split
    some of them in two."""
    start = 1_790_000_000
    installs = [f"install-{number}" for number in range(300)]
    counter = facts_of(tmp_path, [screen(install, start + offset)
                                  for install in installs for offset in (0, 0, 0, 9, 9)])
    (_, _, _, sessions, duration_sum, screens, bounces, _), = \
        experience_figures(counter.store, 0, 2**40).values()
    assert (sessions, duration_sum, screens, bounces) == (300, 300 * 9, 1500, 0)
    counter.close()


def test_a_session_begins_on_its_first_views_revision_by_screen_then_revision_id(tmp_path):
    """Within a second the views are ordered by screen id, then revision id (worker/sessions.py),
    not by arrival nor by the order their ids were first seen: the texts below are seen in
    the reverse of that order, within a commit and across two."""
    start = 1_790_000_000
    cases = {  # install: its views' (second, screen id, revision id), in arrival order
        "by-screen": [(0, "b", "r1"), (0, "a", "r9"), (5, "0", "r0")],
        "by-revision": [(0, "s", "r8"), (0, "s", "r7"), (0, "t", "r0")],
        "later-second": [(1, "a", "r5"), (0, "z", "r6")],
    }
    later = {"late": [(0, "b", "r4")]}  # its own commit: the view before it has "c", "r3"

    def views(of):
        return [screen(install, start + second, screen_id=screen_id, revision=revision)
                for install, seen in of.items() for second, screen_id, revision in seen]

    counter = facts_of(tmp_path, views(cases) + views({"late": [(0, "c", "r3")]}),
                       views(later))
    began = dict(counter.store.db.execute(
        "SELECT s.device, t.text FROM session AS s JOIN text AS t ON t.code = s.began_on"
    ).fetchall())
    counter.close()
    assert began == {person_key(person_text("", "anon:" + install)): revision
                     for install, revision in [("by-screen", "r9"), ("by-revision", "r7"),
                                               ("later-second", "r6"), ("late", "r4")]}


def test_a_late_view_joins_two_sessions_into_one(tmp_path):
    start = 1_790_000_000
    counter = facts_of(tmp_path, [screen("a", start), screen("a", start + 2 * TIMEOUT)],
                       [screen("a", start + TIMEOUT)])
    (_, _, _, sessions, duration_sum, _, bounces, _), = \
        experience_figures(counter.store, 0, 2**40).values()
    assert (sessions, duration_sum, bounces) == (1, 2 * TIMEOUT, 0)
    counter.close()


def stored_sessions(commits, timeout):
    """The session table of a FactStore given `commits` in turn, each a list of views
    (install, moment, screen id, revision id) of experience 1: sorted rows (install, first,
    last, views, its first view's revision id and screen id)."""
    with tempfile.TemporaryDirectory() as folder:
        store = FactStore(Path(folder) / "overview.duckdb")
        store.open(timeout)
        try:
            for position, commit in enumerate(commits, 1):
                batch = store.batch()
                for device, moment, screen_id, revision in commit:
                    for column, value in zip(
                            (batch.experience, batch.device, batch.carried, batch.moment,
                             batch.screen, batch.revision),
                            (1, device, 0, moment, store.code(screen_id),
                             store.code(revision))):
                        column.append(value)
                store.commit(batch, b"test", position, position)
            return sorted(store.db.execute(
                "SELECT s.device, s.first, s.last, s.views, r.text, f.text FROM session AS s "
                "JOIN text AS r ON r.code = s.began_on JOIN text AS f ON f.code = s.first_screen"
            ).fetchall())
        finally:
            store.close()


def sessions_by_rule(views, timeout):
    """The same rows from every view at once, the obvious way: each install's views sorted
    by (moment, screen id, revision id), parted where a gap is longer than the timeout."""
    sessions = []
    for device, moment, screen_id, revision in sorted(views):
        if sessions and sessions[-1][0] == device and moment - sessions[-1][2] <= timeout:
            sessions[-1][2], sessions[-1][3] = moment, sessions[-1][3] + 1
        else:
            sessions.append([device, moment, moment, 1, revision, screen_id])
    return [tuple(session) for session in sessions]


@settings(max_examples=150, deadline=None)
@given(views=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30), st.sampled_from("abc"),
                                st.sampled_from(["r0", "r1", "r2"])), min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=6), order=st.randoms(use_true_random=False))
def test_the_sessions_stored_are_those_of_all_the_views_however_they_came(views, cuts, order):
    """A commit merges its views with the stored sessions they can join, reading none of
    their views: the session table must still equal the sessions of every view at once, by
    the rule (a gap longer than the timeout parts two; the first view by moment, screen id
    and revision id gives the revision and screen), whatever the commits' boundaries and
    order. Moments within a few timeouts, so that late views join, extend and bridge."""
    commits = [views[start:end] for start, end in
               zip([0, *sorted(cuts)], [*sorted(cuts), len(views)]) if end > start]
    order.shuffle(commits)
    assert stored_sessions(commits, 5) == sessions_by_rule(views, 5)


def test_a_session_reaches_its_last_view_whatever_lands_inside_it():
    """A late view inside a stored session (3, within 0 to 20) is not where the session has
    reached: a view 19 after it (22) but 2 after the session's last still joins it."""
    stored = [(0, moment, "a", "r0") for moment in (0, 5, 10, 15, 20)]
    late = [(0, 3, "a", "r0"), (0, 22, "a", "r0")]
    assert stored_sessions([stored, late], 5) == sessions_by_rule(stored + late, 5) == [
        (0, 0, 22, 7, "r0", "a")]


def test_a_user_linked_from_too_many_installs_links_none(tmp_path, caplog):
    start = 1_790_000_000
    installs = [f"install-{number}" for number in range(MAX_INSTALLS_PER_USER + 1)]
    views = [screen(install, start) for install in installs]
    # Each install logs in as the same user after its anonymous view: one link too many.
    links = [identify(install, start + 10, "shared") for install in installs]
    counter = facts_of(tmp_path, views, links[:-1])
    (_, people, identified, *_), = experience_figures(counter.store, 0, 2**40).values()
    assert (len(people), len(identified)) == (2, 1)  # the shared user, and the last install
    counter.close()
    # The link too many, in the same commit as the others or in one of its own (which must
    # take the user from the installs linked before it).
    for name, commits in [("together", [links]), ("later", [links[:-1], links[-1:]])]:
        (tmp_path / name).mkdir()
        caplog.clear()
        counter = facts_of(tmp_path / name, views, *commits)
        (_, people, identified, *_), = experience_figures(counter.store, 0, 2**40).values()
        assert (len(people), len(identified)) == (len(installs), 0)  # each install its own
        assert caplog.text.count("overview: 1 userIDs are now linked from more than 100") == 1
        counter.close()


@pytest.mark.parametrize("commit_events", [13, 10**6])
def test_every_flow_equals_the_ledger(tmp_path, traffic, commit_events):
    ingest(tmp_path, traffic.batches)
    counter = count_facts(tmp_path, commit_events)
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    end = int(END.timestamp())
    checked = 0
    for start, stop in [(0, 2**40), (end - 2 * 86400 + 5, end - 3600)]:
        for experience, steps in traffic.flows.items():
            for revision in [None, *steps]:
                want = ref.flow(traffic.views, TIMEOUT, start, stop, people, experience,
                                revision)
                sessions, screens, moves = experience_flow(
                    counter.store, experience, start, stop, revision)
                assert sessions == want["sessions"]
                got = {screen: {"sessions": reached, "exits": exits,
                                "median_seconds_on_screen": ref.quantile(on_screen, 1, 2),
                                "median_position": ref.quantile(positions, 1, 2)}
                       for screen, (reached, exits, positions, _, on_screen)
                       in screens.items()}
                assert got == {screen["id"]: {key: screen[key] for key in got.get(
                    screen["id"], {})} for screen in want["screens"]}
                paths = {(path["from"], path["to"]): path["moves"] for path in want["paths"]
                         if path["to"] is not None}
                assert moves == paths
                checked += 1
    counter.close()
    assert checked > 20


def test_the_apps_answers_from_facts_equal_those_from_the_rows(tmp_path, traffic):
    """app/overview_query.py's documents (/experiences and each /experiences/<id>), read
    through FactReader, equal those it reads from overview.sqlite3 counted by the shipped
    worker from the same events: the same rows where it matters, worked out when asked."""
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    counter = count_facts(tmp_path, 97)
    facts = FactReader(counter.store)
    rows = answers(tmp_path, QUERIES)
    from_facts = answers(tmp_path, QUERIES, reader=facts)
    assert len(rows) > 10
    assert from_facts == rows
    counter.close()


def test_the_apps_flows_from_facts_equal_those_from_the_rows(tmp_path, traffic):
    """app/flow_query.py's flow and revisions documents, every revision and goal, read
    through FactReader, equal those it reads from overview.sqlite3."""
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    counter = count_facts(tmp_path, 97)
    rows = flows(tmp_path, traffic)
    from_facts = flows(tmp_path, traffic, reader=FactReader(counter.store))
    assert len(rows) > 20
    for key, document in rows.items():
        assert from_facts[key] == document, key
    counter.close()


def test_the_worker_answers_the_overview_over_its_socket(tmp_path, traffic):
    """The same documents asked of the worker over worker.sock (worker/overview_answers.py,
    storage/local_messages.WorkerOverview); a worker that does not listen is a NoOverview,
    as is a read it cannot answer."""
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    counter = count_facts(tmp_path, 97)
    socket_path = Layout(tmp_path).worker_socket
    asking = WorkerOverview(socket_path)
    with pytest.raises(NoOverview, match="does not answer"):
        asking.run([("state",)])
    answering = OverviewAnswers(socket_path, FactReader(counter.store),
                                lambda: counter.position)
    answering.start()
    try:
        assert answers(tmp_path, QUERIES, reader=asking) == answers(tmp_path, QUERIES)
        with pytest.raises(NoOverview, match="could not answer: AttributeError"):
            asking.run([("no_such_read",)])
    finally:
        answering.close()
        counter.close()
    assert not socket_path.exists()


def facts_documents(root):
    """Every QUERIES document, read from overview.duckdb (no worker holding it)."""
    store = FactStore(Layout(root).overview_facts)
    store.open(TIMEOUT)
    try:
        return answers(root, QUERIES, reader=FactReader(store))
    finally:
        store.close()


def test_a_damaged_store_is_set_aside_and_counted_again(tmp_path, traffic, caplog):
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT, overview_store="duckdb")
    counted = facts_documents(tmp_path)
    path = Layout(tmp_path).overview_facts
    with open(path, "r+b") as damaged:  # DuckDB's headers, overwritten
        damaged.write(os.urandom(16384))
    count(tmp_path, session_timeout=TIMEOUT, overview_store="duckdb")
    assert "OVERVIEW REJECTED: overview.duckdb is unusable" in caplog.text
    assert [aside.name[:len("overview.duckdb.bad-")] for aside in tmp_path.iterdir()
            if ".bad-" in aside.name] == ["overview.duckdb.bad-"]
    assert facts_documents(tmp_path) == counted


def test_a_store_of_the_format_before_is_set_aside_and_counted_again(tmp_path, traffic,
                                                                     caplog):
    """Version 1 kept no first_screen: its sessions cannot be merged with new views."""
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT, overview_store="duckdb")
    counted = facts_documents(tmp_path)
    with duckdb.connect(str(Layout(tmp_path).overview_facts)) as db:
        db.execute("ALTER TABLE session DROP COLUMN first_screen")
        db.execute("UPDATE state SET version = 1")
    count(tmp_path, session_timeout=TIMEOUT, overview_store="duckdb")
    assert "format version 1, not 2" in caplog.text
    assert [aside.name[:len("overview.duckdb.bad-")] for aside in tmp_path.iterdir()
            if ".bad-" in aside.name] == ["overview.duckdb.bad-"]
    assert facts_documents(tmp_path) == counted


def test_another_session_timeout_counts_the_overview_again(tmp_path, traffic, caplog):
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT, overview_store="duckdb")
    count(tmp_path, session_timeout=2 * TIMEOUT, overview_store="duckdb")
    assert "the timeout is now 3600s; counting data1.details again" in caplog.text
    store = FactStore(Layout(tmp_path).overview_facts)
    assert store.open(2 * TIMEOUT).session_timeout == 2 * TIMEOUT
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    want = ref.overview(traffic.views, 2 * TIMEOUT, 0, 2**40, people)
    got = experience_figures(store, 0, 2**40)
    assert {experience: got[experience][3] for experience in want} == {
        experience: figures["sessions"] for experience, figures in want.items()}
    store.close()


def test_an_event_that_cannot_be_counted_is_set_aside_and_logged(tmp_path, caplog):
    start = 1_790_000_000
    bad = screen("a", start)
    bad["event"]["anonymousID"] = ["not", "a", "string"]
    counter = facts_of(tmp_path, [screen("b", start), bad])
    assert counter.store.db.execute("SELECT events, set_aside FROM state").fetchone() == (2, 1)
    assert "overview: 1 SDK events in test cannot be counted and are set aside" in caplog.text
    counter.close()


def test_the_stores_of_a_folder_share_one_duckdb_each_free_once_closed(tmp_path):
    """A cluster worker's stores (one a partition) share one DuckDB, and with it one memory
    limit; each keeps its own file, which closing it frees for another process."""
    start = 1_790_000_000
    layout = Layout(tmp_path)
    counters = {}
    for views, partition in enumerate(("p1", "p2"), 1):
        counter = counters[partition] = FactCounter(
            FactStore(layout.partition_overview_facts(partition)), TIMEOUT, partition)
        counter.open()
        read = SdkEvents()
        read.read([screen("a", start + moment) for moment in range(views)])
        counter.count(read, b"test", 1, 1)
    first, second = counters["p1"].store, counters["p2"].store
    try:
        attached = first.db.execute("SELECT path FROM duckdb_databases() WHERE path IS NOT "
                                    "NULL ORDER BY path").fetchall()
        assert attached == [(str(first.path),), (str(second.path),)]
        (limit,), = first.db.execute("SELECT current_setting('memory_limit')").fetchall()
        assert limit == "122.0 MiB"  # MEMORY_LIMIT, 128 MB
        for store, views in ((first, 1), (second, 2)):  # each connection reads its own store
            with store.reading() as cursor:
                assert cursor.execute("SELECT count(*) FROM fact").fetchall() == [(views,)]
        second.close()
        another_process = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; "
             "from storage.views.overview_facts import read_state; "
             "print(read_state(Path(sys.argv[1])).position)", str(second.path)],
            capture_output=True, text=True, timeout=120, check=False)
        assert another_process.stdout == "1\n", another_process.stderr
        assert first.db.execute("SELECT count(*) FROM fact").fetchall() == [(1,)]
    finally:
        for counter in counters.values():
            counter.close()
    assert second.set_aside().exists() and not second.path.exists()


def experience_figures(store, start, end):
    """Straight from the store's tables, a way apart from FactReader's: {experience key:
    (views, people, identified, sessions, duration_sum, session_screens, bounces,
    {duration: sessions})} of every experience with views or sessions starting in
    [start, end): `people` and `identified` the distinct person keys (a view's userID, else
    its install's person, else its install), exactly."""
    figures = collections.defaultdict(lambda: [0, [], [], 0, 0, 0, 0, {}])
    db = store.db
    db.execute("BEGIN TRANSACTION")  # one snapshot for both queries
    try:
        for experience, views, people, identified in db.execute(
                "WITH seen AS ("
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


def experience_flow(store, experience, start, end, revision=None):
    """Straight from the store's tables, a way apart from FactReader's: the flow of one
    experience's sessions starting in [start, end) (of those begun on `revision` only, if
    given), worked out from their views (worker/flows.py's rule; views in one second in the
    order of their screen and revision ids): (sessions, {screen: (sessions that reached it,
    sessions that ended on it, [its first position in each, capped at MAX_POSITION],
    [seconds from each session's start to it], [seconds on it before the next view, each
    view but a session's last]}), {(screen, next screen): moves})."""
    chosen = [experience, start, end]
    if revision is not None:
        chosen.append(revision)
    db = store.db
    db.execute("BEGIN TRANSACTION")
    try:
        db.execute("CREATE OR REPLACE TEMP TABLE flow_views AS " + FLOW_VIEWS.format(
            chosen="t.experience = ? AND t.first >= ? AND t.first < ?" + (
                "" if revision is None else
                " AND t.began_on = (SELECT code FROM text WHERE text = ?)")), chosen)
        texts = dict(db.execute("SELECT code, text FROM text").fetchall())
        (sessions,), = db.execute(
            "SELECT count(*) FROM (SELECT DISTINCT device, first FROM flow_views)"
        ).fetchall()
        screens = {texts[screen]: [0, 0, [], [], []] for screen, in db.execute(
            "SELECT DISTINCT screen FROM flow_views").fetchall()}
        for screen, reached, positions, to_reach in db.execute(
                "SELECT screen, count(*), list(least(position, ?)), list(moment - first) "
                "FROM (SELECT screen, device, first, min(position) AS position, "
                "min(moment) AS moment FROM flow_views GROUP BY screen, device, first) "
                "GROUP BY screen", [MAX_POSITION]).fetchall():
            screens[texts[screen]][0], screens[texts[screen]][2], \
                screens[texts[screen]][3] = reached, positions, to_reach
        for screen, exits in db.execute(
                "SELECT screen, count(*) FROM flow_views WHERE next_screen IS NULL "
                "GROUP BY screen").fetchall():
            screens[texts[screen]][1] = exits
        for screen, seconds in db.execute(
                "SELECT screen, list(next_moment - moment) FROM flow_views WHERE "
                "next_screen IS NOT NULL GROUP BY screen").fetchall():
            screens[texts[screen]][4] = seconds
        moves = {(texts[source], texts[target]): count
                 for source, target, count in db.execute(
                     "SELECT screen, next_screen, count(*) FROM flow_views WHERE "
                     "next_screen IS NOT NULL GROUP BY screen, next_screen").fetchall()}
        db.execute("DROP TABLE flow_views")
    finally:
        db.execute("COMMIT")
    return sessions, {screen: tuple(row) for screen, row in screens.items()}, moves
