"""storage/stream/writer.py's group commit: what may share a publish, and what each append
is told, against a stand-in for the stream. Against real NATS servers: test_cluster.py and
test_cluster_chaos.py."""

import asyncio
import json
import threading
import time
import types

import nats.errors

from app import validate
from http_client import wait_for
from storage.backend import AppendError, event_keys
from storage.stream import sdk_message
from storage.stream.setup import MAX_MESSAGE_BYTES
from storage.stream.writer import GROUP_BYTES, GROUP_MESSAGES, Group, StreamLog


def message(message_id, size=100):
    return (b"x" * size, {"Nats-Msg-Id": message_id}, "mini_analytics.events.0")


def test_minimal_records_share_one_message_up_to_the_stream_s_message_size():
    group = Group()
    assert group.fits(b"r" * MAX_MESSAGE_BYTES, ())
    group.add(b"r" * (MAX_MESSAGE_BYTES - 10), ())
    assert group.fits(b"r" * 10, ()) and not group.fits(b"r" * 11, ())
    # SDK messages go beside the records' message, whatever its size.
    assert group.fits(b"", [message("a")])


def test_requests_share_a_batch_up_to_its_bounds_and_a_request_is_never_split():
    group = Group()
    many = [message(f"m{number}") for number in range(GROUP_MESSAGES + 5)]
    assert group.fits(b"", many)  # a request alone: its messages always go together
    assert group.add(b"", many) == 0
    assert not group.fits(b"", [message("another")])
    assert group.fits(b"r", ())  # the minimal records still join

    group = Group()
    assert group.add(b"", [message("a"), message("b")]) == 0
    assert group.add(b"", [message("c")]) == 2
    assert group.fits(b"", [message(f"n{number}") for number in range(GROUP_MESSAGES - 3)])
    assert not group.fits(b"", [message(f"n{number}") for number in range(GROUP_MESSAGES - 2)])

    group = Group()
    group.add(b"", [message("big", GROUP_BYTES - 100)])
    assert group.fits(b"", [message("small", 100)])
    assert not group.fits(b"", [message("small", 101)])


def test_two_messages_with_the_same_id_never_share_a_batch():
    """The same request sent twice at once: the stream must see the second as a repeat of a
    message it holds, which it answers as a duplicate, not inside one batch."""
    group = Group()
    group.add(b"", [message("a"), message("b")])
    assert not group.fits(b"", [message("b")])
    assert not group.fits(b"", [message("c"), message("a")])
    assert group.fits(b"", [message("c")])


# --- StreamLog's group commit against a stand-in for the stream: what each append is told.

class FakeStream:
    """What StreamLog uses of nats-py's client (`nc`) and JetStream context (`js`), holding
    messages by id as a stream's duplicate window does. An id in `failing` is never
    acknowledged; atomic batches are refused unless `batches` (then each is stored whole)."""

    def __init__(self, failing=(), batches=False):
        self.failing, self.batches = set(failing), batches
        self.stored, self.publishes, self.committed = [], 0, []
        self._batch = []

    def _store(self, headers):
        message_id = headers["Nats-Msg-Id"]
        duplicate = message_id in self.stored
        if not duplicate:
            self.stored.append(message_id)
        return duplicate

    async def publish(self, subject, payload, timeout=None, stream=None, headers=None):
        if stream is None:  # nc.publish: a batch's middle message
            self._batch.append(headers)
            return None
        self.publishes += 1
        if headers["Nats-Msg-Id"] in self.failing:
            raise nats.errors.TimeoutError
        return types.SimpleNamespace(duplicate=self._store(headers))

    async def request(self, subject, payload, timeout=None, headers=None):
        if not self.batches:
            return types.SimpleNamespace(data=b'{"error": {"description": "refused"}}')
        self._batch.append(headers)
        if "Nats-Batch-Commit" not in headers:
            return types.SimpleNamespace(data=b"")
        batch, self._batch = self._batch, []
        self.committed.append([headers["Nats-Msg-Id"] for headers in batch])
        for headers in batch:
            self._store(headers)
        return types.SimpleNamespace(data=json.dumps({"count": len(batch)}).encode())


class FakeLink:
    def __init__(self, stream):
        self.nc = self.js = stream
        self.connected = True
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def sdk_events(install, count=3):
    body = json.dumps({"batch": [
        {"id": f"{install}-{number}", "timestamp": "2026-12-01T10:00:00Z",
         "anonymousID": install, "type": "screen",
         "properties": {"id": "s", "name": "S", "experienceID": "7"}}
        for number in range(count)]}).encode()
    return validate.parse_batch(body, time.time()).events, body


def message_id_of(events):
    """The id of the message that holds `events` alone (storage/stream/sdk_message.py)."""
    return sdk_message.message_id(event_keys([event.event_id for event in events]))


def appends_in_one_group(stream, appends):
    """Run `appends` (callables taking a StreamLog) each in a thread of its own, all joining
    one group (the link's loop is held until all have joined); each one's result or error."""
    link = FakeLink(stream)
    log = StreamLog(link, ["0", "1"], timeout=0.5, dedupe_window=86400)
    hold = threading.Event()
    link.loop.call_soon_threadsafe(hold.wait)
    results = [None] * len(appends)

    def run(index):
        try:
            results[index] = appends[index](log)
        except AppendError as error:
            results[index] = error

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(appends))]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(log._waiting) == 1 and len(log._waiting[0].waiters) == len(appends),
                 10, what="every append in one group")
        hold.set()
        for thread in threads:
            thread.join(10)
    finally:
        hold.set()
        link.close()
    return results


def test_concurrent_appends_go_out_as_one_batch_and_each_is_told_its_own_outcome():
    stream = FakeStream(batches=True)
    first, first_body = sdk_events("install-a")
    second, second_body = sdk_events("install-b")
    results = appends_in_one_group(stream, [
        lambda log: log.append_events([], first, time.time(), first_body),
        lambda log: log.append_events([], second, time.time(), second_body),
        lambda log: log.append(b"7 ")])
    assert results == [[True] * 3, [True] * 3, None]
    assert len(stream.committed) == 1 and len(stream.committed[0]) == 3
    assert stream.publishes == 0


def test_a_batch_refused_goes_one_by_one_and_a_failure_is_only_its_own_append_s():
    """A message never acknowledged fails its own append only: the other appends of its group,
    whose messages the stream stored or held already, are answered as such."""
    held, held_body = sdk_events("install-held")
    lost, lost_body = sdk_events("install-lost")
    fresh, fresh_body = sdk_events("install-fresh")
    stream = FakeStream(failing={message_id_of(lost)})
    stream.stored.append(message_id_of(held))  # the message an exact retry makes again
    results = appends_in_one_group(stream, [
        lambda log: log.append_events([], held, time.time(), held_body),
        lambda log: log.append_events([], lost, time.time(), lost_body),
        lambda log: log.append_events([], fresh, time.time(), fresh_body),
        lambda log: log.append(b"7 ")])
    assert results[0] == [False] * 3  # answered as duplicates
    assert isinstance(results[1], AppendError)
    assert results[2] == [True] * 3 and results[3] is None
    assert message_id_of(fresh) in stream.stored
