"""worker/tally.py: counting tokens into ids, skipping what is not an id."""

from worker.tally import Tally


def test_tally_counts_valid_and_skips_the_rest():
    tally = Tally()
    tally.add(b"1 100 1 x 01 \x00 ")
    counts = {1: 5}
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts)
    assert counts == {1: 7, 100: 1}
    assert (tally.events, skipped, tally.skipped) == (3, 3, 3)
    assert sorted(samples) == [b"\x00", b"01", b"x"]
    assert minute_rows == hour_rows == []  # nothing was dated
    assert tally.drain_into(counts) == (0, [], [], [])  # drained: nothing counted twice


def test_dated_tokens_are_counted_per_minute_and_in_the_totals():
    tally = Tally()
    tally.add(b"1 2 1 ", minute=60)
    tally.add(b"1 x ", minute=120)
    tally.add(b"2 ", minute=3600)
    counts = {}
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts)
    assert counts == {1: 3, 2: 2} and skipped == 1 and samples == [b"x"]
    assert tally.events == 5
    # (bucket start, experience or -1 for all events, count), in the store's key order
    assert minute_rows == [(60, -1, 3), (60, 1, 2), (60, 2, 1), (120, -1, 1), (120, 1, 1),
                           (3600, -1, 1), (3600, 2, 1)]
    assert hour_rows == [(0, -1, 4), (0, 1, 3), (0, 2, 1), (3600, -1, 1), (3600, 2, 1)]
