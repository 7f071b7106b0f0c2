"""worker/assignment.py: every partition to one live worker, fair shares, and as few moves as
the shares allow, whatever the workers hold now; a worker over its share keeps what it has
held longest."""

from hypothesis import given, strategies as st

from worker.assignment import assign

PARTITIONS = [f"p{n}" for n in range(1, 13)]


@st.composite
def situations(draw):
    """Some partitions, the live members, and who holds what now (a holder may be a member
    that is gone: its leases lapsed, so those partitions are free)."""
    partitions = PARTITIONS[:draw(st.integers(1, len(PARTITIONS)))]
    members = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=8, unique=True))
    holders = {p: draw(st.sampled_from(members + ["gone", None])) for p in partitions}
    return partitions, members, holders


@given(situations())
def test_every_partition_goes_to_exactly_one_live_member_in_fair_shares(situation):
    partitions, members, holders = situation
    target = assign(partitions, members, holders)
    assert set(target) == set(members)
    given_out = [p for chosen in target.values() for p in chosen]
    assert sorted(given_out) == sorted(partitions)  # each once
    sizes = [len(chosen) for chosen in target.values()]
    assert max(sizes) - min(sizes) <= 1


@given(situations())
def test_only_partitions_beyond_a_share_move(situation):
    """A member keeps what it holds up to its share; and the larger shares go to those
    holding the most, so the moves are the fewest the fair shares allow."""
    partitions, members, holders = situation
    target = assign(partitions, members, holders)
    held = {m: {p for p in partitions if holders[p] == m} for m in members}
    for member in members:
        kept = held[member] & set(target[member])
        assert len(kept) == min(len(held[member]), len(target[member]))
    moved = sum(len(held[m] - set(target[m])) for m in members)
    base, larger = divmod(len(partitions), len(members))
    shares = sorted((base + 1,) * larger + (base,) * (len(members) - larger), reverse=True)
    holdings = sorted((len(held[m]) for m in members), reverse=True)
    assert moved == sum(max(0, h - s) for h, s in zip(holdings, shares))


@given(situations())
def test_every_worker_computes_the_same(situation):
    partitions, members, holders = situation
    assert assign(partitions, members, holders) == assign(
        partitions, list(reversed(members)), dict(reversed(list(holders.items()))))


@given(situations(), st.data())
def test_a_member_over_its_share_keeps_what_it_has_held_longest(situation, data):
    partitions, members, holders = situation
    since = {p: f"2026-12-06T00:{data.draw(st.integers(0, 59)):02d}:00.000Z"
             for p in partitions}
    target = assign(partitions, members, holders, since)
    assert target == assign(partitions, list(reversed(members)),
                            dict(reversed(list(holders.items()))), since)
    for member in members:
        held = [p for p in partitions if holders[p] == member]
        kept = [p for p in held if p in target[member]]
        given_up = [p for p in held if p not in target[member]]
        if kept and given_up:  # none it keeps was taken after one it gives up
            assert max(since[p] for p in kept) <= min(since[p] for p in given_up)


def test_a_worker_joining_takes_its_share_from_the_others():
    holders = {"p1": "a", "p2": "a", "p3": "a", "p4": "b", "p5": "b", "p6": "b"}
    target = assign(list(holders), ["a", "b", "c"], holders)
    assert target == {"a": ["p1", "p2"], "b": ["p4", "p5"], "c": ["p3", "p6"]}


def test_a_worker_leaving_spreads_its_partitions_over_the_rest():
    holders = {"p1": "a", "p2": "b", "p3": "c", "p4": "a", "p5": "b", "p6": "c"}
    target = assign(list(holders), ["a", "b"], holders)  # c is gone
    assert target == {"a": ["p1", "p4", "p3"], "b": ["p2", "p5", "p6"]}


def test_a_worker_back_after_its_leases_lapsed_gets_back_what_it_counted_before():
    """b counted p2 and p4 and was away past the take-over time: a took them. Back, b gets
    them again, whose views it still has, rather than p1 and p3, which a counted all along."""
    holders = {p: "a" for p in ("p1", "p2", "p3", "p4")}
    since = {"p1": "2026-12-06T00:00:00.000Z", "p3": "2026-12-06T00:00:00.000Z",
             "p2": "2026-12-06T01:00:00.000Z", "p4": "2026-12-06T01:00:00.000Z"}
    assert assign(list(holders), ["a", "b"], holders, since) == {"a": ["p1", "p3"],
                                                                 "b": ["p2", "p4"]}
    # Without the times, by name: a would give up p3 and p4.
    assert assign(list(holders), ["a", "b"], holders)["b"] == ["p3", "p4"]


def test_no_live_member_means_no_assignment():
    assert assign(PARTITIONS, [], {}) == {}
