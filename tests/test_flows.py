"""Each experience's flow (worker/flows.py, app/flow_query.py) against a reference worked out
from the traffic's ledger by sorting each session's views (tests/overview_reference.flow):
reach, exits, moves, times on screen and to a goal, and the screen left from without it, for
all revisions and each, in several ranges and zones, whatever order the batches arrived in
and across worker restarts and commits; revisions side by side; and the rule's properties on
random sessions.

The log and the worker run in-process on real files, as in test_overview.py."""

import datetime

import pytest
from hypothesis import assume, given, settings, strategies as st

import overview_reference as ref
from app import flow_query
from bench import traffic as generator
from storage.views.overview_store import (REVISION_BOUNCES, REVISION_DURATIONS, REVISION_SESSIONS,
                                    Changes, OverviewReader, StoredViews, decode_views)
from test_overview import (END, RECEIVED, TIMEOUT, UTC, count, counted_in_order_and_shuffled,
                           ingest)
from worker import overview as overview_module
from worker.flows import add_session, extend_session
from storage.views.overview_store import MAX_INSTALLS_PER_USER
from storage.views.sketches import EXACT_LIMIT

QUERIES = [
    {},  # the last 30 days
    {"from": "2026-10-31T00:00:00", "to": "2026-11-03T00:00:00", "tz": "America/New_York"},
    {"from": "2026-11-02T03:30:00", "to": "2026-11-02T21:00:00", "tz": "Asia/Kolkata"},
]


@pytest.fixture(scope="module")
def traffic():
    return generator.generate(seed=11, devices=150, experiences=4, days=4, end=END)


def flows(root, traffic, goals=("screen-2", "screen-4", "screen-9"), reader=None):
    """Every flow and revisions document the tests ask for, by (query, experience, revision,
    goal), from the store (or from `reader`)."""
    reader = reader or OverviewReader(root)
    now = datetime.datetime.fromtimestamp(RECEIVED, UTC)
    revisions = sorted({(view.experience, view.revision) for view in traffic.views})
    answers = {}
    for number, params in enumerate(QUERIES):
        for experience, revision in [(experience, None) for experience in
                                     sorted({e for e, _ in revisions})] + revisions:
            for goal in (None, *goals):
                query = flow_query.parse({**params, "revision": revision or "",
                                          "goal": goal or "", "top": "1000"}, now)
                answers[number, experience, revision, goal] = flow_query.flow(
                    reader, query, experience)
                if revision is None:
                    answers[number, experience, "revisions", goal] = flow_query.revisions(
                        reader, query, experience)
    return answers


def check_against_ledger(answers, traffic):
    now = datetime.datetime.fromtimestamp(RECEIVED, UTC)
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    checked = 0
    for (number, experience, revision, goal), got in answers.items():
        query = flow_query.parse(QUERIES[number], now).range
        if revision == "revisions":
            continue
        want = ref.flow(traffic.views, TIMEOUT, query.start, query.end, people, experience,
                        revision, goal)
        assert ref.flow_without_names(got) == want, (number, experience, revision, goal)
        checked += bool(want["sessions"])
    return checked


def test_the_flow_equals_the_ledger(tmp_path, traffic, monkeypatch):
    monkeypatch.setattr(overview_module, "COMMIT_EVENTS", 97)  # sessions across commits
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    assert traffic.late and traffic.retries
    answers = flows(tmp_path, traffic)
    assert check_against_ledger(answers, traffic) > 50
    # The traffic has what the test means to check: flows that lose people, going back,
    # two revisions of some experiences, and goals both reached and missed.
    one = answers[0, 1, None, "screen-2"]
    assert one["screens"][0]["id"] == "screen-1" and one["screens"][0]["median_position"] == 1
    assert 0 < one["goal"]["session_rate"] < 1 and one["goal"]["most_left_from"]
    assert any(path["to"] == "screen-1" and path["from"] == "screen-2"
               for path in one["paths"])
    assert any(len(answers[0, experience, "revisions", None]["revisions"]) == 2
               for experience in range(1, 5))


def test_any_arrival_order_gives_the_same_flows(tmp_path, traffic):
    """The batches shuffled and counted in three worker runs: the same answers as in the
    order sent."""
    in_order, shuffled = counted_in_order_and_shuffled(tmp_path, traffic, 5)
    assert flows(shuffled, traffic) == flows(in_order, traffic)


def test_revisions_side_by_side_equal_the_ledger(tmp_path, traffic):
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    reader = OverviewReader(tmp_path)
    now = datetime.datetime.fromtimestamp(RECEIVED, UTC)
    people = ref.People(traffic.views, traffic.links, MAX_INSTALLS_PER_USER)
    compared = 0
    for experience in range(1, 5):
        query = flow_query.parse({"goal": "screen-3"}, now)
        got = flow_query.revisions(reader, query, experience)
        start, end = query.range.start, query.range.end
        sessions = ref.flow_sessions(traffic.views, TIMEOUT)[experience]
        documents = []
        for revision in sorted({view.revision for view in traffic.views
                                if view.experience == experience}):
            views = [view for view in traffic.views if view.experience == experience
                     and view.revision == revision and start <= view.moment < end]
            mine = [session for session in sessions
                    if session[0][2] == revision and start <= session[0][0] < end]
            reached = sum(any(screen == "screen-3" for _, screen, _ in session)
                          for session in mine)
            durations = [session[-1][0] - session[0][0] for session in mine]
            persons = {people.of(view) for view in views}
            documents.append({
                "revision": revision,
                "first_seen": min(view.moment for view in views),
                "last_seen": max(view.moment for view in views),
                "screen_views": len(views), "sessions": len(mine),
                "users": len(persons), "users_estimated": len(persons) > EXACT_LIMIT,
                "median_session_seconds": ref.quantile(durations, 1, 2),
                "bounce_rate": round(sum(len(s) == 1 for s in mine) / len(mine), 4),
                "goal_sessions": reached, "completion_rate": round(reached / len(mine), 4)})
        documents.sort(key=lambda document: document["first_seen"])
        for document in documents:
            for key in ("first_seen", "last_seen"):
                document[key] = datetime.datetime.fromtimestamp(document[key], UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
        for before, after in zip(documents, documents[1:]):
            low, high = flow_query.difference_interval(
                after["goal_sessions"], after["sessions"], before["goal_sessions"],
                before["sessions"])
            after["vs_previous"] = {
                "revision": before["revision"],
                "difference": round(after["completion_rate"] - before["completion_rate"], 4),
                "low": round(low, 4), "high": round(high, 4)}
            compared += 1
        if documents:
            documents[0]["vs_previous"] = None
        for document, want in zip(got["revisions"], documents):
            if want["vs_previous"]:  # the difference of the unrounded rates, then rounded
                assert abs(document["vs_previous"]["difference"]
                           - want["vs_previous"]["difference"]) <= 1e-4
                want["vs_previous"]["difference"] = document["vs_previous"]["difference"]
        assert got["revisions"] == documents
    assert compared


def test_the_difference_of_two_proportions_has_newcombes_interval():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 - 48/80.
    low, high = flow_query.difference_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # Example (h): 0/10 - 0/20, where a Wald interval collapses to nothing.
    low, high = flow_query.difference_interval(0, 10, 0, 20)
    assert (round(low, 4), round(high, 4)) == (-0.1611, 0.2775)


# The rule's properties, on random sessions, straight through worker/flows.py.

def _figures(sessions):
    changes = Changes()
    for session in sessions:
        add_session(changes, 1, session, 1)
    reach, exits, moves_out = {}, {}, {}
    for (_, _, _, exit_screen, reached), count_ in changes.flow_exits.items():
        reach[reached] = reach.get(reached, 0) + count_
        if exit_screen == reached:
            exits[exit_screen] = exits.get(exit_screen, 0) + count_
    for (_, _, _, source, _), count_ in changes.flow_moves.items():
        moves_out[source] = moves_out.get(source, 0) + count_
    return changes, reach, exits, moves_out


def _sessions(draw_steps, forward_only):
    sessions = []
    for steps in draw_steps:
        views, screen, moment = [], 1, 1000
        for step in steps:
            views.append((moment, f"s{screen}", "r"))
            moment += 1 + step % 50
            screen = screen + 1 if forward_only or step % 4 else max(1, screen - 1)
        sessions.append([views[0][0], views[-1][0], views])
    return sessions


session_steps = st.lists(st.lists(st.integers(0, 1000), min_size=1, max_size=12),
                         min_size=1, max_size=30)


@given(session_steps)
@settings(max_examples=200, deadline=None)
def test_in_a_linear_flow_reach_never_grows_from_one_step_to_the_next(steps):
    _, reach, _, _ = _figures(_sessions(steps, forward_only=True))
    ordered = [reach.get(f"s{number}", 0) for number in range(1, 14)]
    assert all(before >= after for before, after in zip(ordered, ordered[1:]))
    assert ordered[0] == len(steps)


@given(session_steps, st.booleans())
@settings(max_examples=200, deadline=None)
def test_the_moves_out_of_a_screen_are_its_views_less_its_exits(steps, forward_only):
    sessions = _sessions(steps, forward_only)
    _, reach, exits, moves_out = _figures(sessions)
    views = {}
    for session in sessions:
        for _, screen, _ in session[2]:
            views[screen] = views.get(screen, 0) + 1
    for screen, count_ in views.items():
        assert moves_out.get(screen, 0) == count_ - exits.get(screen, 0)
    assert sum(exits.values()) == len(sessions)
    assert all(reach[screen] <= views[screen] for screen in views)


@given(session_steps)
@settings(max_examples=100, deadline=None)
def test_a_session_taken_out_leaves_nothing_behind(steps):
    changes = Changes()
    for session in _sessions(steps, forward_only=False):
        add_session(changes, 1, session, 1)
        add_session(changes, 1, session, -1)
    assert not any(changes.flow_exits.values()) and not any(changes.flow_moves.values())
    for histograms in changes.flow_screens.values():
        assert not any(count_ for histogram in histograms for count_ in histogram.values())
    for row in changes.revisions.values():
        assert row[REVISION_SESSIONS:REVISION_BOUNCES + 1] == [0, 0, 0]
        assert not any(row[REVISION_DURATIONS].values())


def _nonzero(changes):
    """The flow's changes with what adds up to nothing left out (as the store leaves it)."""
    def histograms(rows):
        return {key: [{bucket: n for bucket, n in histogram.items() if n}
                      for histogram in row] for key, row in rows.items()}
    return ({key: n for key, n in changes.flow_exits.items() if n},
            {key: n for key, n in changes.flow_moves.items() if n},
            {key: row for key, row in histograms(changes.flow_screens).items() if any(row)},
            {key: (row[REVISION_SESSIONS:REVISION_BOUNCES + 1],
                   {bucket: n for bucket, n in row[REVISION_DURATIONS].items() if n})
             for key, row in changes.revisions.items()})


@given(session_steps, st.lists(st.integers(0, 1000), min_size=1, max_size=12),
       st.integers(0, 3), st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_session_extended_at_its_end_changes_the_flow_as_out_and_in_would(
        steps, more, pause, forward_only):
    """extend_session (a session that gained views after its last: an install's next batch)
    gives the same changes as counting the session out and the longer one in, and the
    stored session it appends to becomes what the longer one stores."""
    before = _sessions(steps[:1], forward_only)[0]
    views = list(before[2])
    moment, screen = before[1] + pause, 1  # the same second as the last view, or later
    for step in more:
        views.append((moment, f"s{1 + (screen + step) % 9}", "r"))
        moment += step % 50
    views.sort()
    assume(views[:len(before[2])] == before[2])  # extended at its end: none sorts before
    first = before[0]
    stored = StoredViews.of(first, before[2])
    extended = stored.extended(views[len(before[2]):])
    incremental, whole = Changes(), Changes()
    extend_session(incremental, 1, [first, before[1], stored], [first, views[-1][0], extended])
    add_session(whole, 1, before, -1)
    add_session(whole, 1, [first, views[-1][0], views], 1)
    assert _nonzero(incremental) == _nonzero(whole)
    # Stored, the extension is the longer session's summary and one part more: the views
    # added, numbered by the views before them; read back after the first part, the views.
    summary, [(part, text)] = extended.stored()
    assert summary == StoredViews.of(first, views).stored()[0]
    assert part == len(before[2])
    (_, first_text), = stored.stored()[1]
    read_back = decode_views(first, first_text)
    assert read_back + decode_views(first, text, read_back[-1][2]) == views
    assert extended.decoded() == views


def test_each_revision_shows_its_own_order_of_screens_and_its_branch(tmp_path, traffic):
    """The generator's flows (traffic.flows): the second revision moves the second screen
    after the third, and some experiences branch at the third step. Each revision's flow
    lists its screens in its own order, and both screens of a branch at the same step."""
    ingest(tmp_path, traffic.batches)
    count(tmp_path, session_timeout=TIMEOUT)
    reader = OverviewReader(tmp_path)
    now = datetime.datetime.fromtimestamp(RECEIVED, UTC)
    seen = {view.revision for view in traffic.views}
    shown = 0
    for experience, revisions in traffic.flows.items():
        for revision, steps in revisions.items():
            if revision not in seen:
                continue
            query = flow_query.parse({"revision": revision}, now)
            screens = flow_query.flow(reader, query, experience)["screens"]
            # The screens most sessions reach: the first three steps (a back step or a
            # branch can make a few sessions reach later screens out of order).
            first = [screen for screen in screens if screen["median_position"] <= 3]
            assert [[screen["id"]] for screen in first if len(steps[
                screen["median_position"] - 1]) == 1] == [
                step for step in steps[:3] if len(step) == 1], (experience, revision)
            for screen in first:
                assert screen["id"] in steps[screen["median_position"] - 1]
            shown += 1
    assert shown > len(traffic.flows)  # some experiences showed both revisions
    assert any(len(step) == 2 for revisions in traffic.flows.values()
               for steps in revisions.values() for step in steps)
