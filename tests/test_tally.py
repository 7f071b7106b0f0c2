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
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts, {})
    assert counts == {1: 7, 100: 1}
    assert (tally.events, skipped, tally.skipped) == (3, 3, 3)
    assert sorted(samples) == [b"\x00", b"01", b"x"]
    assert minute_rows == hour_rows == []  # nothing was dated
    assert tally.drain_into(counts, {}) == (0, [], [], [])  # drained: nothing counted twice


def test_dated_tokens_are_counted_per_minute_and_in_the_totals():
    tally = Tally()
    tally.add(b"1 2 1 ", minute=60)
    tally.add(b"1 x ", minute=120)
    tally.add(b"2 ", minute=3600)
    counts = {}
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts, {})
    assert counts == {1: 3, 2: 2} and skipped == 1 and samples == [b"x"]
    assert tally.events == 5
    # (bucket start, experience or -1 for all events, count), in the store's key order
    assert minute_rows == [(60, -1, 3), (60, 1, 2), (60, 2, 1), (120, -1, 1), (120, 1, 1),
                           (3600, -1, 1), (3600, 2, 1)]
    assert hour_rows == [(0, -1, 4), (0, 1, 3), (0, 2, 1), (3600, -1, 1), (3600, 2, 1)]


TOKENS = [b"0", b"1", b"7", b"42", b"9223372036854775807", b"x", b"01", b"-1"]
PROJECT_TOKENS = [b"shop:1", b"shop:42", b"a-b_2:7", b"Shop:1", b"shop:01", b":1", b"shop:"]


def test_a_named_project_s_tokens_are_counted_apart_with_rows_of_their_own():
    tally = Tally()
    tally.add(b"1 shop:1 shop:1 a:7 Shop:1 shop:x ", minute=60)
    counts, projects = {1: 1}, {"shop": {1: 5}}
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts, projects)
    assert counts == {1: 2} and projects == {"shop": {1: 7}, "a": {7: 1}}
    assert skipped == 2 and sorted(samples) == [b"Shop:1", b"shop:x"]
    # Each project's ALL first, the default's as before, then each project's ids.
    assert minute_rows == [(60, -1, 1), (60, ("a", -1), 1), (60, ("shop", -1), 2),
                           (60, 1, 1), (60, ("a", 7), 1), (60, ("shop", 1), 2)]
    assert hour_rows == [(0, *row[1:]) for row in minute_rows]


@given(st.lists(st.tuples(st.lists(st.sampled_from(TOKENS + PROJECT_TOKENS), max_size=6),
                          st.sampled_from([60, 120, 3540, 3600, 7260])), max_size=12),
       st.dictionaries(st.integers(0, 50), st.integers(1, 5), max_size=3))
def test_drain_matches_a_plain_recount(blocks, counts_before):
    tally = Tally()
    for tokens, minute in blocks:
        tally.add(b"".join(token + b" " for token in tokens), minute)
    counts, projects = dict(counts_before), {}
    skipped, samples, minute_rows, hour_rows = tally.drain_into(counts, projects)
    # The reference: every token by hand, in the simplest way.
    expected, minutes, hours, bad = collections.Counter(counts_before), {}, {}, 0
    expected_projects = collections.defaultdict(collections.Counter)
    for tokens, minute in blocks:
        for token in tokens:
            project, _, bare = token.rpartition(b":")
            experience_id = parse_token(bare)
            if experience_id is None or (b":" in token and project not in (b"shop", b"a-b_2")):
                bad += 1
                continue
            project = project.decode()
            (expected_projects[project] if project else expected)[experience_id] += 1
            for rows, bucket in ((minutes, minute), (hours, minute - minute % 3600)):
                for key in ((project, ALL), (project, experience_id)):
                    rows[bucket, key] = rows.get((bucket, key), 0) + 1
    assert counts == dict(expected) and skipped == bad == tally.skipped
    assert projects == {project: dict(c) for project, c in expected_projects.items()}

    def in_order(rows):
        # By bucket; in each, the ALLs (the default's first), then the ids.
        return sorted(((bucket, key[1] != ALL, key, n) for (bucket, key), n in rows.items()),
                      key=lambda row: (row[0], row[1], row[2]))

    def as_tally_gives(rows):
        return [(bucket, key[1] if not key[0] else key, n) for bucket, _, key, n in rows]

    assert minute_rows == as_tally_gives(in_order(minutes))
    assert hour_rows == as_tally_gives(in_order(hours))
    assert all(parse_token(sample.rpartition(b":")[2]) is None or b":" in sample
               for sample in samples)
