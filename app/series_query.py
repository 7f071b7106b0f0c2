"""Counts over time as the API serves them: the query checked, buckets laid out in the asked
time zone, zero-filled.

Buckets are half-open, [start, next start). Minute and hour buckets are the store's own
(storage/views/series_store.py), whole UTC minutes and hours. Day buckets run from one local
midnight to the next in the asked zone, so a day of a daylight-saving change has 23 or 25
hours; they are summed from hour buckets, so in a zone whose offset is not a whole number of
hours (India's +05:30, Nepal's +05:45) a day's edges move back to the start of the UTC hour
that holds local midnight: precise to the hour, not to the minute.
"""

import bisect
import datetime
import math
import zoneinfo

from storage.views.series_store import HOUR, MINUTE

UTC = datetime.timezone.utc
STEPS = {"minute": MINUTE, "hour": HOUR, "day": 86400}
DEFAULT_SPAN = {"minute": 3600, "hour": 86400, "day": 30 * 86400}
MAX_POINTS = 10_000
EARLIEST = datetime.datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime.datetime(9000, 1, 1, tzinfo=UTC)


class BadQuery(Exception):
    """A parameter is wrong; the message names it."""


class Query:
    def __init__(self, step, start, end, tz, tz_name, experience):
        self.step, self.start, self.end = step, start, end
        self.tz, self.tz_name, self.experience = tz, tz_name, experience


def parse_zone(raw):
    if not raw or raw == "UTC":
        return UTC, "UTC"
    try:
        return zoneinfo.ZoneInfo(raw), raw
    # OSError: a name that is a folder of the zone database (America), or too long a path.
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise BadQuery(
            f"tz must be an IANA time zone name like Europe/Berlin, got {raw!r}") from None


def parse_time(raw, name, tz):
    """An ISO 8601 time from 1970 to 8999; one without an offset is read in `tz`."""
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 time like 2026-11-25T10:00:00Z, "
                       f"got {raw!r}") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=tz)
    try:
        # Bounded so that a range and its buckets (a day either side) stay in datetime's
        # years 1 to 9999 in any zone.
        inside = EARLIEST <= moment < LATEST
    except OverflowError:  # the year 1 or 9999 taken to UTC
        inside = False
    if not inside:
        raise BadQuery(f"{name} must be from 1970-01-01T00:00:00Z to before "
                       f"9000-01-01T00:00:00Z, got {raw!r}")
    return moment


def parse(params, now, experience=None, step_default="hour"):
    """Check the query's parameters (a dict of strings) and return a Query."""
    step = params.get("step") or step_default
    if step not in STEPS:
        raise BadQuery(f"step must be minute, hour or day, got {step!r}")
    tz, tz_name = parse_zone(params.get("tz"))
    end = parse_time(params["to"], "to", tz) if params.get("to") else now
    if params.get("from"):
        start = parse_time(params["from"], "from", tz)
    else:
        # The last hour, day or 30 days: whole buckets, the last one the current one.
        start = end - datetime.timedelta(seconds=DEFAULT_SPAN[step])
        if step != "day":
            size = STEPS[step]
            start = datetime.datetime.fromtimestamp(
                -(-start.timestamp() // size) * size, UTC).astimezone(tz)
    if start >= end:
        raise BadQuery(f"from ({start.isoformat()}) must be before to ({end.isoformat()})")
    points = (end - start).total_seconds() / STEPS[step]
    if points > MAX_POINTS:
        raise BadQuery(f"from..to is {points:,.0f} {step}s; at most {MAX_POINTS:,} points "
                       "are served at a time: ask for a larger step or a shorter range")
    return Query(step, start, end, tz, tz_name, experience)


def bucket_starts(query):
    """The Unix seconds at which each bucket of the query starts, in order."""
    start, end = query.start.timestamp(), query.end.timestamp()
    if query.step != "day":
        size = STEPS[query.step]
        # Up to the bucket holding `end`'s last instant: end is exclusive, but may fall inside
        # a second (ceil, not int, or a query in a minute's first second loses that minute).
        return list(range(int(start // size * size), math.ceil(end), size))
    day = query.start.astimezone(query.tz).date()
    starts = []
    while True:
        midnight = datetime.datetime.combine(day, datetime.time(), tzinfo=query.tz)
        second = int(midnight.timestamp())
        if second >= end:
            return starts
        starts.append(second)
        day += datetime.timedelta(days=1)


def label(second, query):
    moment = datetime.datetime.fromtimestamp(second, UTC)
    if query.tz is UTC:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.astimezone(query.tz).isoformat(timespec="seconds")


def points(query, buckets_of):
    """[(label, count)] for every bucket of the query, zero-filled.

    `buckets_of(step_seconds, start, end)` gives the store's {bucket start: count}.
    """
    starts = bucket_starts(query)
    if not starts:
        return []
    if query.step != "day":
        size = STEPS[query.step]
        stored = buckets_of(size, starts[0], starts[-1] + size)
        return [(label(start, query), stored.get(start, 0)) for start in starts]
    # A day's end is the next day's start; the last one's is one local day on.
    last_day = datetime.datetime.fromtimestamp(starts[-1], query.tz).date()
    after = datetime.datetime.combine(last_day + datetime.timedelta(days=1), datetime.time(),
                                      tzinfo=query.tz)
    # Each day's edges on whole UTC hours (a no-op in whole-hour zones; see the module's note).
    edges = [edge - edge % HOUR for edge in starts + [int(after.timestamp())]]
    sums = [0] * len(starts)
    for hour, count in buckets_of(HOUR, edges[0], edges[-1]).items():
        sums[bisect.bisect_right(edges, hour) - 1] += count
    return [(label(start, query), total) for start, total in zip(starts, sums)]
