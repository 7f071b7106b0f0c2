"""An experience's flow as the API serves it (/experiences/<id>/flow, /experiences/<id>/revisions):
where its sessions go, where they leave, whether they reach a goal, revision by revision.

The figures are worker/flows.py's, counted per session in the hour it starts in, so a range
holds the sessions that start in it (whole UTC hours, as app/overview_query.py lays them out),
and merged here from the hour rows of one experience:

    screens   each screen the sessions reached: how many (sessions, share of all), how many
              ended there (exits, drop_off = exits / sessions reaching it), the median
              seconds on it and the median step at which it was first reached; in the order
              people reach them: by that median step, then by reach
    paths     the most frequent moves from one screen to the next, and to the exit (to: null)
    goal      with goal=<screen id>: the sessions that reached it (the first time counts) and
              their share, the people who viewed it among the experience's people, the median
              and 90th percentile seconds from a session's first view to the goal's first
              view, and the screen most sessions left from without reaching it
    revisions each revision (of a session's first view): when it was first and last seen in
              the range, its screen views, sessions, people, median session, bounce rate, and
              with a goal its completion, with the difference from the revision before it
              (by first seen) and that difference's 95 % interval (Newcombe's hybrid score
              interval for two independent proportions)
"""

import math

from app import overview_query
from storage.views.sketches import Durations, People

TOP_PATHS = 20
Z95 = 1.959963984540054


class FlowQuery:
    def __init__(self, range_query, revision, goal, top):
        self.range = range_query  # overview_query.Query: start, end, tz
        self.revision, self.goal, self.top = revision, goal, top


def parse(params, now):
    """Check the query's parameters (a dict of strings) and return a FlowQuery."""
    range_query = overview_query.parse(
        {key: params[key] for key in ("from", "to", "tz") if params.get(key)}, now)
    top = params.get("top")
    if top is None or top == "":
        top = TOP_PATHS
    elif top.isascii() and top.isdigit() and 0 < int(top) <= 1000:
        top = int(top)
    else:
        raise overview_query.BadQuery(f"top must be an integer from 1 to 1000, got {top!r}")
    return FlowQuery(range_query, params.get("revision") or None, params.get("goal") or None,
                     top)


def _reads(query, experience_id, *names):
    """The reads `names` of one experience's hour rows in the query's range, then its names."""
    start, end = query.range.start, query.range.end
    return [*((name, experience_id, start, end) for name in names),
            ("names", experience_id)]


def flow(store, query, experience_id):
    """/experiences/<id>/flow."""
    # One snapshot for every read; a goal's people only when a goal is asked for.
    revisions, screen_rows, exit_rows, move_rows, name_rows, *goal_people_rows = store.run(
        _reads(query, experience_id, "revision_rows", "flow_screen_rows", "flow_exit_rows",
               "flow_move_rows")
        + ([("goal_people", experience_id, query.range.start, query.range.end, query.goal)]
           if query.goal is not None else []))
    wanted = query.revision
    mine = (lambda revision: True) if wanted is None else (lambda revision: revision == wanted)
    sessions = sum(row[5] for row in revisions if mine(row[0]))
    names = overview_query._latest_names(name_rows)

    reach, exits = {}, {}
    for revision, exit_screen, reached, count in exit_rows:
        if mine(revision):
            reach[reached] = reach.get(reached, 0) + count
            if exit_screen == reached:
                exits[exit_screen] = exits.get(exit_screen, 0) + count
    histograms = {}  # screen -> [positions, to_reach, on_screen] (Durations)
    for revision, screen, *encoded in screen_rows:
        if mine(revision):
            merged = histograms.setdefault(screen, [Durations(), Durations(), Durations()])
            for histogram, blob in zip(merged, encoded):
                histogram.add_encoded(blob)
    screens = []
    for screen, count in reach.items():
        if count <= 0:
            continue
        positions, _, on_screen = histograms[screen]
        screens.append({
            "id": screen, "name": names.get((experience_id, screen)),
            "sessions": count, "share": _ratio(count, sessions),
            "exits": exits.get(screen, 0), "drop_off": _ratio(exits.get(screen, 0), count),
            "median_seconds_on_screen": on_screen.median(),
            "median_position": positions.median()})
    screens.sort(key=lambda document: (document["median_position"], -document["sessions"],
                                       document["id"]))

    moves = {}
    for revision, source, target, count in move_rows:
        if mine(revision):
            moves[source, target] = moves.get((source, target), 0) + count
    for screen, count in exits.items():
        moves[screen, None] = count
    paths = sorted(((source, target, count) for (source, target), count in moves.items()
                    if count > 0), key=lambda path: (-path[2], path[0], path[1] or ""))
    people = _people(((row[0], row[4]) for row in revisions), mine)
    document = {
        "experienceID": experience_id, "name": names.get((experience_id, "")),
        **overview_query._range(query.range), "revision": wanted,
        "sessions": sessions, "users": people.count(), "users_estimated": people.estimated,
        "screens": screens,
        "paths": [{"from": source, "to": target, "moves": count}
                  for source, target, count in paths[:query.top]],
        "goal": None}
    if query.goal is not None:
        document["goal"] = _goal(query.goal, sessions, people, reach, exit_rows, histograms,
                                 _people(goal_people_rows[0], mine), mine, names,
                                 experience_id)
    return document


def _goal(goal, sessions, people, reach, exit_rows, histograms, goal_people, mine, names,
          experience_id):
    reached = reach.get(goal, 0)
    left = {}  # exit screen -> sessions that ended there without reaching the goal
    for revision, exit_screen, reached_screen, count in exit_rows:
        if mine(revision) and exit_screen != goal:
            if reached_screen == exit_screen:
                left[exit_screen] = left.get(exit_screen, 0) + count
            elif reached_screen == goal:
                left[exit_screen] = left.get(exit_screen, 0) - count
    most = min(((-count, screen) for screen, count in left.items() if count > 0), default=None)
    to_reach = histograms.get(goal, [None, Durations(), None])[1]
    return {
        "id": goal, "name": names.get((experience_id, goal)),
        "sessions": reached, "session_rate": _ratio(reached, sessions),
        "users": goal_people.count(), "users_estimated": goal_people.estimated,
        "user_rate": _ratio(goal_people.count(), people.count()),
        "median_seconds_to_goal": to_reach.median(),
        "p90_seconds_to_goal": to_reach.quantile(9, 10),
        "most_left_from": None if most is None else {
            "id": most[1], "name": names.get((experience_id, most[1])), "sessions": -most[0]}}


def revisions(store, query, experience_id):
    """/experiences/<id>/revisions."""
    revision_rows, exit_rows, name_rows = store.run(_reads(
        query, experience_id, "revision_rows", "flow_exit_rows"))
    names = overview_query._latest_names(name_rows)
    merged = {}
    for (revision, views, first_seen, last_seen, people, sessions, _, bounces,
         durations) in revision_rows:
        row = merged.get(revision)
        if row is None:
            row = merged[revision] = {"views": 0, "first": None, "last": None, "sessions": 0,
                                      "bounces": 0, "durations": Durations(),
                                      "people": People()}
        row["people"].merge_encoded(people)
        row["sessions"] += sessions
        row["bounces"] += bounces
        row["durations"].add_encoded(durations)
        if views > 0:
            row["views"] += views
            row["first"] = first_seen if row["first"] is None else min(row["first"], first_seen)
            row["last"] = last_seen if row["last"] is None else max(row["last"], last_seen)
    goal_sessions = {}
    if query.goal is not None:
        for revision, _, reached, count in exit_rows:
            if reached == query.goal:
                goal_sessions[revision] = goal_sessions.get(revision, 0) + count
    listed = []
    for revision, row in merged.items():
        if row["views"] == 0 and row["sessions"] == 0:
            continue
        sessions = row["sessions"]
        document = {
            "revision": revision,
            "first_seen": _moment(row["first"], query), "last_seen": _moment(row["last"], query),
            "screen_views": row["views"], "sessions": sessions,
            "users": row["people"].count(), "users_estimated": row["people"].estimated,
            "median_session_seconds": row["durations"].median(),
            "bounce_rate": _ratio(row["bounces"], sessions, 4)}
        if query.goal is not None:
            document["goal_sessions"] = goal_sessions.get(revision, 0)
            document["completion_rate"] = _ratio(goal_sessions.get(revision, 0), sessions, 4)
        listed.append((row["first"] if row["first"] is not None else math.inf, revision,
                       document))
    listed.sort(key=lambda item: (item[0], item[1]))
    documents = [document for _, _, document in listed]
    if query.goal is not None:
        for before, after in zip(documents, documents[1:]):
            after["vs_previous"] = _compare(before, after)
        if documents:
            documents[0]["vs_previous"] = None
    return {"experienceID": experience_id, "name": names.get((experience_id, "")),
            **overview_query._range(query.range), "goal": query.goal, "revisions": documents}


def _compare(before, after):
    """The completion of `after` less that of `before`, with Newcombe's 95 % interval."""
    low, high = difference_interval(after["goal_sessions"], after["sessions"],
                                    before["goal_sessions"], before["sessions"])
    if low is None:
        return {"revision": before["revision"], "difference": None, "low": None, "high": None}
    difference = after["goal_sessions"] / after["sessions"] - (
        before["goal_sessions"] / before["sessions"])
    return {"revision": before["revision"], "difference": round(difference, 4),
            "low": round(low, 4), "high": round(high, 4)}


def wilson_interval(successes, trials, z=Z95):
    """The Wilson score interval of a proportion."""
    p = successes / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    denominator = 1 + z * z / trials
    return (centre - spread) / denominator, (centre + spread) / denominator


def difference_interval(successes1, trials1, successes2, trials2, z=Z95):
    """Newcombe's hybrid score interval (his method 10) for p1 - p2, or (None, None) when a
    side has no trials."""
    if trials1 <= 0 or trials2 <= 0:
        return None, None
    p1, p2 = successes1 / trials1, successes2 / trials2
    low1, high1 = wilson_interval(successes1, trials1, z)
    low2, high2 = wilson_interval(successes2, trials2, z)
    difference = p1 - p2
    return (difference - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2),
            difference + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2))


def _people(rows, mine):
    """The people of (revision, encoded people) rows, of the revisions `mine` keeps."""
    people = People()
    for revision, blob in rows:
        if mine(revision):
            people.merge_encoded(blob)
    return people


def _ratio(part, whole, digits=4):
    return round(part / whole, digits) if whole > 0 else None


def _moment(second, query):
    return None if second is None else overview_query._label(second, query.range)


SCREEN_COLUMNS = ("id", "name", "sessions", "share", "exits", "drop_off",
                  "median_seconds_on_screen", "median_position")
REVISION_COLUMNS = ("revision", "first_seen", "last_seen", "screen_views", "sessions", "users",
                    "users_estimated", "median_session_seconds", "bounce_rate")


def revision_columns(query):
    """The revisions CSV's columns: with a goal, its completion too."""
    if query.goal is None:
        return REVISION_COLUMNS
    return (*REVISION_COLUMNS, "goal_sessions", "completion_rate")
