"""Hostile input never stops counting and never loses what was answered: text UTF-8 cannot
hold (a lone surrogate, half an emoji) is refused per event and named in the 2xx; an event
stored before that rule, which the worker cannot count, is set aside and counted in /stats
while counting goes on; and a write that fails in any unforeseen way releases its dedupe
claims, so the retry is stored. Against a real ingest and worker where it matters."""

import json
import time
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from http_client import post, request, wait_for
from app.validate import parse_batch
from storage.backend import event_key
from storage.log import details
from storage.log.writer import EventLog
from storage.stream import sdk_message
from storage.stream.names import COLUMNS_HEADER
from test_validate import sdk_like_events
from worker.sdk_events import SdkEvents

SURROGATE_FIELDS = ["anonymousID", "userID", "id", "properties.name",
                    "properties.experienceName", "properties.id", "context.locale", "key"]


def screen(event_id, experience, anonymous="device-1", **fields):
    event = {"id": event_id, "anonymousID": anonymous, "type": "screen",
             "timestamp": "2026-12-02T17:00:00Z",
             "properties": {"experienceID": str(experience), "name": "Home"}}
    event.update(fields)
    return event


def poisoned(field):
    """A screen event with a lone surrogate in `field`, as JSON text (json.dumps writes the
    escape \\udc00, as a hostile client would)."""
    event = screen("poison-" + field, 777)
    if field == "key":
        event["properties"]["\udc00"] = "x"
    elif field == "id":
        event["id"] = "\udc00poison"
    elif "." in field:
        outer, inner = field.split(".")
        event.setdefault(outer, {})[inner] = "half \ud83d of an emoji"
    else:
        event[field] = "\udc00"
    return event


@pytest.mark.parametrize("field", SURROGATE_FIELDS)
def test_a_lone_surrogate_anywhere_in_an_sdk_event_refuses_that_event_only(field):
    body = json.dumps({"batch": [poisoned(field), screen("good-1", 501)]}).encode()
    batch = parse_batch(body, 1.8e9)
    assert [event.event_id for event in batch.events] == ["good-1"]
    [(index, named, why)] = batch.rejected
    assert index == 0 and "lone surrogate" in why
    assert named == (None if field == "id" else "poison-" + field)  # never echoed back broken


def test_a_whole_emoji_written_as_an_escaped_pair_is_text():
    body = json.dumps({"batch": [screen("e-1", 5, properties={
        "experienceID": "5", "name": "\U0001F600 party"})]}).encode()
    assert b"\\ud83d\\ude00" in body
    batch = parse_batch(body, 1.8e9)
    assert not batch.rejected and batch.events[0].details["event"]["properties"]["name"] == (
        "\U0001F600 party")


def test_the_poisoned_request_is_answered_and_counting_goes_on(procs, state_dir):
    ingest = procs.ingest(state_dir)
    procs.worker(state_dir)
    status, answer = post(ingest.port, json.dumps({"batch": [
        poisoned("anonymousID"), screen("sur-good-1", 501),
        poisoned("properties.name"), {"id": "sur-x"}]}).encode(), "/batch?apiVersion=2")
    assert status == 202 and answer["stored"] == 1
    assert [entry["index"] for entry in answer["rejected"]] == [0, 2, 3]
    status, answer = post(ingest.port, json.dumps({"batch": [screen("after-1", 502)]}).encode(),
                          "/batch?apiVersion=2")
    assert status == 202 and answer["stored"] == 1
    wait_for(lambda: request(ingest.port, "GET", "/counts")[1]["counts"] == {"501": 1, "502": 1},
             what="both good events counted")
    wait_for(lambda: request(ingest.port, "GET", "/experiences")[1]["experiences"],
             what="the overview to count them")
    status, health = request(ingest.port, "GET", "/healthz")
    assert status == 200, health
    assert request(ingest.port, "GET", "/stats")[1]["overview_set_aside"] == 0


def plant_stored_poison(state_dir):
    """What an ingest without the rule stored: the request's body kept as it came (the
    details' `sent` form), a lone surrogate in an install id and in a screen name."""
    events = [screen("old-1", 601), screen("old-2", 602, anonymous="\udc00"),
              screen("old-3", 603, properties={"experienceID": "603", "name": "\ud83d"})]
    body = json.dumps({"batch": events}).encode()
    log = EventLog(state_dir / "data1", details=state_dir / "data1.details",
                   seen=state_dir / "data1.seen")
    records = b"601 602 603 "
    # In the sent form the items are without their events: those are the body's.
    items = [{"time": 1_795_000_000_000, "offset": index * 4} for index in range(len(events))]
    group = details.encode_group(0, len(records), zlib.crc32(records),
                                 1_795_000_000_000, items, sent=body)
    log._details.append(group)
    log._details.sync()
    log.close()
    with open(state_dir / "data1", "ab") as data1:
        data1.write(records)


def test_stored_lone_surrogates_are_counted_and_stop_nothing(procs, state_dir):
    plant_stored_poison(state_dir)
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir)
    wait_for(lambda: request(ingest.port, "GET", "/counts")[1]["counts"] == {
        "601": 1, "602": 1, "603": 1}, what="data1 counted")
    # Lone surrogates are hashed (install ids) and stored as U+FFFD (names): all three are
    # counted; nothing of them stops the worker.
    wait_for(lambda: sum(item["screen_views"] for item in request(
        ingest.port, "GET", "/experiences")[1]["experiences"]) == 3, what="the overview")
    assert worker.poll() is None
    status, one = request(ingest.port, "GET", "/experiences/603")
    assert status == 200 and one["top_screens"][0]["name"] == "\ufffd"


def test_a_stored_event_of_the_wrong_shape_is_set_aside_named_and_counted_in_stats(
        procs, state_dir):
    """An event no code can count (its time is not a number): the overview leaves it out,
    says so once, counts it in /stats, and counts the others."""
    records = b"701 702 "
    items = [{"event": screen("bad-1", 701), "time": "soon", "offset": 0},
             {"event": screen("ok-1", 702), "time": 1_795_000_000_000, "offset": 4}]
    log = EventLog(state_dir / "data1", details=state_dir / "data1.details",
                   seen=state_dir / "data1.seen")
    log._details.append(details.encode_group(0, len(records),
                                             zlib.crc32(records),
                                             1_795_000_000_000, items))
    log._details.sync()
    log.close()
    with open(state_dir / "data1", "ab") as data1:
        data1.write(records)
    ingest = procs.ingest(state_dir)
    worker = procs.worker(state_dir)
    wait_for(lambda: request(ingest.port, "GET", "/stats")[1]["overview_set_aside"] == 1,
             what="the bad event set aside")
    assert [item["experienceID"] for item in request(
        ingest.port, "GET", "/experiences")[1]["experiences"]] == [702]
    assert worker.poll() is None
    logged = worker.log_path.read_text()
    assert "1 SDK events in data1.details cannot be counted" in logged and "bad-1" in logged


def test_any_failure_of_a_write_releases_its_claims(tmp_path, monkeypatch):
    log = EventLog(tmp_path / "data1", details=tmp_path / "data1.details",
                   seen=tmp_path / "data1.seen")
    events = parse_batch(json.dumps({"batch": [screen("c-1", 1), screen("c-2", 2)]}).encode(),
                         1.8e9).events

    def broken(*args, **kwargs):
        raise RuntimeError("an error nobody foresaw")

    monkeypatch.setattr("storage.log.writer.encode_group", broken)
    with pytest.raises(RuntimeError):
        log.append_events([], events, 1.8e9)
    monkeypatch.undo()
    assert log.append_events([], events, 1.8e9) == [True, True]  # stored, not "duplicates"
    log.close()
    assert (tmp_path / "data1").read_bytes() == b"1 2 "


def test_the_overview_sets_aside_any_malformed_item_and_keeps_the_rest():
    good = {"event": screen("ok", 3), "time": 1_795_000_000_000}
    read = SdkEvents()
    read.read(["text", 5, {"event": "x"}, {"event": screen("no-time", 4)},
               {"event": screen("huge", 5), "time": 10**30}, good])
    assert [view[0] for view in read.views] == [("", 3)]  # (project, experience)
    assert [named for named, _ in read.set_aside] == [None, None, None, "no-time", "huge"]
    assert read.events == 6


def test_the_overview_sets_aside_a_message_whose_payload_does_not_inflate():
    """A cluster message's details are stored deflated (storage/stream/sdk_message.py): one
    that does not inflate whole has its events set aside, and the others are counted. (A
    message without counted columns: one with them is counted from them, its payload not
    inflated.)"""
    batch = parse_batch(json.dumps({"batch": [screen("a", 3), screen("b", 4)]}).encode(),
                        time.time())
    keys = [event_key(event.event_id) for event in batch.events]
    payload, headers = sdk_message.encode_message(batch.events, keys, 1, "", 60)
    del headers[COLUMNS_HEADER]
    good = sdk_message.decode(payload, headers)[1]
    cut = sdk_message.decode(payload[:-4], headers)[1]
    read = SdkEvents()
    read.read_stream([(cut, ()), (good, [1])])  # the second's event 1 a repeat
    assert [view[0] for view in read.views] == [("", 3)]
    assert read.events == 3 and len(read.set_aside) == 1
    assert "a message of 2 events that does not decode: ValueError" in read.set_aside[0][1]


ITEM_TIMES = st.one_of(st.integers(0, 2**41 * 1000), st.just(1_795_000_000_000),
                       st.floats(0, 2e12, allow_nan=False), st.just(10**30), st.text(max_size=3),
                       st.none())


@st.composite
def stored_items(draw):
    """Items as data1.details may hold them: mostly as the ingest writes them, some of any
    shape a store written by other code could hold."""
    event = draw(sdk_like_events())
    item = {"event": event, "time": draw(ITEM_TIMES)}
    for key in draw(st.lists(st.sampled_from(["event", "time", "clock", "offset"]), max_size=1)):
        item.pop(key, None)
    return draw(st.one_of(st.just(item), st.just(item), st.just(item), st.just(item),
                          st.sampled_from(["text", 5, None, {"event": "x"}])))


@settings(max_examples=400, deadline=None)
@given(st.lists(stored_items(), min_size=1, max_size=6), st.booleans(),
       st.sampled_from(["", "shop"]))
def test_the_overview_reads_a_group_the_same_whichever_way(items, sent_whole, project):
    """SdkEvents.read_group (msgspec, the counted fields only) and read_encoded (the same,
    on items each in JSON) against read(group.events()), the step by step way: the same
    views, links, events and events set aside, in the default project and in a named one."""
    named = {"project": project} if project else {}
    if sent_whole and all(type(item) is dict and "event" in item for item in items):
        payload = json.dumps({**named, "sent": {"batch": [item["event"] for item in items]},
                              "items": [{k: v for k, v in item.items() if k != "event"}
                                        for item in items]})
    elif project:
        payload = json.dumps({**named, "items": items})
    else:
        payload = json.dumps(items)
    group = details.Group(0, 0, 0, 0, payload.encode("utf-8", "surrogatepass"), 0)
    fast, checked, one_by_one = SdkEvents(), SdkEvents(), SdkEvents()
    fast.read_group(group)
    assert group.events()[0] == project
    checked.read(group.events()[1], project)
    # As a cluster message's details header carries each: JSON, ASCII only.
    one_by_one.read_encoded([json.dumps({**item, **named} if type(item) is dict else item)
                             for item in group.events()[1]])
    assert (fast.views, fast.links, fast.events, fast.set_aside) == (
        checked.views, checked.links, checked.events, checked.set_aside)
    assert (one_by_one.views, one_by_one.links, one_by_one.events, one_by_one.set_aside) == (
        checked.views, checked.links, checked.events, checked.set_aside)
