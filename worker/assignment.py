"""Which partitions each live worker should count (cluster mode): a fair share, moving as few
partitions as it can.

A pure function of what every worker observes (storage/stream/leases.py), so that all of them,
seeing the same, agree without talking: each then releases what it holds beyond its share
and takes free partitions up to it (worker/stream_runner.py).
"""


def assign(partitions, members, holders):
    """{member: [partitions it should count]} for the live `members`.

    `holders`: {partition: the live member holding its lease, or None if it is free}. Every
    partition goes to exactly one member; the members' shares differ by at most one; and a
    member keeps every partition it holds up to its share, so that only partitions beyond a
    share (or free ones) move. The larger shares go to the members holding the most, so a
    member joining or leaving moves no more partitions than its own share. Within that, the
    choice is by name: every worker computes the same.
    """
    members = sorted(set(members))
    if not members:
        return {}
    base, larger = divmod(len(partitions), len(members))
    held = {member: [p for p in partitions if holders.get(p) == member] for member in members}
    by_holdings = sorted(members, key=lambda member: (-len(held[member]), member))
    share = {member: base + (1 if rank < larger else 0) for rank, member in enumerate(by_holdings)}
    target = {member: held[member][:share[member]] for member in members}
    kept = {p for chosen in target.values() for p in chosen}
    free = [p for p in partitions if p not in kept]
    for member in members:
        while len(target[member]) < share[member]:
            target[member].append(free.pop(0))
    return target
