"""The experience overview as the API serves it (/experiences, /experiences/<id>): the query
checked, the range laid out in hours, days and weeks, and the stored rows merged into
figures.

A range runs on whole UTC hours: from the start of the hour holding `from` to the end of the
hour holding `to`'s last instant. Its figures merge the rows the store gives for the whole
range (level WHOLE: overview.sqlite3 reads the weeks, UTC days and hours that cover it,
overview.duckdb the range at once); a day point in a time zone is the local day, cut to the
range. As in /series, in a
zone whose offset is not a whole number of hours a day's edges move back to the start of the
UTC hour holding local midnight.

Sums (screen views, sessions, durations) are added; people and durations are merged, never
added (storage/views/sketches.py): a user seen on two days of the range counts once.
"""

import bisect
import collections
import datetime
import math

from app import series_query
from storage.views.overview_store import DAY, HOUR, WHOLE
from storage.views.sketches import Durations, People

UTC = datetime.timezone.utc
DEFAULT_SPAN = 30 * 86400
MAX_POINTS = 10_000
SORTS = ("users", "sessions", "screen_views", "avg_session_seconds", "median_session_seconds",
         "screens_per_session", "bounce_rate")
TOP_SCREENS = 10
BadQuery = series_query.BadQuery


class Query:
    def __init__(self, start, end, tz, tz_name, step, sort, top):
        self.start, self.end = start, end  # Unix seconds, on whole UTC hours
        self.tz, self.tz_name, self.step = tz, tz_name, step
        self.sort, self.top = sort, top


def parse(params, now):
    """Check the query's parameters (a dict of strings) and return a Query."""
    tz, tz_name = series_query.parse_zone(params.get("tz"))
    end = series_query.parse_time(params["to"], "to", tz) if params.get("to") else now
    if params.get("from"):
        start = series_query.parse_time(params["from"], "from", tz)
    else:
        start = end - datetime.timedelta(seconds=DEFAULT_SPAN)
    if start >= end:
        raise BadQuery(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
    first = int(start.timestamp() // HOUR * HOUR)
    last = math.ceil(end.timestamp() / HOUR) * HOUR
    step = params.get("step") or "day"
    if step not in ("hour", "day"):
        raise BadQuery(f"step must be hour or day, got {step!r}")
    points = (last - first) // (HOUR if step == "hour" else DAY)
    if points > MAX_POINTS:
        raise BadQuery(f"from..to is {points:,} {step}s; at most {MAX_POINTS:,} points are "
                       "served at a time: ask for "
                       f"{'step=day or ' if step == 'hour' else ''}a shorter range")
    sort = params.get("sort") or "users"
    if sort not in SORTS:
        raise BadQuery(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    top = params.get("top")
    if top is not None:
        if not (top.isascii() and top.isdigit() and 0 < int(top) <= 1_000_000):
            raise BadQuery(f"top must be a positive integer, got {top!r}")
        top = int(top)
    return Query(first, last, tz, tz_name, step, sort, top)


class Figures:
    """One experience's figures over some rows, merged."""

    __slots__ = ("views", "people", "identified", "sessions", "duration_sum",
                 "session_screens", "bounces", "durations")

    def __init__(self):
        self.views = self.sessions = self.duration_sum = 0
        self.session_screens = self.bounces = 0
        self.people = People()
        self.identified = People()
        self.durations = Durations()

    def add(self, row):
        """A stored row: (bucket, experience, views, people, identified, sessions,
        duration_sum, session_screens, bounces, durations)."""
        (_, _, views, people, identified, sessions, duration_sum, session_screens, bounces,
         durations) = row
        self.add_sums(views, sessions, duration_sum, session_screens, bounces)
        self.add_sketches(people, identified, durations)

    def add_sums(self, views, sessions, duration_sum, session_screens, bounces):
        self.views += views
        self.sessions += sessions
        self.duration_sum += duration_sum
        self.session_screens += session_screens
        self.bounces += bounces

    def add_sketches(self, people, identified, durations):
        self.people.merge_encoded(people)
        self.identified.merge_encoded(identified)
        self.durations.add_encoded(durations)

    def document(self):
        sessions = self.sessions
        return {
            "screen_views": self.views,
            "users": self.people.count(),
            # identified_users are some of users: an estimate only when users are one too.
            "users_estimated": self.people.estimated or self.identified.estimated,
            "identified_users": self.identified.count(),
            "sessions": sessions,
            "avg_session_seconds": round(self.duration_sum / sessions, 2) if sessions else None,
            "median_session_seconds": self.durations.median(),
            "screens_per_session": round(self.session_screens / sessions, 2) if sessions
            else None,
            "bounce_rate": round(self.bounces / sessions, 4) if sessions else None,
        }


def _sort_key(sort):
    def key(document):
        value = document[sort]
        # Highest first; experiences with no value (no sessions) last, then by id.
        return (value is None, -(value or 0), document["experienceID"])
    return key


def _latest_names(rows):
    """{(experience, screen): name} from name rows (experience, screen, moment, name), the
    latest of each (rows from several partitions may name one experience)."""
    latest = {}
    for experience, screen, moment, name in rows:
        known = latest.get((experience, screen))
        if known is None or (moment, name) > known:
            latest[experience, screen] = (moment, name)
    return {key: name for key, (_, name) in latest.items()}


def experiences(store, query):
    """/experiences: every experience with screen views in the range, with its figures.

    `store` runs the reads (storage/views/overview_store.OverviewReader, or in cluster mode
    app/cluster_readside.ClusterOverview): all of them at once, in one snapshot."""
    whole = (WHOLE, query.start, query.end)
    # The sums added up by the store, and only the sketches' bytes brought into Python: over
    # 1,000 experiences and 30 days this halves the time.
    sums, sketches, name_rows = store.run([("experience_sums", *whole),
                                           ("experience_sketches", *whole), ("names", None)])
    merged = collections.defaultdict(Figures)
    for experience, *added in sums:
        merged[experience].add_sums(*added)
    for experience, people, identified, durations in sketches:
        merged[experience].add_sketches(people, identified, durations)
    names = _latest_names(name_rows)
    listed = [{"experienceID": experience, "name": names.get((experience, "")),
               **figures.document()} for experience, figures in merged.items()]
    listed.sort(key=_sort_key(query.sort))
    if query.top is not None:
        listed = listed[:query.top]
    return {**_range(query), "sort": query.sort, "experiences": listed}


def experience(store, query, experience_id):
    """/experiences/<id>: one experience's figures, its top screens and its points."""
    rows, screen_rows, hour_rows, name_rows = store.run([
        ("experience_rows", WHOLE, query.start, query.end, experience_id),
        ("screen_rows", experience_id, query.start, query.end),
        ("experience_rows", HOUR, query.start, query.end, experience_id),
        ("names", experience_id)])
    total = Figures()
    for row in rows:
        total.add(row)
    screens = {}  # id -> [views, People]
    for screen, views, people in screen_rows:
        known = screens.get(screen)
        if known is None:
            known = screens[screen] = [0, People()]
        known[0] += views
        known[1].merge_encoded(people)
    names = _latest_names(name_rows)
    top = sorted(screens.items(), key=lambda item: (-item[1][0], item[0]))[:TOP_SCREENS]
    return {
        "experienceID": experience_id,
        "name": names.get((experience_id, "")),
        **_range(query),
        "step": query.step,
        **total.document(),
        "screens": len(screens),
        "top_screens": [{"id": screen, "name": names.get((experience_id, screen)),
                         "views": views, "users": people.count(),
                         "users_estimated": people.estimated}
                        for screen, (views, people) in top],
        "points": _points(query, hour_rows),
    }


def _points(query, hour_rows):
    """The points, each merging the hour rows (of the whole range) that fall in it."""
    edges = _edges(query)
    figures = [Figures() for _ in edges[1:]]
    for row in hour_rows:
        figures[bisect.bisect_right(edges, row[0]) - 1].add(row)
    points = []
    for start, point in zip(edges, figures):
        document = point.document()
        points.append({"time": _label(start, query), "screen_views": document["screen_views"],
                       "users": document["users"],
                       "users_estimated": document["users_estimated"],
                       "sessions": document["sessions"],
                       "avg_session_seconds": document["avg_session_seconds"]})
    return points


def _edges(query):
    """The points' edges: every hour, or every local midnight, within [start, end]."""
    if query.step == "hour":
        return list(range(query.start, query.end + 1, HOUR))
    edges = [query.start]
    day = datetime.datetime.fromtimestamp(query.start, query.tz).date()
    while True:
        day += datetime.timedelta(days=1)
        midnight = datetime.datetime.combine(day, datetime.time(), tzinfo=query.tz)
        edge = int(midnight.timestamp()) // HOUR * HOUR  # see the module's note
        if edge >= query.end:
            return edges + [query.end]
        edges.append(edge)


def _label(second, query):
    moment = datetime.datetime.fromtimestamp(second, UTC)
    if query.tz is UTC:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.astimezone(query.tz).isoformat(timespec="seconds")


def _range(query):
    return {"from": _label(query.start, query), "to": _label(query.end, query),
            "tz": query.tz_name}


CSV_COLUMNS = ("experienceID", "name", "screen_views", "users", "users_estimated",
               "identified_users", "sessions", "avg_session_seconds", "median_session_seconds",
               "screens_per_session", "bounce_rate")
POINT_COLUMNS = ("time", "screen_views", "users", "users_estimated", "sessions",
                 "avg_session_seconds")


def csv_rows(documents, columns):
    return [[document[column] for column in columns] for document in documents]
