"""worker/tally.py: counting tokens into ids, skipping what is not an id."""

import collections

from hypothesis import given
from hypothesis import strategies as st

from storage.log.format import parse_token
from storage.views.series_store import ALL
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


TOKENS = [b"0", b"1", b"7", b"42", b"9223372036854775807", b"x", b"01", b"-1"]


@given(st.lists(st.tuples(st.lists(st.sampled_from(TOKENS), max_size=6),
                          st.sampled_from([60, 120, 3540, 3600, 7260])), max_size=12),
       st.dictionaries(st.integers(0, 50), st.integers(1, 5), max_size=3))
def test_drain_matches_a_plain_recount(blocks, counts_before):
    tally = Tally()
    for tokens, minute in blocks:
        tally.add(b"".join(token + b" " for token in tokens), minute)
    counts = dict(counts_before)
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts)
    # The reference: every token by hand, in the simplest way.
    expected, minutes, hours, bad = collections.Counter(counts_before), {}, {}, 0
    for tokens, minute in blocks:
        for token in tokens:
            experience_id = parse_token(token)
            if experience_id is None:
                bad += 1
                continue
            expected[experience_id] += 1
            for rows, bucket in ((minutes, minute), (hours, minute - minute % 3600)):
                for key in ((bucket, ALL), (bucket, experience_id)):
                    rows[key] = rows.get(key, 0) + 1
    assert counts == dict(expected) and skipped == bad == tally.skipped
    assert minute_rows == sorted((*key, n) for key, n in minutes.items())
    assert hour_rows == sorted((*key, n) for key, n in hours.items())
    assert all(parse_token(sample) is None for sample in samples)
