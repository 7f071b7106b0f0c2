"""`python -m bench sessions`: does a commit into overview.duckdb cost more as its sessions grow?
(`python -m bench.sessions [stores]`: into that many stores of one folder, committed in turn,
as a cluster worker commits its partitions'.)

The soak's traffic in process, without the engine around it: each commit holds REQUESTS
requests of BATCH screen views of one install (of INSTALLS, each on its own experience), its
moments a second apart, the next commit STEP seconds later. An install is drawn about every
INSTALLS / REQUESTS commits, well within the session timeout, so its one session grows by a
batch each time, to hundreds of views by the end. Measured: screen views a CPU-second over
the first and the last WINDOW commits of each store (storage/views/overview_facts.FactStore.
commit, the batch built outside the clock), the process's peak RSS after each, and DuckDB's
own memory at the end (duckdb_memory(), its stores' blocks and what their commits hold). A
commit whose cost grows with its sessions' length shows as a ratio of last to first well
under 1; memory that grows with the stores, as a peak RSS that goes on rising.
"""

import random
import resource
import shutil
import sys
import time

from bench.harness import scratch_dir
from storage.views.overview_facts import FactStore

COMMITS = 200
WINDOW = 50
REQUESTS = 700
BATCH = 50
INSTALLS = 20_000
EXPERIENCES = 1000
SCREENS = 6
STEP = 2  # seconds between two commits' views
TIMEOUT = 1800


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_sessions(stores=1):
    root = scratch_dir()
    opened = [FactStore(root / f"overview-p{number}.duckdb") for number in range(stores)]
    try:
        for store in opened:
            store.open(TIMEOUT)
        draw = random.Random(1)
        codes = [([store.code(f"screen-{number}") for number in range(SCREENS)],
                  store.code("revision-1")) for store in opened]
        spent, rss = [], []
        for commit in range(COMMITS):
            took = 0.0
            for store, (screens, revision) in zip(opened, codes):
                batch = store.batch()
                now = 1_790_000_000 + commit * STEP
                for _ in range(REQUESTS):
                    install = draw.randrange(INSTALLS)
                    for view in range(BATCH):
                        batch.experience.append(install % EXPERIENCES)
                        batch.device.append(install)
                        batch.carried.append(0)
                        batch.moment.append(now - BATCH + view)
                        batch.screen.append(screens[view % SCREENS])
                        batch.revision.append(revision)
                batch.events = len(batch)
                started = time.process_time()
                store.commit(batch, b"bench", commit + 1, commit + 1)
                took += time.process_time() - started
            spent.append(took)
            rss.append(_peak_rss_mb())
        # The stores of a folder share one DuckDB (overview_facts._Folder): one answer.
        with opened[0].reading() as cursor:
            (duckdb_bytes,), = cursor.execute(
                "SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchall()
    finally:
        for store in opened:
            store.close()
        shutil.rmtree(root, ignore_errors=True)
    views = WINDOW * REQUESTS * BATCH * stores
    return {"sessions_stores": stores,
            "sessions_first_views_s": views / sum(spent[:WINDOW]),
            "sessions_last_views_s": views / sum(spent[-WINDOW:]),
            "sessions_first_peak_rss_mb": rss[WINDOW - 1], "sessions_last_peak_rss_mb": rss[-1],
            "sessions_duckdb_mb": duckdb_bytes / 2**20}


def rows(results):
    """The bench table's lines for this part."""
    if "sessions_first_views_s" not in results:
        return []
    first, last = results["sessions_first_views_s"], results["sessions_last_views_s"]
    into = ("overview.duckdb" if results["sessions_stores"] == 1
            else f"{results['sessions_stores']} overview.duckdb stores of one folder")
    return [(f"Growing sessions into {into}, commits 1-{WINDOW} / last {WINDOW} "
             "(views/CPU-s, last / first)", f"{first:,.0f} / {last:,.0f} ({last / first:.2f})"),
            ("Growing sessions, peak RSS after the first / last window (MB)",
             f"{results['sessions_first_peak_rss_mb']:.0f} / "
             f"{results['sessions_last_peak_rss_mb']:.0f}"),
            ("Growing sessions, DuckDB's own memory at the end (MB)",
             f"{results['sessions_duckdb_mb']:.0f}")]


if __name__ == "__main__":
    for name, value in rows(bench_sessions(int(sys.argv[1]) if len(sys.argv) > 1 else 1)):
        print(f"{name}: {value}")
