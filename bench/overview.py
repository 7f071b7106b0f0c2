"""`python -m bench overview`: the experience overview's cost.

- Worker catch-up over a backlog of SDK events from the traffic generator (bench/traffic.py;
  data1 and data1.details written as the ingest writes them, storage/log/details.py), in
  ROUNDS rounds, each beside the two baselines the overview is held to, measured in the
  same round: decoding data1.details alone (the floor: reading the events once, with
  msgspec's typed structs, only the fields counted; taken just before and just after the
  catch-up into overview.duckdb, and their mean), and the ingest's own SDK events/s (the
  overview must keep up with it). Beside them, decoding the details whole with the
  standard library's json (the floor the catch-up was first measured against, before
  msgspec), and the overview's reading alone (worker/overview.SdkEvents: the events read
  into views and links, nothing counted), a ceiling on any way of counting what it reads.
  Each printed with its target, the ratio and the rounds' spread; the worker's CPU-seconds
  give the catch-up's events a CPU-second (the worker is one process, mostly one thread),
  its peak RSS the memory. The catch-up into overview.duckdb
  (MINI_ANALYTICS_OVERVIEW_STORE=duckdb, storage/views/overview_facts.py) and into
  overview.sqlite3, each round, held to the same targets. The overview off (data1's ids
  only) once, for scale.
- The reads below on the backlog itself, from both stores (in process): the same documents,
  and what each store's design costs at answering them.
- A late login: 1,000 installs of the backlog that viewed anonymously over the 30 days
  log in at once, after everything was counted: the hours counted again and the seconds
  the commit takes (worker/people.py).
- overview.sqlite3's size per million screen views.
- /experiences over 30 days of 1,000 experiences, /experiences/<id> by hour over 7 days, and
  the first experience's flow and revisions with a goal over 30 days, on a store holding 30
  days of hourly rows for 1,000 experiences (the first with thousands of users a day, the
  tail with a few): median and largest milliseconds.
"""

import datetime
import json
import os
import random
import shutil
import sqlite3
import statistics
import time
import zlib

from app import flow_query, overview_query
from app.validate import parse_batch
from bench import traffic as generator
from bench.harness import against, ingest_server, scratch_dir, time_worker_until
from bench.soak import measure_capacity
from storage.layout import Layout
from storage.local_messages import WorkerOverview
from storage.log import counted, details
from storage.sdk_event import CountedEvent
from storage.views.overview_facts import FactReader, FactStore
from storage.views.overview_store import Changes, NoOverview, OverviewReader, OverviewStore
from storage.views.sketches import person_key
from worker.overview import FACT_COMMIT_EVENTS, OverviewCounter
from worker.sdk_events import SdkEvents

BACKLOG_EVENTS = 2_000_000
EXPERIENCES = 1000
END = 1_795_000_000 - 1_795_000_000 % 86400
END_TIME = datetime.datetime.fromtimestamp(END, datetime.timezone.utc)
ROUNDS = 3
# The catch-up's targets (docs/benchmarks.md, The experience overview).
TARGET_EVENTS_PER_CPU_S = 200_000
TARGET_VS_DECODING = 0.5
TARGET_VS_INGEST = 3.0
TARGET_RSS_MB = 256
# The reads timed on the backlog from both stores (time_backlog_reads).
BACKLOG_READS = ("experiences_30d", "experience_1_7d_hourly", "experience_500_7d_hourly",
                 "flow_1_30d_goal", "revisions_1_30d_goal")


def make_backlog(state_dir, events=BACKLOG_EVENTS, projects=0):
    """data1 and data1.details holding about `events` SDK events from bench/traffic.py (its
    installs' sessions over 30 days, both SDKs' shapes, identifies), written as the ingest
    writes them, a group per batch; with `projects`, each install's events in one of that
    many projects (app-0, app-1, ...: storage/projects.py). Returns (events, screen views,
    installs that never logged in)."""
    offset = written = views = 0
    anonymous = {}  # installs that never logged in -> the device that sends as them
    with open(state_dir / "data1", "wb") as data1, \
            open(state_dir / "data1.details", "wb") as out:
        out.write(details.HEADER.pack(details.MAGIC, details.VERSION, os.urandom(16), 0))
        seed = 0
        while written < events:
            seed += 1  # 2,000 installs at a time, each seed's its own
            traffic = generator.generate(seed=seed, devices=2000, experiences=EXPERIENCES,
                                         days=30, end=END_TIME, sessions_per_day=0.05,
                                         retry_share=0, late_share=0)
            views += len(traffic.views)
            linked = {link.anonymous for link in traffic.links}
            anonymous.update((view.anonymous, view.moment) for view in traffic.views
                             if view.anonymous not in linked and not view.user)
            for device_id, batch in traffic.batches:
                project = (f"app-{zlib.crc32(f'{seed}/{device_id}'.encode()) % projects}"
                           if projects else "")
                prefix = f"{project}:".encode() if project else b""
                # Checked as the ingest checks a request (app/validate.py), and written as it
                # writes one (storage/log/writer.py): the items, and the counted columns.
                checked = parse_batch(json.dumps({"batch": batch}).encode(), END).events
                assert len(checked) == len(batch)
                ids, items = [], []
                for event in checked:
                    item = event.details
                    if event.experience_id is not None:
                        item = {**item, "offset": offset + sum(len(token) for token in ids)}
                        ids.append(prefix + str(event.experience_id).encode() + b" ")
                    items.append(item)
                chunk = b"".join(ids)
                out.write(details.encode_group(offset, offset + len(chunk), zlib.crc32(chunk),
                                               END * 1000, items, project=project,
                                               columns=counted.encode(project, checked)))
                data1.write(chunk)
                offset += len(chunk)
                written += len(batch)
    return written, views, anonymous


def time_late_logins(state_dir, installs):
    """Log `installs` ({anonymousID: a moment it viewed}) in as a user each, in one commit
    after all else is counted: (hours counted again, seconds)."""
    counter = OverviewCounter(OverviewStore(state_dir), 1800, "bench")
    counter.open()
    read = SdkEvents()
    read.read([{"event": {"id": f"login-{number}", "type": "identify", "anonymousID": install,
                          "userID": f"late-{number}", "traits": {}},
                "time": (moment + 60) * 1000}
               for number, (install, moment) in enumerate(installs.items())])
    recounted = []
    commit = counter.store.commit

    def measured(changes, *args):
        recounted.append(len(changes.recount))
        commit(changes, *args)

    counter.store.commit = measured
    started = time.perf_counter()
    counter.count(read, counter.source, counter.position + 1, counter.log_end)
    elapsed = time.perf_counter() - started
    counter.close()
    return recounted[0], elapsed


def time_catchup(state_dir, overview, store="sqlite"):
    """The worker's run (bench/harness.WorkerRun) until it has counted all of data1 (and,
    with the overview, all of the details into `store`, MINI_ANALYTICS_OVERVIEW_STORE), from
    no data2 and no overview store."""
    stores = {"sqlite": ["overview.sqlite3", "overview.sqlite3-wal", "overview.sqlite3-shm"],
              "duckdb": ["overview.duckdb", "overview.duckdb.wal"]}
    for name in ["data2", *stores[store]]:  # the other store is left, for the reads
        (state_dir / name).unlink(missing_ok=True)
    size = (state_dir / "data1").stat().st_size
    # overview.duckdb's position is asked of the worker, whose answers cost it CPU: asked
    # every 2 ms, as a file is read, they took 18 to 24 of its 49 to 55 CPU-seconds on the
    # backlog (30 to 31 asked every 0.25 s, two rounds each way, alternated). A quarter of a
    # second is under 1 % of a catch-up's time.
    return time_worker_until(
        state_dir, {"MINI_ANALYTICS_SERIES": "off",
                    "MINI_ANALYTICS_OVERVIEW": "on" if overview else "off",
                    "MINI_ANALYTICS_OVERVIEW_STORE": store},
        lambda: counted_all(state_dir, size, overview and store),
        every=0.25 if overview and store == "duckdb" else 0.002)


def time_backlog_reads(state_dir, rounds=5):
    """{query: (median ms from overview.sqlite3, from overview.duckdb)}: the same documents
    (app/overview_query.py, app/flow_query.py, in process) from both stores of the backlog."""
    facts = FactStore(state_dir / "overview.duckdb")
    facts.open(1800)
    readers = (OverviewReader(state_dir), FactReader(facts))
    now = END_TIME
    span = {"from": f"{now - datetime.timedelta(days=30):%Y-%m-%dT%H:%M:%SZ}",
            "to": f"{now:%Y-%m-%dT%H:%M:%SZ}"}
    week = {**span, "from": f"{now - datetime.timedelta(days=7):%Y-%m-%dT%H:%M:%SZ}",
            "step": "hour"}
    goal = {**span, "goal": "screen-2"}
    queries = {
        "experiences_30d": lambda reader: overview_query.experiences(
            reader, overview_query.parse(span, now)),
        "experience_1_7d_hourly": lambda reader: overview_query.experience(
            reader, overview_query.parse(week, now), 1),
        "experience_500_7d_hourly": lambda reader: overview_query.experience(
            reader, overview_query.parse(week, now), 500),
        "flow_1_30d_goal": lambda reader: flow_query.flow(
            reader, flow_query.parse(goal, now), 1),
        "revisions_1_30d_goal": lambda reader: flow_query.revisions(
            reader, flow_query.parse(goal, now), 1),
    }
    timed = {}
    try:
        for name, query in queries.items():
            medians = []
            for reader in readers:
                took = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    query(reader)
                    took.append(1000 * (time.perf_counter() - started))
                medians.append(statistics.median(took))
            timed[name] = tuple(medians)
    finally:
        facts.close()
    return timed


def decoding_cpu_seconds(state_dir):
    """CPU-seconds to read data1.details and decode its events as the overview does
    (storage/sdk_event.CountedEvent, only the fields it counts), and no more: the floor under
    any catch-up that reads the events."""
    return _cpu_seconds_per_group(state_dir, lambda group: group.events_as(CountedEvent))


def json_decoding_cpu_seconds(state_dir):
    """CPU-seconds to read data1.details and decode its events whole with the standard
    library's json (details.Group.events): the floor the catch-up was first measured
    against, before msgspec and the counted columns."""
    return _cpu_seconds_per_group(state_dir, lambda group: group.events())


def reading_cpu_seconds(state_dir):
    """CPU-seconds to read data1.details into views and links as the overview does
    (SdkEvents.read_stretch, as worker/overview.py reads, a commit's worth at a time; the
    counted columns read into arrays, as overview.duckdb's counter takes them), counting
    nothing: however the views are then counted, the catch-up cannot beat this."""
    data1_end = (state_dir / "data1").stat().st_size
    started = time.process_time()
    fd = os.open(state_dir / "data1.details", os.O_RDONLY)
    try:
        offset, ended = details.HEADER.size, False
        while not ended:
            read = SdkEvents()
            while read.events < FACT_COMMIT_EVENTS and not ended:
                stretch = read.read_stretch(fd, offset, data1_end,
                                            FACT_COMMIT_EVENTS - read.events)
                offset, ended = stretch.end, stretch.ended
            read.columns()
    finally:
        os.close(fd)
    return time.process_time() - started


def _cpu_seconds_per_group(state_dir, each):
    """CPU-seconds to read data1.details's groups and call `each` on every one."""
    started = time.process_time()
    fd = os.open(state_dir / "data1.details", os.O_RDONLY)
    try:
        for group in details.read_groups(fd):
            each(group)
    finally:
        os.close(fd)
    return time.process_time() - started


def counted_all(state_dir, size, overview):
    """True once the worker has counted data1's `size` bytes into data2 and, with
    `overview` (the store, "sqlite" or "duckdb"), every details group into the overview."""
    try:
        if json.loads((state_dir / "data2").read_bytes())["offset"] != size:
            return False
    except (FileNotFoundError, ValueError):
        return False
    if not overview:
        return True
    if overview == "duckdb":  # the worker holds overview.duckdb: it answers for it
        try:
            asking = WorkerOverview(Layout(state_dir).worker_socket, timeout=5)
            return asking.state().log_end == size
        except NoOverview:
            return False
    try:
        with sqlite3.connect(f"file:{state_dir / 'overview.sqlite3'}?mode=ro", uri=True) as db:
            return db.execute("SELECT log_end FROM state").fetchone()[0] == size
    except sqlite3.Error:
        return False


def build_store(state_dir, days=30):
    """30 days of hourly rows for 1,000 experiences, committed a day at a time."""
    rng = random.Random(5)
    store = OverviewStore(state_dir)
    store.open(1800)
    for day in range(days):
        changes = Changes()
        for experience in range(1, EXPERIENCES + 1):
            users_a_day = max(2, 5000 // experience)
            for hour in range(24):
                moment = END - (days - day) * 86400 + hour * 3600
                people = {person_key(f"u{rng.randrange(users_a_day * 3)}")
                          for _ in range(max(1, users_a_day // 24))}
                sessions = len(people)
                durations = {}
                for _ in range(sessions):
                    duration = rng.randrange(0, 600)
                    durations[duration] = durations.get(duration, 0) + 1
                changes.hours[experience, moment] = [
                    len(people) * 3, people, set(list(people)[::2]), sessions, sessions * 90,
                    sessions * 3, sessions // 4, durations]
                for screen in range(3):
                    changes.screens[experience, f"screen-{screen}", moment, "rev-1"] = [
                        len(people), people]
                _flow_rows(changes, experience, moment, people, sessions, durations)
        store.commit(changes, b"", 0, 0)
    store.close()


def _flow_rows(changes, experience, moment, people, sessions, durations):
    """An hour's flow of a three-screen experience on one revision: a third of its sessions
    leave at each screen."""
    key = (experience, moment, "rev-1")
    changes.revisions[key] = [len(people) * 3, moment, moment + 3599, people,
                              set(list(people)[::2]), sessions, sessions * 90, sessions // 4,
                              durations]
    for step in range(3):
        screen = f"screen-{step}"
        reached = sessions * (3 - step) // 3
        changes.flow_screens[(*key, screen)] = [{step + 1: reached}, {20 * step: reached},
                                                {15: reached}]
        for earlier in range(step + 1):
            changes.flow_exits[(*key, screen, f"screen-{earlier}")] = sessions // 3
        if step < 2:
            changes.flow_moves[(*key, screen, f"screen-{step + 1}")] = reached


def bench_overview(time_requests):
    results = {}
    state_dir = scratch_dir()
    try:
        started = time.perf_counter()
        events, views, anonymous = make_backlog(state_dir)
        results["overview_backlog_events"] = events
        results["overview_backlog_screen_views"] = views
        results["overview_backlog_build_s"] = time.perf_counter() - started
        off = time_catchup(state_dir, overview=False)
        results["overview_catchup_off_events_s"] = events / off.seconds
        runs, facts, floor, json_floor, reading, ingest = [], [], [], [], [], []
        for _ in range(ROUNDS):  # interleaved, so that each round's measures share the machine
            # The floor just before and just after the catch-up into overview.duckdb, whose
            # target it is: the machine drifts by a fifth within minutes (docs/benchmarks.md),
            # and overview.sqlite3's catch-up takes minutes.
            before = decoding_cpu_seconds(state_dir)
            facts.append(time_catchup(state_dir, overview=True, store="duckdb"))
            floor.append(events / ((before + decoding_cpu_seconds(state_dir)) / 2))
            json_floor.append(events / json_decoding_cpu_seconds(state_dir))
            reading.append(events / reading_cpu_seconds(state_dir))
            runs.append(time_catchup(state_dir, overview=True))
            ingest.append(measure_capacity())
        per_cpu = [events / run.cpu_seconds for run in runs]
        facts_per_cpu = [events / run.cpu_seconds for run in facts]
        measured = {
            "catchup_on_events_s": [events / run.seconds for run in runs],
            "catchup_on_events_cpu_s": per_cpu,
            "decoding_events_cpu_s": floor,
            "json_decoding_events_cpu_s": json_floor,
            "reading_events_cpu_s": reading,
            "reading_vs_decoding": [mine / alone for mine, alone in zip(reading, floor)],
            "ingest_sdk_events_s": ingest,
            "catchup_vs_decoding": [mine / alone for mine, alone in zip(per_cpu, floor)],
            "catchup_vs_ingest": [mine / taken for mine, taken in zip(per_cpu, ingest)],
            "facts_catchup_events_cpu_s": facts_per_cpu,
            "facts_vs_decoding": [mine / alone for mine, alone in zip(facts_per_cpu, floor)],
            "facts_vs_json_decoding": [mine / alone
                                       for mine, alone in zip(facts_per_cpu, json_floor)],
            "facts_vs_ingest": [mine / taken for mine, taken in zip(facts_per_cpu, ingest)],
        }
        for name, values in measured.items():
            results[f"overview_{name}"] = statistics.median(values)
            results[f"overview_{name}_spread"] = (min(values), max(values))
        results["overview_catchup_on_off_ratio"] = (
            off.seconds / statistics.median(run.seconds for run in runs))
        results["overview_worker_rss_off_mb"] = off.peak_rss_mb
        results["overview_worker_rss_on_mb"] = max(run.peak_rss_mb for run in runs)
        results["overview_facts_worker_rss_mb"] = max(run.peak_rss_mb for run in facts)
        results["overview_facts_mb_per_million"] = (
            (state_dir / "overview.duckdb").stat().st_size / 1e6 / (views / 1e6))
        for name, (rows_ms, facts_ms) in time_backlog_reads(state_dir).items():
            results[f"overview_backlog_{name}_ms"] = (rows_ms, facts_ms)
        size = (state_dir / "overview.sqlite3").stat().st_size
        results["overview_store_mb_per_million"] = size / 1e6 / (views / 1e6)
        late = dict(random.Random(1).sample(sorted(anonymous.items()), 1000))
        hours, seconds = time_late_logins(state_dir, late)
        results["overview_late_logins_1000_hours_recounted"] = hours
        results["overview_late_logins_1000_s"] = seconds
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    with ingest_server() as (port, ingest_state):
        build_store(ingest_state)
        since = datetime.datetime.fromtimestamp(END - 30 * 86400, datetime.timezone.utc)
        week = datetime.datetime.fromtimestamp(END - 7 * 86400, datetime.timezone.utc)
        until = datetime.datetime.fromtimestamp(END, datetime.timezone.utc)
        queries = {
            "experiences_30d": f"/experiences?from={since:%Y-%m-%dT%H:%M:%SZ}"
                               f"&to={until:%Y-%m-%dT%H:%M:%SZ}",
            "experiences_30d_berlin": f"/experiences?from={since:%Y-%m-%dT%H:%M:%S}"
                                      f"&to={until:%Y-%m-%dT%H:%M:%S}&tz=Europe/Berlin",
            "experience_1_7d_hourly": f"/experiences/1?step=hour&from="
                                      f"{week:%Y-%m-%dT%H:%M:%SZ}&to={until:%Y-%m-%dT%H:%M:%SZ}",
            "experience_500_7d_hourly": f"/experiences/500?step=hour&from="
                                        f"{week:%Y-%m-%dT%H:%M:%SZ}&to="
                                        f"{until:%Y-%m-%dT%H:%M:%SZ}",
            "flow_1_30d_goal": f"/experiences/1/flow?goal=screen-2&from="
                               f"{since:%Y-%m-%dT%H:%M:%SZ}&to={until:%Y-%m-%dT%H:%M:%SZ}",
            "revisions_1_30d_goal": f"/experiences/1/revisions?goal=screen-2&from="
                                    f"{since:%Y-%m-%dT%H:%M:%SZ}&to="
                                    f"{until:%Y-%m-%dT%H:%M:%SZ}",
        }
        for name, path in queries.items():
            median, worst = time_requests(port, path, count=15)
            results[f"overview_{name}_ms"] = median
            results[f"overview_{name}_max_ms"] = worst
    return results


def rows(results):
    """The bench table's lines for the catch-up: each measure with its rounds' spread, and
    each target beside what was measured."""
    if "overview_catchup_on_events_cpu_s" not in results:
        return []

    def measured(name, form="{:,.0f}"):
        low, high = results[f"overview_{name}_spread"]
        return (f"{form.format(results[f'overview_{name}'])} "
                f"({form.format(low)} to {form.format(high)})")

    def with_target(name, target, form="{:,.0f}"):
        return against(measured(name, form), results[f"overview_{name}"], target, form)

    rss = results["overview_worker_rss_on_mb"]
    facts_rss = results["overview_facts_worker_rss_mb"]
    return [
        ("Overview catch-up, SDK events a CPU-second (median, range)",
         with_target("catchup_on_events_cpu_s", TARGET_EVENTS_PER_CPU_S)),
        ("Overview catch-up, SDK events/s, wall clock", measured("catchup_on_events_s")),
        ("Decoding data1.details alone, SDK events a CPU-second",
         measured("decoding_events_cpu_s")),
        ("  catch-up / decoding alone", with_target("catchup_vs_decoding", TARGET_VS_DECODING,
                                                     "{:.3f}")),
        ("The overview's reading alone (views and links, nothing counted), a CPU-second",
         measured("reading_events_cpu_s")),
        ("  reading alone / decoding alone (a ceiling on the catch-up's ratio)",
         measured("reading_vs_decoding", "{:.3f}")),
        ("The ingest's SDK events/s, the same rounds", measured("ingest_sdk_events_s")),
        ("  catch-up (a CPU-second) / the ingest", with_target("catchup_vs_ingest",
                                                               TARGET_VS_INGEST, "{:.3f}")),
        ("Worker peak RSS, overview on (MB)",
         against(f"{rss:.1f}", rss, TARGET_RSS_MB, "{:,}", "under")),
        ("Overview catch-up into overview.duckdb (OVERVIEW_STORE=duckdb), a CPU-second",
         with_target("facts_catchup_events_cpu_s", TARGET_EVENTS_PER_CPU_S)),
        ("  its catch-up / decoding alone", with_target("facts_vs_decoding",
                                                        TARGET_VS_DECODING, "{:.3f}")),
        ("  its catch-up (a CPU-second) / the ingest", with_target("facts_vs_ingest",
                                                                   TARGET_VS_INGEST, "{:.3f}")),
        ("  its worker's peak RSS (MB)",
         against(f"{facts_rss:.1f}", facts_rss, TARGET_RSS_MB, "{:,}", "under")),
        ("Decoding data1.details alone with the standard library's json, a CPU-second",
         measured("json_decoding_events_cpu_s")),
        ("  overview.duckdb's catch-up / the standard library's decoding",
         measured("facts_vs_json_decoding", "{:.3f}")),
        *((f"  {name} on the backlog, ms: overview.sqlite3 / overview.duckdb",
           "{:,.0f} / {:,.0f}".format(*results[f"overview_backlog_{name}_ms"]))
          for name in BACKLOG_READS),
        ("Catch-up, overview off (data1's ids only, events/s)",
         f"{results['overview_catchup_off_events_s']:,.0f}; overview on / off "
         f"{results['overview_catchup_on_off_ratio']:.3f}"),
    ]
