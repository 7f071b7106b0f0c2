"""Which partitions each live worker should count (cluster mode): a fair share, moving as few
partitions as it can.

A pure function of what every worker observes (storage/stream/leases.py), so that all of them,
seeing the same, agree without talking: each then releases what it holds beyond its share
and takes free partitions up to it (worker/stream_runner.py).
"""


def assign(partitions, members, holders, since=None):
    """{member: [partitions it should count]} for the live `members`.

    `holders`: {partition: the live member holding its lease, or None if it is free}. Every
    partition goes to exactly one member; the members' shares differ by at most one; and a
    member keeps every partition it holds up to its share, so that only partitions beyond a
    share (or free ones) move. The larger shares go to the members holding the most, so a
    member joining or leaving moves no more partitions than its own share. Within that, the
    choice is by how long held, then by name: every worker computes the same.

    `since`: {partition: when its holder took its lease (ISO 8601, UTC, as the holder's own
    clock wrote it: only one member's times are compared with each other)}. A member
    holding more than its share keeps those it has held longest and gives up the newest:
    after a worker was away long enough for its leases to lapse, the partitions it comes
    back to are those it counted before, whose views it still has, rather than partitions
    the others have counted all along, which would then be counted again from their first
    message.
    """
    members = sorted(set(members))
    if not members:
        return {}
    since = since or {}
    base, larger = divmod(len(partitions), len(members))
    held = {member: sorted((p for p in partitions if holders.get(p) == member),
                           key=lambda p: str(since.get(p) or ""))
            for member in members}
    by_holdings = sorted(members, key=lambda member: (-len(held[member]), member))
    share = {member: base + (1 if rank < larger else 0) for rank, member in enumerate(by_holdings)}
    target = {member: held[member][:share[member]] for member in members}
    kept = {p for chosen in target.values() for p in chosen}
    free = [p for p in partitions if p not in kept]
    for member in members:
        while len(target[member]) < share[member]:
            target[member].append(free.pop(0))
    return target
