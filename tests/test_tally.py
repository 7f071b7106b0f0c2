"""worker/tally.py: counting tokens into ids, skipping what is not an id."""

from worker.tally import Tally


def test_tally_counts_valid_and_skips_the_rest():
    tally = Tally()
    tally.add(b"1 100 1 x 01 \x00 ")
    counts = {1: 5}
    skipped, samples = tally.drain_into(counts)
    assert counts == {1: 7, 100: 1}
    assert (tally.events, skipped, tally.skipped) == (3, 3, 3)
    assert sorted(samples) == [b"\x00", b"01", b"x"]
    assert tally.drain_into(counts) == (0, [])  # drained: nothing counted twice
