"""POST /batch with Judo's SDK events: the SDKs' own shapes counted, bad events left out and
named (never a 4xx that would make an SDK drop the chunk), device clocks read or flagged,
and a retry counted once, against a real waitress server."""

import datetime
import math
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from http_client import post, request, wait_for
from bench.sdk_shapes import AndroidDevice, IosDevice, mixed_batch
from test_read_api import assert_matches_spec
from test_validate import BAD_EVENT_BODIES
from app import validate
from storage.log import details

NOW = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


@pytest.fixture
def ingest(procs, state_dir):
    return procs.ingest(state_dir)


def data1(state_dir):
    return (state_dir / "data1").read_bytes()


def stored_details(state_dir):
    with open(state_dir / "data1.details", "rb") as file:
        return [item for group in details.read_groups(file.fileno())
                for item in group.events()[1]]


def screen_counts(state_dir):
    counts = {}
    for token in data1(state_dir).split():
        counts[int(token)] = counts.get(int(token), 0) + 1
    return counts


# --- device clocks (pure)

@pytest.mark.parametrize("raw, expected", [
    ("2026-11-27T14:11:12Z", "2026-11-27T14:11:12+00:00"),          # iOS
    ("2026-11-27T10:11:12-0400", "2026-11-27T14:11:12+00:00"),      # Android
    ("2026-11-27T19:41:12+0530", "2026-11-27T14:11:12+00:00"),
    ("2026-11-27T14:11:12.250+00:00", "2026-11-27T14:11:12.250000+00:00"),
    ("٢٠٢٦-١١-٢٧T١٠:١١:١٢-0400", "2026-11-27T14:11:12+00:00"),     # Arabic-Indic digits
])
def test_both_sdk_timestamp_formats_parse(raw, expected):
    received = datetime.datetime(2026, 11, 27, 15, tzinfo=datetime.timezone.utc).timestamp()
    seconds, flag = validate.device_time(raw, received)
    assert flag is None
    assert datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat() == expected


@pytest.mark.parametrize("raw, flag", [
    (None, "missing"),
    ("yesterday", "unparsable"),
    (1764252672, "unparsable"),
    ("2026-11-27T14:11:12", "unparsable"),  # no offset: which zone?
    ("2026-13-27T14:11:12Z", "unparsable"),
    ("2026-11-29T15:00:01Z", "ahead"),
    ("1999-12-31T23:59:59Z", "before 2000"),
])
def test_unbelievable_device_clocks_are_flagged_and_the_receive_time_stands_in(raw, flag):
    received = datetime.datetime(2026, 11, 28, 15, tzinfo=datetime.timezone.utc).timestamp()
    assert validate.device_time(raw, received) == (received, flag)


def datetime_device_time(raw, received):
    """device_time as it first was, straight through datetime, each time: the reference the
    ingest's must equal (app/validate.py keeps each hour's start instead)."""
    match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
                         r"(Z|z|[+-]\d\d:?\d\d)", raw)
    if match is None:
        return received, "unparsable"
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    offset = datetime.timedelta(0)
    if zone not in ("Z", "z"):  # [+-]HH:MM or [+-]HHMM
        offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[-2:]))
        offset = -offset if zone[0] == "-" else offset
    try:
        moment = datetime.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second),
            int((fraction or "0")[:6].ljust(6, "0")), datetime.timezone(offset))
    except ValueError:
        return received, "unparsable"
    seconds = moment.timestamp()
    if seconds > received + validate.CLOCK_AHEAD_LIMIT:
        return received, "ahead"
    if seconds < validate.CLOCK_OLDEST:
        return received, "before 2000"
    return seconds, None


_DIGITS = "0123456789"
_ARABIC_INDIC = "٠١٢٣٤٥٦٧٨٩"


def _number(draw, value, width):
    text = f"{value:0{width}d}"[-width:]
    if draw(st.booleans()) and draw(st.integers(0, 9)) == 0:  # now and then, as Android may
        text = text.translate(str.maketrans(_DIGITS, _ARABIC_INDIC))
    return text


@st.composite
def device_timestamps(draw):
    """Timestamps in both SDKs' formats and around them: any field out of its range now and
    then (month 13, hour 24, second 60, an offset of 24 h), fractions, colons or none."""
    def number(low, high, width):
        return _number(draw, draw(st.integers(low, high)), width)

    date = f"{number(0, 9999, 4)}-{number(0, 13, 2)}-{number(0, 32, 2)}"
    time_of_day = f"{number(0, 24, 2)}:{number(0, 60, 2)}:{number(0, 60, 2)}"
    fraction = draw(st.one_of(st.just(""), st.from_regex(r"[.,][0-9]{1,9}", fullmatch=True)))
    zone = draw(st.one_of(
        st.sampled_from(["Z", "z"]),
        st.builds(lambda sign, hours, minutes, colon: f"{sign}{hours:02d}{colon}{minutes:02d}",
                  st.sampled_from("+-"), st.integers(0, 25), st.integers(0, 99),
                  st.sampled_from(["", ":"]))))
    return f"{date}T{time_of_day}{fraction}{zone}"


@settings(max_examples=3000, deadline=None)
@given(raw=device_timestamps(), received=st.floats(0, 4e11))
def test_device_time_is_datetimes_own_to_the_bit(raw, received):
    assert validate.device_time(raw, received) == datetime_device_time(raw, received)


# --- the SDKs' shapes through a real server

@pytest.mark.parametrize("api_version", ["", "?apiVersion=2"])
def test_both_sdks_batches_of_100_are_counted(ingest, state_dir, api_version):
    events, expected = mixed_batch(NOW, 100)
    status, answer = post(ingest.port, {"batch": events}, path="/batch" + api_version)
    assert status == 202, answer
    assert answer == {"accepted": 100, "stored": 100, "duplicates": [], "rejected": []}
    assert_matches_spec("/batch", "POST", status, answer)
    assert screen_counts(state_dir) == expected
    kept = stored_details(state_dir)
    assert [item["event"] for item in kept] == events  # every field, as sent
    screens = [item for item in kept if item["event"]["type"] == "screen"]
    assert all(data1(state_dir)[item["offset"]:].split(b" ", 1)[0]
               == item["event"]["properties"]["experienceID"].encode() for item in screens)
    assert {item["time"] for item in kept} == {NOW.timestamp() * 1000}
    assert not any("clock" in item for item in kept)
    stats = request(ingest.port, "GET", "/stats")[1]
    assert_matches_spec("/stats", "GET", 200, stats)
    assert stats["sdk"]["stored"] == {"screen": 97, "identify": 2, "register": 1}


def test_a_retry_is_answered_accepted_and_counted_once(ingest, state_dir):
    events, expected = mixed_batch(NOW, 40)
    assert post(ingest.port, {"batch": events}, path="/batch")[0] == 202
    before = (data1(state_dir), (state_dir / "data1.details").read_bytes())
    # The SDK's next chunk: the unanswered 40 again, with 10 new ones after them.
    more = [IosDevice().screen(NOW, 5) for _ in range(10)]
    status, answer = post(ingest.port, {"batch": events + more}, path="/batch")
    assert status == 202
    assert answer["accepted"] == 50 and answer["stored"] == 10
    assert_matches_spec("/batch", "POST", status, answer)
    assert answer["duplicates"] == [{"index": i, "id": e["id"]} for i, e in enumerate(events)]
    expected[5] = 10
    assert screen_counts(state_dir) == expected
    assert data1(state_dir).startswith(before[0])
    assert (state_dir / "data1.details").read_bytes().startswith(before[1])
    assert request(ingest.port, "GET", "/stats")[1]["sdk"]["duplicates"] == 40


def test_the_same_id_twice_in_one_batch_is_stored_once(ingest, state_dir):
    event = AndroidDevice().screen(NOW, 3)
    status, answer = post(ingest.port, {"batch": [event, event]}, path="/batch")
    assert (status, answer["stored"], answer["duplicates"]) == (
        202, 1, [{"index": 1, "id": event["id"]}])
    assert data1(state_dir) == b"3 "


def test_the_same_event_at_once_from_many_connections_is_stored_once(ingest, state_dir):
    device = IosDevice()
    for round_number in range(20):
        event = device.screen(NOW, round_number)
        start = threading.Barrier(8)
        answers = []

        def send():
            start.wait()
            answers.append(post(ingest.port, {"batch": [event]}, path="/batch"))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [status for status, _ in answers] == [202] * 8
        assert sorted(answer["stored"] for _, answer in answers) == [0] * 7 + [1]
    assert screen_counts(state_dir) == {number: 1 for number in range(20)}


# --- one bad event never costs its neighbours

def bad_events():
    """Every bad experienceID of the abuse test, as an SDK screen's, and every other way an
    SDK event can be unusable."""
    device = AndroidDevice()
    cases = {}
    for name, body in BAD_EVENT_BODIES.items():
        try:
            value = validate.parse_json(body)["experienceID"]
        except (validate.Invalid, KeyError, TypeError):
            continue  # not JSON at all: a body unusable as a whole
        if isinstance(value, str) and value.isdigit():
            continue  # "12" is how the SDKs send an id: good
        if isinstance(value, float) and not math.isfinite(value):
            value = 1e308  # 1e400 is read as infinity, which json.dumps cannot send back
        event = device.screen(NOW, 1)
        event["properties"]["experienceID"] = value
        cases[f"experienceID {name}"] = event
    screen = device.screen(NOW, 1)
    cases.update({
        "not an object": [screen],
        "a number": 7,
        "null": None,
        "unknown type": {**screen, "type": "track"},
        "no type": {key: value for key, value in screen.items() if key != "type"},
        "no id": {key: value for key, value in screen.items() if key != "id"},
        "empty id": {**screen, "id": ""},
        "numeric id": {**screen, "id": 12},
        "no anonymousID": {key: value for key, value in screen.items() if key != "anonymousID"},
        "userID a number": {**screen, "userID": 5},
        "no properties": {key: value for key, value in screen.items() if key != "properties"},
        "properties a list": {**screen, "properties": [1]},
        "no experienceID": {**screen, "properties": {"id": "s", "name": "n"}},
        "experienceID signed": {**screen, "properties": {"experienceID": "+1"}},
        "experienceID 2**63": {**screen, "properties": {"experienceID": str(2**63)}},
        "experienceID spaces": {**screen, "properties": {"experienceID": " 1"}},
        "screen name a number": {**screen, "properties": {"experienceID": "1", "name": 3}},
        "context a string": {**screen, "context": "phone"},
        "traits a list": {**device.identify(NOW, "u", {}), "traits": ["x"]},
        "id too long": {**screen, "id": "x" * 300},
    })
    return cases


BAD = bad_events()


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_a_bad_event_in_an_sdk_batch_is_named_and_the_other_99_are_counted(
        ingest, state_dir, bad):
    events, expected = mixed_batch(NOW, 99)
    events.insert(37, bad)
    status, answer = post(ingest.port, {"batch": events}, path="/batch")
    assert status == 202, answer
    assert answer["stored"] == 99 and answer["duplicates"] == []
    assert_matches_spec("/batch", "POST", status, answer)
    [rejected] = answer["rejected"]
    assert rejected["index"] == 37 and rejected["error"]
    assert rejected["id"] == (bad.get("id") if isinstance(bad, dict)
                              and isinstance(bad.get("id"), str) else None)
    assert screen_counts(state_dir) == expected
    assert request(ingest.port, "GET", "/stats")[1]["sdk"]["rejected"] == 1


def test_a_body_unusable_as_a_whole_is_a_4xx_and_writes_nothing(ingest, state_dir):
    for body in (b'{"batch": ', b'{"events": []}', b'{"batch": "x"}', b"[]"):
        status, answer = post(ingest.port, body, path="/batch")
        assert status == 400 and answer["error"]
    assert data1(state_dir) == b""
    assert stored_details(state_dir) == []


def test_minimal_batches_stay_all_or_nothing(ingest, state_dir):
    status, answer = post(ingest.port, {"batch": [{"experienceID": 1}, {"experienceID": "x"}]},
                          path="/batch")
    assert status == 400 and "batch[1]" in answer["error"]
    assert post(ingest.port, {"batch": [{"experienceID": 1}]}, path="/batch") == (
        202, {"accepted": 1})
    assert data1(state_dir) == b"1 "


def test_flagged_clocks_are_kept_as_sent_and_counted_in_stats(ingest, state_dir):
    device = IosDevice()
    late = device.screen(NOW, 1)
    late["timestamp"] = "2199-01-01T00:00:00Z"
    missing = device.screen(NOW, 1)
    del missing["timestamp"]
    good = device.screen(NOW, 1)
    assert post(ingest.port, {"batch": [late, missing, good]}, path="/batch")[0] == 202
    kept = stored_details(state_dir)
    assert [item.get("clock") for item in kept] == ["ahead", "missing", None]
    assert kept[0]["event"]["timestamp"] == "2199-01-01T00:00:00Z"
    received = kept[0]["time"]
    assert abs(received / 1000 - datetime.datetime.now().timestamp()) < 600
    assert request(ingest.port, "GET", "/stats")[1]["sdk"]["clock_flagged"] == 2
    wait_for(lambda: screen_counts(state_dir) == {1: 3})


# --- the fast path takes exactly what the step-by-step checks take

_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**64), st.text(max_size=3),
                    st.sampled_from(["", "x" * 257, "12", "007", "9" * 19, "٣"]),
                    st.just({}), st.just([]))
_events = st.fixed_dictionaries({}, optional={
    "id": _values, "anonymousID": _values, "userID": _values, "context": _values,
    "type": st.sampled_from(["screen", "identify", "register", "track"]) | _values,
    "traits": _values, "timestamp": _values,
    "properties": st.fixed_dictionaries({}, optional={
        "experienceID": _values, "id": _values, "name": _values,
        "experienceName": _values, "experienceRevisionID": _values}) | _values,
})


def _valid_with(changes):
    event = AndroidDevice().screen(NOW, 5) if changes.pop("android") else IosDevice().identify(
        NOW, "u", {"a": 1})
    properties = changes.pop("properties_changes")
    if "properties" in event:
        event["properties"].update(properties)
    event.update(changes)
    return event


_near_valid = st.fixed_dictionaries(
    {"android": st.booleans(),
     "properties_changes": st.dictionaries(st.sampled_from(
         ["experienceID", "id", "name", "experienceName", "experienceRevisionID"]), _values,
         max_size=2)},
    optional={"id": _values, "userID": _values, "type": _values, "context": _values,
              "traits": _values, "timestamp": _values}).map(_valid_with)


# Generation speed is the machine's, not the code's: a busy core must not fail the test.
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow,
                                                   HealthCheck.data_too_large])
@given(_events | _near_valid)
def test_the_fast_path_agrees_with_the_step_by_step_checks(event):
    def outcome(check):
        try:
            parsed = check(event, 1.8e9, 0)
            return (parsed.event_id, parsed.experience_id, parsed.details)
        except validate.Invalid:
            return "invalid"

    assert outcome(validate.sdk_event) == outcome(validate._checked_sdk_event)
