"""storage/stream/writer.py's group commit: what may share a publish. The publishing itself,
against real NATS servers, is in test_cluster.py and test_cluster_chaos.py."""

from storage.stream.setup import MAX_MESSAGE_BYTES
from storage.stream.writer import GROUP_BYTES, GROUP_MESSAGES, Group


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
