"""The dedupe at the partition (storage/views/seen_store.py): its rule, as the store applies it
across commits, crashes, reopenings and views that read again from behind, equals a plain
reference of the rule over the whole stream. And an SDK message's format
(storage/stream/sdk_message.py) reads back what was written."""

import base64
import datetime
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import validate
from app.validate import SdkEvent
from bench.sdk_shapes import mixed_batch
from storage import sorted_runs
from storage.backend import event_key
from storage.bloom import key_columns
from storage.layout import Layout
from storage.log import details
from storage.log.details import payload_events
from storage.stream import sdk_message
from storage.views import seen_store
from storage.views.seen_store import PERIOD_MS, SLACK_MS, SeenStore

KEYS = [bytes([n]) * 16 for n in range(6)]


def reference(stream):
    """Which events of each message repeat an earlier one, by the rule read plainly: every
    earlier occurrence of the key, stored within the message's window before it, or the key
    earlier in the same message."""
    answers = []
    for index, (_, stored_ms, part) in enumerate(stream):
        repeats = []
        for item, key in enumerate(part.keys):
            if not part.window:
                continue
            earlier = [ms for _, ms, other in stream[:index] if key in other.keys]
            if key in part.keys[:item] or any(ms >= stored_ms - part.window * 1000
                                               for ms in earlier):
                repeats.append(item)
        answers.append(repeats)
    return answers


def part(keys, window):
    return sdk_message.SdkPart(list(keys), [b"1"] * len(keys), window, b"[]")


messages = st.lists(st.tuples(
    st.lists(st.sampled_from(KEYS), min_size=1, max_size=4),
    st.integers(-2, 3),  # seconds since the message before (the clock may step back)
    st.sampled_from([0, 2, 5, 60]),  # the window
    st.booleans(),  # whether the worker commits after it
    st.sampled_from(["", "", "", "crash", "reread"]),  # what befalls it after
    st.integers(0, 4),  # messages from it on looked ahead before it is decided, as a fetch
), min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(messages=messages)
def test_the_store_finds_the_reference_s_repeats_whatever_befalls_it(tmp_path_factory,
                                                                      messages):
    path = tmp_path_factory.mktemp("seen") / "seen-p1.sqlite3"
    stream, ms, sequence = [], 1_000_000, 0
    for keys, gap, window, _, _, _ in messages:
        ms += gap * 1000
        sequence += 1 + len(keys) % 2  # sequences of other partitions come between
        stream.append((sequence, ms, part(keys, window)))
    expected = reference(stream)

    store = SeenStore(Layout(path.parent), path)
    store.open("stream-1")
    found, crashed = {}, set()
    index = 0
    while index < len(stream):
        sequence, stored_ms, message = stream[index]
        _, _, _, commit, befalls, ahead = messages[index]
        # The filter asked early, about a fetch (SeenStore.look_ahead): the same answers.
        store.look_ahead((s, m) for s, _, m in stream[index:index + ahead])
        answer = store.repeats_in(sequence, stored_ms, message)
        assert found.setdefault(sequence, answer) == answer, "a decision changed"
        assert answer == expected[index], (index, stream)
        if commit:
            store.commit(sequence)
        if befalls == "crash" and index not in crashed:
            # What was not committed is lost: decided again, the same way.
            crashed.add(index)
            store.close()
            store = SeenStore(Layout(path.parent), path)
            store.open("stream-1")
            index = next((i for i, (s, _, _) in enumerate(stream) if s > store.position),
                         len(stream))
            continue
        if befalls == "reread":  # a view behind asks again about every message so far
            for again in range(index + 1):
                s, t, m = stream[again]
                assert store.repeats_in(s, t, m) == expected[again]
        index += 1
    store.commit(stream[-1][0])
    store.close()


def held_keys(store):
    """Every key the store's runs hold, each once."""
    return {hi.to_bytes(8, "little") + lo.to_bytes(8, "little") for run in store._runs
            for hi, lo in zip(*(column.tolist() for column in
                                store._read_blocks(run, 0, len(run.fence))[:2]))}


def test_periods_older_than_the_widest_window_and_the_slack_are_dropped(tmp_path):
    store = SeenStore(Layout(tmp_path), tmp_path / "seen-p1.sqlite3")
    store.open("s")
    store.repeats_in(1, 0, part([KEYS[0]], 60))
    store.commit(1)
    # Still within the slack of the same period: kept.
    store.repeats_in(2, 60_000 + SLACK_MS + 1, part([KEYS[1]], 60))
    store.commit(2)
    assert held_keys(store) == {KEYS[0], KEYS[1]}
    # Once the whole of its period is older than the window and the slack: gone, run and all.
    late = PERIOD_MS + 60_000 + SLACK_MS
    assert store.repeats_in(3, late, part([KEYS[2]], 60)) == []
    store.commit(3)
    assert held_keys(store) == {KEYS[2]}
    assert store.db.execute("SELECT count(*) FROM run_block").fetchone() == (1,)
    # Within the window of the message it repeats, it is found even after a gap in time.
    assert store.repeats_in(4, late + 59_000, part([KEYS[2]], 60)) == [0]
    store.close()


def test_runs_merge_and_a_reopened_store_finds_what_they_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(sorted_runs, "SMALL_RUN", 2)
    monkeypatch.setattr(seen_store, "BLOCK", 3)  # a run of several blocks
    monkeypatch.setattr(sorted_runs, "SLICE_KEYS", 4)  # merged a few blocks at a time
    path = tmp_path / "seen-p1.sqlite3"
    store = SeenStore(Layout(tmp_path), path)
    store.open("s")
    keys = [bytes([n, 7]) * 8 for n in range(40)]
    for sequence in range(1, 21):  # twenty commits of two new keys each
        assert store.repeats_in(sequence, 1000 * sequence,
                                part(keys[2 * sequence - 2:2 * sequence], 3600)) == []
        store.commit(sequence)
    assert len(store._runs) < 20  # merged, FANOUT at a time
    assert held_keys(store) == set(keys)
    store.close()
    again = SeenStore(Layout(tmp_path), path)
    assert again.open("s") is None
    assert again.repeats_in(21, 30_000, part([keys[5], bytes(16), keys[39]], 3600)) == [0, 2]
    again.close()


def test_a_filter_built_again_larger_still_holds_every_key(tmp_path, monkeypatch):
    """A full filter is built again from the runs, a few blocks at a time: a key it lost
    would be answered "never seen", and its retry counted twice."""
    monkeypatch.setattr(seen_store, "MIN_CAPACITY", 8)
    monkeypatch.setattr(seen_store, "BLOCK", 3)
    monkeypatch.setattr(seen_store, "GROW_BLOCKS", 2)  # a run given in several chunks
    store = SeenStore(Layout(tmp_path), tmp_path / "seen-p1.sqlite3")
    store.open("s")
    keys = [bytes([n, 9]) * 8 for n in range(60)]
    capacities = set()
    for sequence in range(1, 13):  # twelve commits of five new keys each
        new = keys[5 * sequence - 5:5 * sequence]
        assert store.repeats_in(sequence, 1000 * sequence, part(new, 3600)) == []
        store.commit(sequence)
        capacities.add(store._bloom.capacity)
    assert len(capacities) >= 3  # grown more than once
    assert store._bloom.may_hold(key_columns(b"".join(keys))).all()
    assert store.repeats_in(13, 20_000, part(keys[::7], 3600)) == list(range(len(keys[::7])))
    store.close()


def test_a_store_of_another_stream_or_unreadable_is_set_aside_and_begun_again(tmp_path):
    path = tmp_path / "seen-p1.sqlite3"
    store = SeenStore(Layout(tmp_path), path)
    store.open("stream-1")
    store.repeats_in(5, 1000, part([KEYS[0]], 60))
    store.commit(5)
    store.close()
    assert "stream-2" in SeenStore(Layout(tmp_path), path).open("stream-2")
    again = SeenStore(Layout(tmp_path), path)
    assert again.open("stream-2") is None and again.position == 0
    again.close()
    path.write_bytes(b"not a database at all" * 100)
    broken = SeenStore(Layout(tmp_path), path)
    assert "not a readable store" in broken.open("stream-2")
    assert broken.position == 0
    broken.close()
    assert len(list(tmp_path.glob("seen-p1.sqlite3.bad-*"))) == 2


def test_a_store_whose_runs_are_not_whole_is_set_aside_and_begun_again(tmp_path):
    path = tmp_path / "seen-p1.sqlite3"
    store = SeenStore(Layout(tmp_path), path)
    store.open("s")
    store.repeats_in(3, 1000, part([KEYS[0], KEYS[1]], 60))
    store.commit(3)
    store.db.execute("UPDATE run SET keys = keys + 1")
    store.close()
    again = SeenStore(Layout(tmp_path), path)
    assert "holds 2 keys, not the 3 it says" in again.open("s")
    assert again.position == 0 and not again._runs
    again.close()
    assert len(list(tmp_path.glob("seen-p1.sqlite3.bad-*"))) == 1


def test_in_memory_without_a_folder(tmp_path):
    store = SeenStore(None, None)
    assert store.open("s") is None
    assert store.repeats_in(1, 0, part([KEYS[0], KEYS[0]], 60)) == [1]
    store.commit(1)
    assert store.repeats_in(1, 0, part([KEYS[0], KEYS[0]], 60)) == [1]
    store.close()
    assert not list(tmp_path.iterdir())


def sdk_event(index, event_id, experience=None, kind="screen", anonymous="device-1"):
    event = {"id": event_id, "anonymousID": anonymous, "type": kind,
             "timestamp": "2026-12-01T10:00:00Z"}
    if experience is not None:
        event["properties"] = {"experienceID": str(experience)}
    screen = (None, None, None, None) if kind == "screen" else None
    return SdkEvent(index, event_id, kind, anonymous, experience, {"time": 1764583200000},
                    None, screen, event)


def older_format(event, received_ms, project):
    """(payload, headers) of one SDK event as the stream kept it before a message held a
    request's events: its record, and its details item in a header."""
    payload = f"{project}:{event.experience_id} ".encode() if event.experience_id else b""
    details = json.dumps({"received": received_ms, "project": project, **event.details},
                         separators=(",", ":"))
    return payload, {"Nats-Msg-Id": f"sdk-{event_key(event.event_id, project).hex()}",
                     "Mini-Analytics-Details": details}


def test_an_sdk_message_reads_back_as_written():
    events = [sdk_event(0, "a", 7), sdk_event(1, "b", kind="identify"), sdk_event(2, "c", 9)]
    keys = [event_key(event.event_id, "shop") for event in events]
    payload, headers = sdk_message.encode_message(events, keys, 1764583201234, "shop", 86400)
    records, read = sdk_message.decode(payload, headers)
    assert records == b"" and read.keys == keys and read.window == 86400
    assert read.records() == b"shop:7 shop:9 " and read.records([0]) == b"shop:9 "
    assert headers["Nats-Msg-Id"] == sdk_message.message_id(keys)
    assert payload_events(read.details()) == ("shop", [event.details for event in events])
    # An exact retry is the same message; one more event makes another.
    assert sdk_message.encode_message(events, keys, 1, "shop", 60)[1]["Nats-Msg-Id"] == (
        headers["Nats-Msg-Id"])
    assert sdk_message.message_id(keys[:2]) != headers["Nats-Msg-Id"]
    # The older format: one event a message, its key read from its details.
    old_payload, old_headers = older_format(events[0], 1764583201234, "shop")
    records, old = sdk_message.decode(old_payload, old_headers)
    assert old.keys == [keys[0]] and old.window == 0 and old.records() == b"shop:7 "
    # Minimal events: records, no SDK part.
    assert sdk_message.decode(b"1 2 ", None) == (b"1 2 ", None)


def test_a_message_whose_keys_and_ids_disagree_is_refused():
    headers = {"Mini-Analytics-Keys": base64.b64encode(KEYS[0] * 2).decode(),
               "Mini-Analytics-Ids": "7", "Mini-Analytics-Window": "60"}
    try:
        sdk_message.decode(b"[]", headers)
    except ValueError as error:
        assert "32 bytes of keys for 1 ids" in str(error)
    else:
        raise AssertionError("decoded a message that breaks the format")


def test_a_message_s_payload_is_stored_deflated_and_read_back_whole():
    sent, _ = mixed_batch(datetime.datetime.now(datetime.timezone.utc), 50)
    batch = validate.parse_batch(json.dumps({"batch": sent}).encode(), time.time())
    keys = [event_key(event.event_id) for event in batch.events]
    payload, headers = sdk_message.encode_message(batch.events, keys, 1, "", 60)
    plain = details.encode_payload([event.item for event in batch.events],
                                   events=[event.event_json for event in batch.events])
    assert headers["Mini-Analytics-Encoding"] == "zlib"
    assert len(payload) * 4 < len(plain)  # an install's batch repeats its fields
    _, part = sdk_message.decode(payload, headers)
    assert part.details() == plain and part.keys == keys
    # A message written before payloads were deflated: no such header, read as it is.
    older = {name: value for name, value in headers.items()
             if name != "Mini-Analytics-Encoding"}
    assert sdk_message.decode(plain, older)[1].details() == plain


def test_a_payload_that_does_not_inflate_whole_is_refused(monkeypatch):
    events = [sdk_event(0, "a", 7)]
    payload, headers = sdk_message.encode_message(events, [KEYS[0]], 1, "", 60)
    for flawed in (payload[:-3], b"not deflated", payload + b"more", payload + payload):
        with pytest.raises(ValueError):
            sdk_message.decode(flawed, headers)[1].details()
    monkeypatch.setattr(sdk_message, "MAX_GROUP", 10)  # it inflates to more than this
    with pytest.raises(ValueError, match="inflates past 10 bytes"):
        sdk_message.decode(payload, headers)[1].details()
    with pytest.raises(ValueError, match="a payload encoded as 'zstd'"):
        sdk_message.decode(payload, {**headers, "Mini-Analytics-Encoding": "zstd"})


def test_a_message_keeps_each_event_as_the_body_held_it():
    sent, _ = mixed_batch(datetime.datetime.now(datetime.timezone.utc), 30)
    body = json.dumps({"batch": sent}, ensure_ascii=False).encode()
    batch = validate.parse_batch(body, time.time())
    assert not batch.rejected and len(batch.events) == 30
    keys = [event_key(event.event_id) for event in batch.events]
    payload, headers = sdk_message.encode_message(batch.events, keys, 1, "", 60)
    project, items = payload_events(sdk_message.decode(payload, headers)[1].details())
    assert project == "" and [item["event"] for item in items] == sent
    assert [{k: v for k, v in item.items() if k != "event"} for item in items] == [
        event.item for event in batch.events]
