"""Which of the stream's partitions a worker counts (cluster mode): its share among the live
workers (worker/assignment.py), held by leases in the bucket (storage/stream/leases.py).

Every takeover/RENEWALS_PER_TAKEOVER seconds the worker renews its leases, during long reads
too; and as often, between passes and while it waits, it upkeeps them: it releases what it
holds beyond its share and takes free partitions up to it. Each keeps a time of its own: a
worker catching up reads without a pause, renewing as it reads, and its upkeep between two
passes must still come when due, or it would keep every partition it took while it was alone
and leave a worker that started after it idle. A lease found taken over (the worker was
paused or cut off) is dropped between passes; the checkpoint's compare-and-set keeps the
counts exact whichever worker commits, and a lease only decides who should.
"""

import logging
import time

from storage.stream.checkpoint_store import Fenced
from storage.stream.link import UNAVAILABLE
from worker.assignment import assign

log = logging.getLogger("worker")

# A worker renews its leases this many times per take-over time: a few renewals may be late
# (a slow disk, a busy core, a leader election) before the others call its leases lapsed.
RENEWALS_PER_TAKEOVER = 5


class Shares:
    def __init__(self, leases, all_partitions, counting):
        """`leases`: this worker's (storage/stream/leases.Leases); `counting`: the worker,
        whose adopt(name, how) starts counting a partition, drop(name, why, level) stops,
        and `partitions` holds those it counts."""
        self.leases = leases
        self.all_partitions = list(all_partitions)
        self.counting = counting
        self._next_upkeep = 0.0
        self._next_renewal = 0.0
        self._looked = False  # whether upkeep() has looked at the others once
        self._lost = set()  # partitions whose lease was found taken over, to drop

    def seconds_to_upkeep(self):
        return self._next_upkeep - time.monotonic()

    def upkeep(self):
        """Renew this worker's leases; then release what it holds beyond its share of the
        partitions and take free ones up to it. Every takeover/RENEWALS_PER_TAKEOVER
        seconds, whenever the last renewal was; a cluster that does not answer is tried
        again then."""
        now = time.monotonic()
        if now < self._next_upkeep:
            return
        self._next_upkeep = now + self.leases.takeover / RENEWALS_PER_TAKEOVER
        # Renewed now, however recently a read renewed: the others' keys are judged lapsed
        # only while this worker's own renewals succeed on time (Leases.observe).
        self._next_renewal = 0.0
        if not self.renew():
            return
        self.drop_lost()
        try:
            view = self.leases.observe(self.all_partitions)
        except UNAVAILABLE as error:
            self._unanswered(error, self._next_upkeep)
            return
        me = self.leases.member
        share = assign(self.all_partitions, view.members, view.holders,
                       {name: lease.get("since") for name, lease in view.leases.items()})[me]
        for name in sorted(set(self.leases.held) - set(share)):
            self.counting.drop(name, f"its share is now {len(share)} of "
                                     f"{len(self.all_partitions)} partitions, with "
                                     f"{len(view.members)} workers", logging.INFO)
            try:
                self.leases.release(name)
            except UNAVAILABLE:
                pass  # it lapses by itself
        if not self._looked:
            # Workers starting together each see only themselves at first: one look before
            # taking anything, so that they take their shares rather than everything.
            self._looked = True
            return
        for name in share:
            if name in self.counting.partitions or view.holders[name] not in (None, me):
                continue  # counted already, or still held by a live worker releasing it
            before = view.leases[name].get("owner") or "nobody"
            try:
                if self.leases.take(name):
                    self.counting.adopt(name, f"from {before}")
            except (*UNAVAILABLE, Fenced) as error:
                log.warning("partition %s: could not take it (%s); trying again later", name,
                            f"{type(error).__name__}: {error}".rstrip(": "))
                self.counting.drop(name, "taking it failed")

    def renew(self):
        """Renew the leases if it is time to (see upkeep); False if it was not, or the
        cluster did not answer. Lost leases are dropped by drop_lost(), between passes."""
        now = time.monotonic()
        if now < self._next_renewal:
            return False
        self._next_renewal = now + self.leases.takeover / RENEWALS_PER_TAKEOVER
        try:
            self._lost.update(self.leases.renew())
        except UNAVAILABLE as error:
            self._unanswered(error, self._next_renewal)
            return False
        return True

    def drop_lost(self):
        for name in sorted(self._lost):
            self.counting.drop(name, "another worker took its lease over")
        self._lost.clear()

    def _unanswered(self, error, retry_at):
        log.warning("leases: the cluster did not answer (%s); trying again in %.1f s",
                    f"{type(error).__name__}: {error}".rstrip(": "),
                    max(0.0, retry_at - time.monotonic()))
