"""The experience overview against a reference computed from the traffic's ledger
(tests/overview_reference.py): exact for sums, sessions and durations, whatever order the
batches arrived in, across worker restarts and commit boundaries, after a rebuild, in a time
zone with a daylight-saving change, and from every planted state of overview.sqlite3.

The log and the worker run in-process (storage/log/writer.py, worker/runner.py) on real
files; test_overview_processes.py does the same through real processes and SIGKILLs."""

import collections
import contextlib
import datetime
import json
import random
import sqlite3
import time
import types
import zoneinfo

import pytest
from hypothesis import given, settings, strategies as st

import overview_reference as ref
from app import overview_query
from app.validate import parse_batch
from bench import traffic as generator
from storage.log.writer import EventLog
from storage.views import overview_store
from storage.views.overview_store import (Changes, NoOverview, OverviewReader,
                                          OverviewStore, StoredViews, decode_views)
from storage.views.sketches import (EXACT_LIMIT, Durations, People, duration_bucket,
                              encode_durations, person_key)
from worker import overview as overview_module
from storage.views.overview_store import MAX_INSTALLS_PER_USER
from worker import runner as runner_module
from worker.runner import Worker
from worker.sessions import extend, place, views_of

UTC = datetime.timezone.utc
END = datetime.datetime(2026, 11, 3, 12, 0, tzinfo=UTC)  # New York left DST on Nov 1
RECEIVED = int(END.timestamp()) + 3600
TIMEOUT = 1800
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def ingest(root, batches):
    """Append each (device id, events) batch as POST /batch would."""
    log = EventLog(root / "data1", details=root / "data1.details", seen=root / "data1.seen",
                   dedupe_window=30 * 86400, clock=lambda: RECEIVED)
    for _, events in batches:
        body = json.dumps({"batch": events}).encode()
        batch = parse_batch(body, RECEIVED)
        assert not batch.rejected
        log.append_events(batch.ids, batch.events, RECEIVED, body)
    log.close()


def count(root, **options):
    worker = Worker(root, **options)
    worker.recover()
    worker.run_pass()
    worker.close()


def answers(root, queries, reader=None):
    """Every query's /experiences and /experiences/<id> documents, from the store (or from
    `reader`)."""
    reader = reader or OverviewReader(root)
    now = datetime.datetime.fromtimestamp(RECEIVED, UTC)
    result = []
    for params in queries:
        query = overview_query.parse(params, now)
        listed = overview_query.experiences(reader, query)
        result.append(listed)
        for item in listed["experiences"]:
            result.append(overview_query.experience(reader, query, item["experienceID"]))
    return result


QUERIES = [
    {},  # the last 30 days
    {"from": "2026-10-31T00:00:00", "to": "2026-11-03T00:00:00", "tz": "America/New_York"},
    {"from": "2026-11-01T05:00:00Z", "to": "2026-11-01T09:00:00Z", "step": "hour"},
    {"from": "2026-11-02T03:30:00", "to": "2026-11-02T21:00:00", "tz": "Asia/Kolkata"},
]


def check_against_ledger(root, views, queries=QUERIES, links=()):
    now = datetime.datetime.fromtimestamp(RECEIVED, UTC)
    reader = OverviewReader(root)
    sessions = ref.all_sessions(views, TIMEOUT)
    people = ref.People(views, links, MAX_INSTALLS_PER_USER)
    by_experience = {}
    for view in views:
        by_experience.setdefault(view.experience, []).append(view)
    checked = 0
    for params in queries:
        query = overview_query.parse(params, now)
        expected = ref.overview(views, TIMEOUT, query.start, query.end, people)
        listed = overview_query.experiences(reader, query)["experiences"]
        assert {item["experienceID"] for item in listed} == set(expected)
        for item in listed:
            experience = item["experienceID"]
            assert_figures(item, expected[experience])
            one = overview_query.experience(reader, query, experience)
            assert_figures(one, expected[experience])
            edges = overview_query._edges(query)
            for point, start, end in zip(one["points"], edges, edges[1:]):
                want = ref.figures(by_experience[experience], sessions[experience],
                                   start, end, people)
                for key in ("screen_views", "users", "sessions", "avg_session_seconds"):
                    assert point[key] == want[key], (params, point, want)
                checked += 1
            screens = {}
            for view in by_experience[experience]:
                if query.start <= view.moment < query.end:
                    screens.setdefault(view.screen, set()).add(people.of(view))
            assert one["screens"] == len(screens)
            for top in one["top_screens"]:
                assert top["users"] == len(screens[top["id"]])
    return checked


def assert_figures(got, want):
    for key, value in want.items():
        if key == "median_session_seconds" and value is not None:
            assert got[key] == duration_bucket(value), (key, got, want)
        else:
            assert got[key] == value, (key, got, want)


@pytest.fixture(scope="module")
def traffic():
    return generator.generate(seed=7, devices=120, experiences=6, days=4, end=END)


def test_the_overview_equals_the_ledger(tmp_path, traffic, monkeypatch):
    # Small commits, so that sessions span commit boundaries.
    monkeypatch.setattr(overview_module, "COMMIT_EVENTS", 97)
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    assert traffic.late and traffic.retries  # the arrival order is not the device order
    points = check_against_ledger(tmp_path, traffic.views, links=traffic.links)
    assert points > 50


def test_the_counts_never_wait_for_an_overview_far_behind(tmp_path, traffic, monkeypatch):
    """A running worker gives the overview about an interval a pass: data2 counts everything
    in the first pass, the overview a commit more each pass after it (an interval of 0: its
    first commit), and the loop runs them without waiting until the overview has caught up,
    which then equals the ledger."""
    monkeypatch.setattr(overview_module, "COMMIT_EVENTS", 97)
    ingest(tmp_path, traffic.batches)
    worker = Worker(tmp_path, session_timeout=TIMEOUT)
    passes, waits = [], []

    def run_pass():
        before = worker.overview.counter.position
        Worker.run_pass(worker)
        # the counts are complete after every pass; the overview moves on a commit a pass
        assert worker.checkpoint.offset == (tmp_path / "data1").stat().st_size
        passes.append((before, worker.overview.counter.position, worker.catching_up()))

    def wait(seconds):
        waits.append((len(passes), seconds))
        return True  # asks the loop to stop

    worker.take_ownership = lambda: None
    worker.run_pass, worker.wait = run_pass, wait
    monkeypatch.setattr(runner_module, "Signals", lambda: types.SimpleNamespace(stop=False))
    worker.run(0)
    events = sum(len(events) for _, events in traffic.batches)
    assert 10 < len(passes) <= events // 97 + 1  # a commit (of 97 events or more) a pass
    assert all(after > before for before, after, _ in passes)
    assert [behind for _, _, behind in passes] == [True] * (len(passes) - 1) + [False]
    assert waits == [(len(passes), 0)]  # no wait until it had caught up
    check_against_ledger(tmp_path, traffic.views, links=traffic.links)


def store_rows(path):
    """Every row of every table of an overview store but its state (which says when); of
    session_part, each session's views read back from its parts, which are as many as the
    commits that extended it."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [name for name, in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'state'")]
        rows = {table: sorted(db.execute(f"SELECT * FROM {table}")) for table in tables}
    views = collections.defaultdict(list)
    for device, experience, first, _, text in rows.pop("session_part"):
        known = views[device, experience, first]
        known += decode_views(first, text, known[-1][2] if known else None)
    rows["session views"] = sorted(views.items())
    return rows


def test_the_commits_boundaries_leave_no_trace_in_the_store(tmp_path, traffic, monkeypatch):
    """Counted in commits of 13 events (sessions taken out in a later commit than the one
    that put them in, moved by late views, their flows' rows taken back to nothing), the
    store holds row for row what one commit of everything makes."""
    at_once, small = tmp_path / "at_once", tmp_path / "small"
    for folder in (at_once, small):
        folder.mkdir()
        ingest(folder, traffic.batches)
    count(at_once, session_timeout=TIMEOUT)
    monkeypatch.setattr(overview_module, "COMMIT_EVENTS", 13)
    count(small, session_timeout=TIMEOUT)
    assert store_rows(small / "overview.sqlite3") == store_rows(at_once / "overview.sqlite3")


def slow_overview(monkeypatch, seconds_per_event):
    """Make every SDK event take `seconds_per_event` more to count (a slower machine, or a
    heavier overview), in the commit, where the counter's own timing sees it."""
    commit = OverviewStore.commit

    def slow_commit(self, changes, *args):
        time.sleep(changes.events * seconds_per_event)
        return commit(self, changes, *args)

    monkeypatch.setattr(OverviewStore, "commit", slow_commit)


def test_an_overview_slower_than_its_slice_is_given_the_slice_in_commits_that_fit_it(
        tmp_path, traffic, monkeypatch):
    """All there is to count is far less than one commit of 50,000 events, but more than the
    overview counts in an interval (every event made to take 1 ms, the interval 0.1 s): each
    pass gives it about the interval, in commits sized by the speed of the last ones (the
    first a probe of MIN_COMMIT_EVENTS), whatever the machine's speed; data2 is complete
    after every pass, and the overview, once caught up, equals the ledger."""
    seconds_per_event, interval = 0.001, 0.1
    monkeypatch.setattr(overview_module, "MIN_COMMIT_EVENTS", 5)
    slow_overview(monkeypatch, seconds_per_event)
    ingest(tmp_path, traffic.batches)
    worker = Worker(tmp_path, session_timeout=TIMEOUT)
    counter = worker.overview.counter
    commits, passes = [], []
    count = counter.count

    def counting(read, *args):
        commits.append(read.events)
        return count(read, *args)

    def run_pass():
        before = len(commits)
        Worker.run_pass(worker)
        assert worker.checkpoint.offset == (tmp_path / "data1").stat().st_size
        passes.append(sum(commits[before:]))

    counter.count = counting
    worker.take_ownership = lambda: None
    worker.run_pass, worker.wait = run_pass, lambda seconds: True
    monkeypatch.setattr(runner_module, "Signals", lambda: types.SimpleNamespace(stop=False))
    worker.run(interval)
    assert sum(passes) == sum(commits) > 1000
    largest_group = max(len(events) for _, events in traffic.batches)
    # Before the last commit of a pass, at most the interval's worth (each event takes 1 ms
    # or more); the last sized by what is left of it; a commit ends on a whole group.
    most = 2 * (interval / seconds_per_event + largest_group) + 5
    assert all(0 < counted <= most for counted in passes), (passes, most)
    assert len(passes) >= sum(commits) // most
    check_against_ledger(tmp_path, traffic.views, links=traffic.links)


def counted_in_order_and_shuffled(tmp_path, traffic, seed):
    """Two state folders holding the traffic: counted in the order sent, and with its batches
    in a random order (any one as late as any other: days of history after today's) counted
    in three worker runs."""
    in_order, shuffled = tmp_path / "in_order", tmp_path / "shuffled"
    in_order.mkdir()
    shuffled.mkdir()
    ingest(in_order, traffic.batches)
    count(in_order, session_timeout=TIMEOUT)
    keyed = list(traffic.batches)
    random.Random(seed).shuffle(keyed)
    third = len(keyed) // 3
    for part in (keyed[:third], keyed[third:2 * third], keyed[2 * third:]):
        ingest(shuffled, part)
        count(shuffled, session_timeout=TIMEOUT)  # a worker restart between parts
    return in_order, shuffled


def test_any_arrival_order_gives_the_same_overview(tmp_path, traffic):
    """The same answers, to the byte, in any order (counted_in_order_and_shuffled)."""
    in_order, shuffled = counted_in_order_and_shuffled(tmp_path, traffic, 3)
    assert answers(shuffled, QUERIES) == answers(in_order, QUERIES)
    check_against_ledger(shuffled, traffic.views, links=traffic.links)


def test_rebuild_gives_the_same_overview(tmp_path, traffic):
    ingest(tmp_path, traffic.batches[: len(traffic.batches) // 2])
    count(tmp_path, session_timeout=TIMEOUT)
    ingest(tmp_path, traffic.batches[len(traffic.batches) // 2:])
    count(tmp_path, session_timeout=TIMEOUT)
    before = answers(tmp_path, QUERIES)
    Worker(tmp_path, session_timeout=TIMEOUT).rebuild()
    assert answers(tmp_path, QUERIES) == before


def test_a_session_across_a_worker_restart_and_a_commit_is_neither_split_nor_doubled(tmp_path):
    device = generator.IosDevice()
    start = END - datetime.timedelta(hours=5)
    moments = [start + datetime.timedelta(seconds=s) for s in (0, 60, 600, 1500)]
    views = [generator.View(device.anonymous_id, None, 3, "a", int(m.timestamp()))
             for m in moments]
    for moment in moments:  # one batch per view, counted by a new worker each time
        ingest(tmp_path, [("d", [device.screen(moment, 3, id="a")])])
        count(tmp_path, session_timeout=TIMEOUT)
    [item] = answers(tmp_path, [{}])[0]["experiences"]
    assert (item["sessions"], item["avg_session_seconds"], item["screens_per_session"]) == (
        1, 1500.0, 4.0)
    check_against_ledger(tmp_path, views)


def test_a_late_view_joins_two_sessions(tmp_path):
    device = generator.AndroidDevice()
    start = END - datetime.timedelta(hours=5)
    early, late = start, start + datetime.timedelta(minutes=50)
    ingest(tmp_path, [("d", [device.screen(early, 3), device.screen(late, 3)])])
    count(tmp_path, session_timeout=TIMEOUT)
    [item] = answers(tmp_path, [{}])[0]["experiences"]
    assert (item["sessions"], item["bounce_rate"]) == (2, 1.0)
    ingest(tmp_path, [("d", [device.screen(start + datetime.timedelta(minutes=25), 3)])])
    count(tmp_path, session_timeout=TIMEOUT)
    [item] = answers(tmp_path, [{}])[0]["experiences"]
    assert (item["sessions"], item["avg_session_seconds"], item["bounce_rate"]) == (
        1, 3000.0, 0.0)


def test_a_view_however_late_joins_its_session(tmp_path):
    """A phone offline for a week: its views arrive after a week of newer ones, and join the
    sessions they belong to, as if they had come in time."""
    device = generator.IosDevice()
    newest = END - datetime.timedelta(hours=1)
    old = newest - datetime.timedelta(days=8)
    ingest(tmp_path, [("d", [device.screen(old, 3)])])
    ingest(tmp_path, [("d", [device.screen(newest, 3)])])
    count(tmp_path, session_timeout=TIMEOUT)
    ingest(tmp_path, [("d", [device.screen(old + datetime.timedelta(seconds=60), 3)])])
    count(tmp_path, session_timeout=TIMEOUT)
    [item] = answers(tmp_path, [{"from": "2026-10-01T00:00:00Z"}])[0]["experiences"]
    assert (item["sessions"], item["screens_per_session"], item["avg_session_seconds"]) == (
        2, 1.5, 30.0)


def test_the_reads_name_a_missing_or_damaged_store(tmp_path):
    reader = OverviewReader(tmp_path)
    with pytest.raises(NoOverview, match="no overview yet"):
        reader.run([("names", None)])
    (tmp_path / "overview.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(NoOverview, match="overview.sqlite3 is unreadable"):
        reader.run([("names", None)])


# The session rule, for any views in any order.

views = st.lists(st.tuples(st.integers(0, 20_000), st.sampled_from("abc"),
                           st.sampled_from(["r1", "r2"])), min_size=1, max_size=40)


@given(views, st.randoms(use_true_random=False), st.sampled_from([60, 300, 1800]))
@settings(max_examples=300, deadline=None)
def test_placing_views_in_any_order_gives_the_maximal_runs(placed, rng, timeout):
    shuffled = list(placed)
    rng.shuffle(shuffled)
    sessions, counted = [], {}
    while shuffled:  # in commits of any size, one view up to all of them
        size = rng.randint(1, len(shuffled))
        commit, shuffled = shuffled[:size], shuffled[size:]
        replaced, joined = place(sessions, commit, timeout)
        for first, last, in_order in replaced:  # what the worker takes out of the rows ...
            counted[first, last, tuple(in_order)] -= 1
        for first, last, in_order in joined:  # ... and puts in
            key = (first, last, tuple(in_order))
            counted[key] = counted.get(key, 0) + 1
        assert sorted(view for session in joined for view in session[2]) == sorted(
            [*commit, *(view for session in replaced for view in session[2])])
    assert [[first, last, len(in_order)] for first, last, in_order in sessions] == \
        ref.sessions_of([moment for moment, _, _ in placed], timeout)
    # The rows hold each final session once, and nothing else.
    assert {session: n for session, n in counted.items() if n} == {
        (first, last, tuple(in_order)): 1 for first, last, in_order in sessions}
    # Each session's views are in the one order any arrival gives.
    assert sorted(view for session in sessions for view in session[2]) == sorted(placed)
    for first, last, in_order in sessions:
        assert in_order == sorted(in_order)
        assert (first, last) == (in_order[0][0], in_order[-1][0])
    for before, after in zip(sessions, sessions[1:]):
        assert after[0] - before[1] > timeout  # maximal: no two could be one


def test_a_session_extended_in_later_commits_reads_back_whole_from_its_parts(tmp_path):
    """A session stored, then extended at its end in two later commits, is three parts in
    the store; read back (as a late view's placing reads it), its views are all of them in
    order, each with its revision, also where a part's first view leaves its revision out
    (the view before it, in the part before, was on the same one)."""
    store = OverviewStore(tmp_path)
    store.open(TIMEOUT)
    device, experience, first = 7, 1, 1_795_000_000
    batches = [[(first, "a", "r1"), (first + 5, "b", "r1")],
               [(first + 9, "c", "r1"), (first + 9, "d", "r2")],
               [(first + 20, "e", "r2"), (first + 30, "a", "r1")]]
    changes = Changes()
    changes.sessions[device, experience, first] = [first, first + 5, batches[0]]
    store.commit(changes, b"source", 1, 1)
    for position, added in enumerate(batches[1:], 2):
        [stored] = store.sessions([device])[device, experience]
        extended = [first, added[-1][0], stored[2].extended(added)]
        changes = Changes()
        changes.replace_sessions(device, experience, [stored], [extended])
        store.commit(changes, b"source", position, position)
    assert store.db.execute("SELECT part FROM session_part").fetchall() == [(0,), (2,), (4,)]
    [session] = store.sessions([device])[device, experience]
    assert session[:2] == [first, first + 30] and len(session[2]) == 6
    assert views_of(session) == [view for batch in batches for view in batch]
    store.close()


@given(views, views, st.integers(0, 2000), st.sampled_from([60, 300, 1800]))
@settings(max_examples=300, deadline=None)
def test_extending_the_last_session_at_its_end_is_placing_the_views(placed, more, shift,
                                                                    timeout):
    """sessions.extend (an install's next batch, appended without reading the stored
    views) gives the sessions place() gives, wherever it applies: views at or after the
    last session's last view, the first within the timeout of it. Elsewhere it declines."""
    sessions = []
    place(sessions, placed, timeout)
    end = sessions[-1][1]
    more = [(end + shift + moment // 4, screen, revision) for moment, screen, revision in more]
    stored = [[first, last, StoredViews.of(first, in_order)] for first, last, in_order in sessions]
    replaced, joined = place(sessions, more, timeout)
    extension = extend(stored, more, timeout)
    if extension is None:
        assert min(more) < max(placed) or min(more)[0] - end > timeout
        return
    assert [[first, last, views_of(session)] for session in extension[0]
            for first, last, _ in [session]] == replaced
    assert [[first, last, views_of(session)] for session in extension[1]
            for first, last, _ in [session]] == joined
    assert [[first, last, views_of(session)] for session in stored
            for first, last, _ in [session]] == sessions


# The summaries' bounds.

def test_people_are_exact_below_the_limit_and_within_two_percent_at_100000():
    small = People(range(EXACT_LIMIT))
    assert (small.count(), small.estimated) == (EXACT_LIMIT, False)
    # 100,000 users over 30 days, each seen on 1 to 5 days: the union of the days' sketches.
    rng = random.Random(5)
    days = [People() for _ in range(30)]
    for user in range(100_000):
        key = person_key(f"user:{user}")
        for day in rng.sample(range(30), rng.randint(1, 5)):
            days[day].add(key)
    merged = People()
    for day in days:
        merged.merge_encoded(day.encode())  # through the stored bytes, as the reads do
    assert merged.estimated
    assert ref.relative_error(merged.count(), 100_000) < 0.02
    added = sum(day.count() for day in days)
    assert added > 250_000  # what adding the days' figures would have said


def test_the_median_is_the_nearest_rank_one():
    rng = random.Random(2)
    durations = [int(rng.expovariate(1 / 200)) for _ in range(10_001)]
    histogram = {}
    for duration in durations:
        histogram[duration_bucket(duration)] = histogram.get(duration_bucket(duration), 0) + 1
    # Merged from several encoded histograms, as a range's rows are.
    merged = Durations()
    for part in range(0, len(histogram), 7):
        merged.add_encoded(encode_durations(dict(list(histogram.items())[part:part + 7])))
    assert merged.median() == ref.nearest_rank_median(durations)
    long = Durations()
    long.add_encoded(encode_durations({duration_bucket(d): 1 for d in [5000, 9000, 100_000]}))
    assert long.median() == duration_bucket(9000)
    assert Durations().median() is None
    assert 0 <= 9000 - duration_bucket(9000) <= 9000 / 2048


# Planted states: whatever overview.sqlite3 holds, the worker never continues from a store it
# cannot trust, and ends with the overview the ledger gives.

def plant_garbage(path):
    path.write_bytes(b"not a database" * 100)


def plant_other_timeout(path):
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET session_timeout = 60")


def plant_ahead(path):
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET position = position + 10000000")


def plant_other_details(path):
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET source = x'00112233445566778899aabbccddeeff'")


def plant_truncated(path):
    path.write_bytes(path.read_bytes()[:4096])


def plant_no_state(path):
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM state")


def plant_temp_leftover(path):
    path.with_name(path.name + ".tmp").write_bytes(b"half a store")
    path.unlink()


@pytest.mark.parametrize("plant", [plant_garbage, plant_other_timeout, plant_ahead,
                                   plant_other_details, plant_truncated, plant_no_state,
                                   plant_temp_leftover])
def test_a_planted_store_is_never_continued(tmp_path, traffic, plant):
    half = len(traffic.batches) // 2
    ingest(tmp_path, traffic.batches[:half])
    count(tmp_path, session_timeout=TIMEOUT)
    store = tmp_path / "overview.sqlite3"
    for sidecar in ("-wal", "-shm"):  # the worker closed it: checkpointed into the file
        assert not (tmp_path / ("overview.sqlite3" + sidecar)).exists()
    plant(store)
    ingest(tmp_path, traffic.batches[half:])
    count(tmp_path, session_timeout=TIMEOUT)
    check_against_ledger(tmp_path, traffic.views, QUERIES[:2], traffic.links)
    assert not (tmp_path / "overview.sqlite3.tmp").exists()


def test_history_sent_newest_day_first_gives_one_session_a_day(tmp_path):
    """30 installs with a session a day for 10 days, the newest day sent first and the older
    days after it, each day counted in a commit of its own: 300 sessions, as sorting each
    install's views and splitting them at the timeout gives."""
    devices = [generator.AndroidDevice() for _ in range(30)]
    views, days = [], []
    for day in range(10):
        start = END - datetime.timedelta(days=day, hours=3)
        batches = []
        for number, device in enumerate(devices):
            moments = [start + datetime.timedelta(minutes=number, seconds=20 * k)
                       for k in range(3)]
            batches.append(("d", [device.screen(moment, 4, id=f"s{k}")
                                  for k, moment in enumerate(moments)]))
            views += [generator.View(device.anonymous_id, None, 4, f"s{k}",
                                     int(moment.timestamp())) for k, moment in enumerate(moments)]
        days.append(batches)
    for batches in days:  # today first
        ingest(tmp_path, batches)
        count(tmp_path, session_timeout=TIMEOUT)
    [item] = answers(tmp_path, [{}])[0]["experiences"]
    assert (item["sessions"], item["bounce_rate"], item["avg_session_seconds"]) == (
        300, 0.0, 40.0)
    check_against_ledger(tmp_path, views)


def test_the_same_history_sent_again_seconds_later_gives_the_sorted_sessions(tmp_path):
    """The README's traffic command run twice: the same installs' history again, 7 seconds
    later. Every view joins the sessions that sorting each install's views and splitting
    them at the timeout gives (before, views 72 hours older than an install's newest began
    sessions of their own: 503 sessions became 1,384)."""
    first = generator.generate(seed=7, devices=60, experiences=3, days=5, end=END)
    again = generator.generate(seed=7, devices=60, experiences=3, days=5,
                               end=END + datetime.timedelta(seconds=7))
    for traffic in (first, again):
        ingest(tmp_path, traffic.batches)
        count(tmp_path, session_timeout=TIMEOUT)
    views, links = first.views + again.views, first.links + again.links
    check_against_ledger(tmp_path, views, QUERIES[:1], links)
    listed = answers(tmp_path, [{}])[0]["experiences"]
    sessions = ref.all_sessions(views, TIMEOUT)
    assert {item["experienceID"]: item["sessions"] for item in listed} == {
        experience: len(found) for experience, found in sessions.items()}


def test_weeks_days_and_hours_give_the_same_figures(tmp_path):
    """A range of 16 days is read from whole weeks, whole days and hours: every figure as
    the ledger gives it, as merging hours alone gives it."""
    traffic = generator.generate(seed=9, devices=80, experiences=3, days=16, end=END)
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    span = {"from": "2026-10-17T05:00:00Z", "to": "2026-11-03T07:00:00Z"}
    query = overview_query.parse(span, END)
    assert overview_store.WEEK in {level for level, _, _ in
                                   overview_store.pieces(query.start, query.end)}
    check_against_ledger(tmp_path, traffic.views, [span, {**span, "tz": "Europe/Paris"}],
                         traffic.links)


@given(st.integers(0, 5000), st.integers(1, 3000))
def test_pieces_cover_a_range_once_on_their_own_edges(start_hour, hours):
    start, end = start_hour * 3600, (start_hour + hours) * 3600
    parts = overview_store.pieces(start, end)
    assert parts[0][1] == start and parts[-1][2] == end
    assert all(before[2] == after[1] for before, after in zip(parts, parts[1:]))
    assert all(low < high and low % level == 0 == high % level for level, low, high in parts)
