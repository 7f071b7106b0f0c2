"""`python -m bench takeover`: how long a cluster takes to count a dead worker's partitions
again, with no person acting, and what clients see meanwhile.

The shipped local cluster (3 NATS nodes, 2 ingest nodes, 2 workers sharing the stream's 8
partitions) takes steady single events on both ingest nodes. Each try SIGSTOPs the worker
counting the most partitions (to the cluster a dead machine: it neither answers nor
renews), and measures, from that moment:

    take-over    until every one of its partitions is counted by the other worker again
                 (its checkpoint moves past what was acknowledged when the worker stopped)
    stalled      the most events acknowledged but not yet counted (all partitions), and
                 until when the stopped worker's partitions still had a message from
                 before the stop uncounted
    throughput   acknowledged events/s during the take-over, against the seconds before

Then the stopped worker is SIGKILLed; supervisord restarts it, it takes its share back,
and the next try waits until the cluster is even again. MINI_ANALYTICS_TAKEOVER is the
default, 15 s; `python -m bench takeover` takes about 10 x 25 s.
"""

import http.client
import os
from collections import Counter
import signal
import statistics
import threading
import time

from bench.cluster import local_cluster

TRIES = 10
TAKEOVER = 15.0
SENDERS = 4  # threads posting single events, kept alive, to either ingest node


class Traffic:
    """Steady single events to both ingest nodes; counts what was acknowledged, when."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.acked = 0
        self.acked_at = []  # (monotonic, acked so far), about every 0.1 s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(index,), daemon=True)
                         for index in range(SENDERS)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _send(self, index):
        port = self.cluster.port(1 + index % 2)
        connection = None
        while not self._stop.is_set():
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", port,
                                                                      timeout=30)
                connection.request("POST", "/event", b'{"experienceID": %d}' % (index + 1))
                answer = connection.getresponse()
                answer.read()
            except (OSError, http.client.HTTPException):
                connection = None
                self._stop.wait(0.1)
                continue
            if answer.status == 202:
                with self._lock:
                    self.acked += 1
            else:
                self._stop.wait(0.05)

    def rate(self, start, end):
        """Acknowledged events/s between two monotonic moments (sampled by sample())."""
        points = [(t, n) for t, n in self.acked_at if start <= t <= end]
        if len(points) < 2:
            return 0.0
        return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])

    def sample(self):
        with self._lock:
            self.acked_at.append((time.monotonic(), self.acked))
        return self.acked


def stats(cluster):
    status, body = cluster.get(1, "/stats")
    return body if status == 200 else None


def owners(cluster):
    body = stats(cluster)
    return {p["partition"]: p["worker"]["owner"] for p in body["partitions"]} if body else {}


def counted_events(cluster):
    status, body = cluster.get(1, "/counts?top=1")
    return body["events"] if status == 200 else None


def one_try(cluster, traffic):
    """Stop the busiest worker; return the try's figures. The cluster is fresh and the
    bench's traffic its only source, so what is acknowledged and not yet counted is the
    difference of the two totals."""
    cluster.wait(lambda: sorted(Counter(owners(cluster).values()).values()) == [4, 4],
                 "4 partitions for each worker", timeout=120)
    steady = time.monotonic()
    while time.monotonic() < steady + 3:
        traffic.sample()
        time.sleep(0.1)
    held = owners(cluster)
    victim = Counter(held.values()).most_common(1)[0][0]
    pid = int(victim.rsplit(":", 1)[1])
    partitions = sorted(p for p, owner in held.items() if owner == victim)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    traffic.sample()
    # Every event acknowledged before the stop is in one of the messages the stream held then.
    stored_at_stop = {p["partition"]: p["stream_messages"] for p in stats(cluster)["partitions"]}
    most_stalled, caught_up_at, taken_over_at = 0, None, None
    try:
        while taken_over_at is None or caught_up_at is None:
            acked, counted, now = traffic.sample(), counted_events(cluster), stats(cluster)
            if counted is not None:
                most_stalled = max(most_stalled, acked - counted)
            if now and caught_up_at is None and all(
                    p["counted_messages"] >= stored_at_stop[p["partition"]]
                    for p in now["partitions"] if p["partition"] in partitions):
                caught_up_at = time.monotonic()
            if now and taken_over_at is None and all(
                    p["worker"]["owner"] not in (None, victim)
                    for p in now["partitions"] if p["partition"] in partitions):
                taken_over_at = time.monotonic()
            if time.monotonic() - stopped > 120:
                raise RuntimeError("no take-over within 120 s")
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGKILL)  # supervisord restarts it; it takes its share back
    return {
        "takeover_s": taken_over_at - stopped,
        "stalled_until_s": caught_up_at - stopped,
        "most_stalled_events": most_stalled,
        "rate_before": traffic.rate(steady, stopped),
        "rate_during": traffic.rate(stopped, max(taken_over_at, caught_up_at)),
        "partitions_moved": len(partitions),
    }


def bench_takeover():
    tries = []
    with local_cluster(interval=1, takeover=TAKEOVER) as cluster, Traffic(cluster) as traffic:
        for _ in range(TRIES):
            tries.append(one_try(cluster, traffic))
            print(f"take-over {tries[-1]['takeover_s']:.1f} s, every event acknowledged "
                  f"before the stop counted after {tries[-1]['stalled_until_s']:.1f} s, "
                  f"at most {tries[-1]['most_stalled_events']} waiting; "
                  f"{tries[-1]['rate_during']:.0f} events/s during, "
                  f"{tries[-1]['rate_before']:.0f} before", flush=True)
    results = {"takeover_setting_s": TAKEOVER, "takeover_tries": len(tries)}
    for key in ("takeover_s", "stalled_until_s", "most_stalled_events"):
        values = [t[key] for t in tries]
        results[f"{key}_median"] = statistics.median(values)
        results[f"{key}_max"] = max(values)
    results["takeover_rate_during_vs_before"] = statistics.median(
        t["rate_during"] / t["rate_before"] for t in tries)
    return results


def rows(results):
    if "takeover_tries" not in results:
        return []
    return [
        (f"Take-over after a worker stops, {results['takeover_tries']} tries, setting "
         f"{results['takeover_setting_s']:g} s (s, median / max)",
         f"{results['takeover_s_median']:.1f} / {results['takeover_s_max']:.1f}"),
        ("  every event acknowledged before the stop counted after (s, median / max)",
         f"{results['stalled_until_s_median']:.1f} / {results['stalled_until_s_max']:.1f}"),
        ("  most events acknowledged and not yet counted (median / max)",
         f"{results['most_stalled_events_median']:,.0f} / "
         f"{results['most_stalled_events_max']:,.0f}"),
        ("  acknowledged events/s during the take-over / before",
         f"{results['takeover_rate_during_vs_before']:.2f}"),
    ]
