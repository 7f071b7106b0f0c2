"""app/series_query.py: buckets in time zones (DST days, leap days, +05:30), labels, limits."""

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import series_query as q

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def starts(params):
    query = q.parse(params, NOW)
    return [q.label(second, query) for second in q.bucket_starts(query)]


def test_minute_and_hour_buckets_in_utc():
    assert starts({"step": "minute", "from": "2026-11-25T10:00:30Z", "to": "2026-11-25T10:03:00Z"}) == [
        "2026-11-25T10:00:00Z", "2026-11-25T10:01:00Z", "2026-11-25T10:02:00Z"]
    assert starts({"step": "hour", "from": "2026-11-25T22:00:00Z", "to": "2026-11-26T01:00:00Z"}) == [
        "2026-11-25T22:00:00Z", "2026-11-25T23:00:00Z", "2026-11-26T00:00:00Z"]


@pytest.mark.parametrize("day, following, hours", [
    ("2026-03-29", "2026-03-31", 23), ("2026-10-25", "2026-10-27", 25), ("2026-06-01", "2026-06-03", 24)])
def test_days_follow_the_zones_midnights(day, following, hours):
    query = q.parse({"step": "day", "from": day, "to": following, "tz": "Europe/Berlin"}, NOW)
    first, second = q.bucket_starts(query)
    assert (second - first) / 3600 == hours


def test_a_leap_day_is_a_day_of_its_own():
    assert starts({"step": "day", "from": "2028-02-28", "to": "2028-03-02"}) == [
        "2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z", "2028-03-01T00:00:00Z"]


def test_labels_carry_the_zones_offset():
    assert starts({"step": "day", "from": "2026-03-28", "to": "2026-03-31", "tz": "Europe/Berlin"}) == [
        "2026-03-28T00:00:00+01:00", "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]
    assert starts({"step": "hour", "from": "2026-11-25T10:00:00+05:30",
                   "to": "2026-11-25T12:00:00+05:30", "tz": "Asia/Kolkata"}) == [
        "2026-11-25T09:30:00+05:30", "2026-11-25T10:30:00+05:30", "2026-11-25T11:30:00+05:30"]


def test_days_in_a_half_hour_zone_are_precise_to_the_hour():
    query = q.parse({"step": "day", "from": "2026-11-24", "to": "2026-11-26", "tz": "Asia/Kolkata"}, NOW)
    day1 = int(datetime.datetime(2026, 11, 23, 18, 0, tzinfo=UTC).timestamp())  # 23:30 local
    hours = {day1: 5, day1 + 23 * 3600: 7, day1 + 24 * 3600: 1}
    points = q.points(query, lambda step, start, end: {h: n for h, n in hours.items() if start <= h < end})
    assert points == [("2026-11-24T00:00:00+05:30", 12), ("2026-11-25T00:00:00+05:30", 1)]


def test_points_are_zero_filled_and_ordered():
    query = q.parse({"step": "minute", "from": "2026-11-25T10:00:00Z", "to": "2026-11-25T10:04:00Z"}, NOW)
    base = int(query.start.timestamp())
    stored = {base + 60: 3, base + 180: 1}
    assert q.points(query, lambda step, start, end: stored) == [
        ("2026-11-25T10:00:00Z", 0), ("2026-11-25T10:01:00Z", 3),
        ("2026-11-25T10:02:00Z", 0), ("2026-11-25T10:03:00Z", 1)]


@pytest.mark.parametrize("params, message", [
    ({"step": "week"}, "step"),
    ({"from": "yesterday", "to": "2026-11-25T00:00:00Z"}, "from"),
    ({"from": "2026-11-25T00:00:00Z", "to": "soon"}, "to"),
    ({"from": "2026-11-26T00:00:00Z", "to": "2026-11-25T00:00:00Z"}, "before"),
    ({"tz": "Mars/Olympus"}, "tz"),
    ({"step": "minute", "from": "2026-01-01T00:00:00Z", "to": "2026-11-25T00:00:00Z"}, "points"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(q.BadQuery, match=message):
        q.parse(params, NOW)


def test_a_query_in_a_minutes_first_second_has_that_minute():
    query = q.parse({"step": "minute"}, NOW + datetime.timedelta(seconds=0.3))
    assert q.bucket_starts(query)[-1] == NOW.timestamp()  # the minute that just began
    assert len(q.bucket_starts(query)) == 60


def test_defaults_end_now():
    query = q.parse({"step": "minute"}, NOW + datetime.timedelta(seconds=30))
    assert len(q.bucket_starts(query)) == 60  # whole minutes, the current one last
    assert q.bucket_starts(query)[-1] == NOW.timestamp()


@settings(max_examples=60, deadline=None)
@given(
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                          "Asia/Kathmandu", "America/Sao_Paulo"]),
    first_day=st.dates(datetime.date(2024, 1, 1), datetime.date(2030, 12, 1)),
    days=st.integers(1, 40),
    counts=st.lists(st.integers(0, 5), min_size=1, max_size=50),
    data=st.data(),
)
def test_day_points_sum_every_hour_of_the_range_exactly_once(zone, first_day, days, counts, data):
    params = {"step": "day", "from": first_day.isoformat(),
              "to": (first_day + datetime.timedelta(days=days)).isoformat(), "tz": zone}
    query = q.parse(params, NOW)
    starts = q.bucket_starts(query)
    low, high = starts[0] - starts[0] % 3600, query.end.timestamp()
    hours = {}
    for count in counts:
        hour = data.draw(st.integers(int(low // 3600), int(high // 3600) - 1)) * 3600
        hours[hour] = hours.get(hour, 0) + count
    served = []
    points = q.points(query, lambda step, start, end: (served.append((start, end)), {
        h: n for h, n in hours.items() if start <= h < end})[1])
    assert len(points) == len(starts) == days
    in_range = sum(n for h, n in hours.items() if served[0][0] <= h < served[0][1])
    assert sum(count for _, count in points) == in_range
