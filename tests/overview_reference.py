"""The experience overview computed straight from a ledger of screen views (bench/traffic.py's
View: anonymous, user, experience, screen, moment) and links (Link: anonymous, user, moment,
the identifies), the obvious way: sort each device's views of an experience, split at gaps
longer than the timeout; give each view its person by the people rule written out by brute
force. What the engine must answer."""

import collections
import datetime
import math

from storage.views.sketches import EXACT_LIMIT, duration_bucket, person_key


def sessions_of(moments, timeout):
    """The sessions of a set of view times: maximal runs with no gap longer than `timeout`,
    each [first, last, screens]."""
    result = []
    for moment in sorted(moments):
        if result and moment - result[-1][1] <= timeout:
            result[-1][1] = moment
            result[-1][2] += 1
        else:
            result.append([moment, moment, 1])
    return result


def all_sessions(views, timeout):
    """{experience: [session, ...]} over every device."""
    moments = collections.defaultdict(list)
    for view in views:
        moments[view.anonymous, view.experience].append(view.moment)
    by_experience = collections.defaultdict(list)
    for (_, experience), times in moments.items():
        by_experience[experience] += sessions_of(times, timeout)
    return by_experience


class People:
    """Each view's person by the rule of worker/people.py, from scratch: a view carrying a
    userID is that user's; an anonymous view is its install's first linked user's, by device
    time, among users linked from at most `bound` installs; else the install's own."""

    def __init__(self, views, links, bound):
        first = collections.defaultdict(dict)  # install -> {user: first moment linked}
        for anonymous, user, moment in [*links, *((view.anonymous, view.user, view.moment)
                                                  for view in views if view.user)]:
            if user and (user not in first[anonymous] or moment < first[anonymous][user]):
                first[anonymous][user] = moment
        installs = collections.Counter(user for users in first.values() for user in users)
        self.install_person = {}
        for anonymous, users in first.items():
            valid = sorted((moment, person_key("user:" + user), user)
                           for user, moment in users.items() if installs[user] <= bound)
            if valid:
                self.install_person[anonymous] = valid[0][2]

    def of(self, view):
        """("user", userID) or ("anon", anonymousID)."""
        user = view.user or self.install_person.get(view.anonymous)
        return ("user", user) if user else ("anon", view.anonymous)


def nearest_rank_median(values):
    ordered = sorted(values)
    return ordered[(len(ordered) + 1) // 2 - 1] if ordered else None


def figures(views, sessions, start, end, people):
    """The overview figures of the views and of the sessions starting in [start, end)."""
    inside = [view for view in views if start <= view.moment < end]
    started = [session for session in sessions if start <= session[0] < end]
    durations = [last - first for first, last, _ in started]
    count = len(started)
    persons = {people.of(view) for view in inside}
    return {
        "screen_views": len(inside),
        "users": len(persons),
        "identified_users": sum(kind == "user" for kind, _ in persons),
        "sessions": count,
        "avg_session_seconds": round(sum(durations) / count, 2) if count else None,
        "median_session_seconds": nearest_rank_median(durations),
        "screens_per_session": round(sum(s[2] for s in started) / count, 2) if count
        else None,
        "bounce_rate": round(sum(s[2] == 1 for s in started) / count, 4) if count else None,
    }


def overview(views, timeout, start, end, people):
    """{experience: figures} of every experience with views in [start, end)."""
    sessions = all_sessions(views, timeout)
    by_experience = collections.defaultdict(list)
    for view in views:
        by_experience[view.experience].append(view)
    result = {}
    for experience, its_views in by_experience.items():
        if any(start <= view.moment < end for view in its_views):
            result[experience] = figures(its_views, sessions[experience], start, end, people)
    return result


def day_edges(start, end, tz):
    """Local midnights in `tz` within the range (each moved back to its UTC hour's start), with
    the range's own ends."""
    edges = [start]
    day = datetime.datetime.fromtimestamp(start, tz).date()
    while True:
        day += datetime.timedelta(days=1)
        edge = int(datetime.datetime.combine(day, datetime.time(), tzinfo=tz).timestamp())
        edge -= edge % 3600
        if edge >= end:
            return edges + [end]
        edges.append(edge)


def relative_error(estimate, exact):
    return abs(estimate - exact) / exact if exact else float(estimate != 0)


def hour_floor(second):
    return second - second % 3600


def hour_ceil(second):
    return math.ceil(second / 3600) * 3600


def flow_sessions(views, timeout):
    """{experience: [(first view's revision, [(moment, screen, revision), ...])]}: each
    device's views of an experience sorted (moment, screen, revision) and split at gaps
    longer than `timeout`, as worker/sessions.py's order says."""
    by_device = collections.defaultdict(list)
    for view in views:
        by_device[view.anonymous, view.experience].append(
            (view.moment, view.screen, view.revision))
    result = collections.defaultdict(list)
    for (_, experience), its_views in by_device.items():
        current = []
        for view in sorted(its_views):
            if current and view[0] - current[-1][0] > timeout:
                result[experience].append(current)
                current = []
            current.append(view)
        result[experience].append(current)
    return result


def quantile(values, part, whole):
    """Nearest rank, of the values' duration buckets (storage/views/sketches.py)."""
    ordered = sorted(duration_bucket(value) for value in values)
    if not ordered:
        return None
    return ordered[max(1, -(-len(ordered) * part // whole)) - 1]


def flow(views, timeout, start, end, people, experience, revision=None, goal=None):
    """The flow of `experience`'s sessions starting in [start, end) (of `revision` only, if
    given), worked out from each session's sorted views: what /experiences/<id>/flow must
    answer, names left out."""
    sessions = [session for session in flow_sessions(views, timeout)[experience]
                if start <= session[0][0] < end
                and (revision is None or session[0][2] == revision)]
    reach, exits, moves, positions, on_screen, to_reach = (
        collections.Counter(), collections.Counter(), collections.Counter(),
        collections.defaultdict(list), collections.defaultdict(list),
        collections.defaultdict(list))
    left = collections.Counter()
    for session in sessions:
        first = session[0][0]
        seen = {}
        for position, (moment, screen, _) in enumerate(session, 1):
            seen.setdefault(screen, (min(position, 50), moment))
        for screen, (position, moment) in seen.items():
            reach[screen] += 1
            positions[screen].append(position)
            to_reach[screen].append(moment - first)
        exits[session[-1][1]] += 1
        if goal is not None and goal not in seen:
            left[session[-1][1]] += 1
        for (moment, screen, _), (after, following, _) in zip(session, session[1:]):
            on_screen[screen].append(after - moment)
            moves[screen, following] += 1
    for screen, count in exits.items():
        moves[screen, None] = count
    total = len(sessions)
    ratio = lambda part, whole: round(part / whole, 4) if whole else None  # noqa: E731
    screens = sorted(({"id": screen, "sessions": count, "share": ratio(count, total),
                       "exits": exits[screen], "drop_off": ratio(exits[screen], count),
                       "median_seconds_on_screen": quantile(on_screen[screen], 1, 2),
                       "median_position": quantile(positions[screen], 1, 2)}
                      for screen, count in reach.items()),
                     key=lambda s: (s["median_position"], -s["sessions"], s["id"]))
    in_range = [view for view in views if view.experience == experience
                and start <= view.moment < end
                and (revision is None or view.revision == revision)]
    persons = {people.of(view) for view in in_range}
    result = {"sessions": total, "users": len(persons),
              "users_estimated": len(persons) > EXACT_LIMIT, "screens": screens,
              "paths": sorted(({"from": source, "to": target, "moves": count}
                               for (source, target), count in moves.items()),
                              key=lambda p: (-p["moves"], p["from"], p["to"] or ""))}
    if goal is not None:
        reached = {people.of(view) for view in in_range if view.screen == goal}
        most = min(((-count, screen) for screen, count in left.items()), default=None)
        result["goal"] = {
            "sessions": reach[goal], "session_rate": ratio(reach[goal], total),
            "users": len(reached), "users_estimated": len(reached) > EXACT_LIMIT,
            "user_rate": ratio(len(reached), len(persons)),
            "median_seconds_to_goal": quantile(to_reach[goal], 1, 2),
            "p90_seconds_to_goal": quantile(to_reach[goal], 9, 10),
            "most_left_from": None if most is None else {"id": most[1], "sessions": -most[0]}}
    return result


def flow_without_names(document):
    """A flow document as flow() gives it: the screens' and the goal's names left out (they
    are the generator's "Screen <n>", checked here), and no goal key without a goal."""
    document = {key: value for key, value in document.items()
                if key in ("sessions", "users", "users_estimated", "screens", "paths", "goal")}
    document["screens"] = [dict(screen) for screen in document["screens"]]
    for screen in document["screens"]:
        assert screen.pop("name") == f"Screen {screen['id'].split('-')[1]}"
    if document["goal"] is None:
        del document["goal"]
    else:
        goal = document["goal"] = dict(document["goal"])
        name = goal.pop("name")
        assert name in (None, f"Screen {goal.pop('id').split('-')[1]}")
        if goal["most_left_from"] is not None:
            goal["most_left_from"] = dict(goal["most_left_from"])
            goal["most_left_from"].pop("name")
    return document
