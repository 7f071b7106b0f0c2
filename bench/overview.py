"""`python -m bench overview`: the experience overview's cost.

- Worker catch-up over a backlog of SDK events from the traffic generator (bench/traffic.py;
  data1 and data1.details written as the ingest writes them, storage/log/details.py), the
  overview on against off: events per second each way, their ratio, and the worker's peak
  RSS.
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
import time
import zlib

from bench import traffic as generator
from bench.harness import ingest_server, scratch_dir, time_worker_until
from storage.log import details
from storage.views.overview_store import Changes, OverviewStore
from storage.views.sketches import person_key
from worker.overview import OverviewCounter, SdkEvents

BACKLOG_EVENTS = 2_000_000
EXPERIENCES = 1000
END = 1_795_000_000 - 1_795_000_000 % 86400
END_TIME = datetime.datetime.fromtimestamp(END, datetime.timezone.utc)


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
                ids, items = [], []
                for event in batch:
                    item = {"event": event, "time": int(generator._stamp(event) * 1000)}
                    if event["type"] == "screen":
                        item["offset"] = offset + sum(len(token) for token in ids)
                        ids.append(prefix + event["properties"]["experienceID"].encode() + b" ")
                    items.append(item)
                chunk = b"".join(ids)
                out.write(details.encode_group(offset, offset + len(chunk), zlib.crc32(chunk),
                                               END * 1000, items, project=project))
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


def time_catchup(state_dir, overview):
    """Seconds until the worker has counted all of data1 (and, with the overview, all of the
    details), and its peak RSS in MB."""
    size = (state_dir / "data1").stat().st_size
    return time_worker_until(
        state_dir, {"MINI_ANALYTICS_SERIES": "off",
                    "MINI_ANALYTICS_OVERVIEW": "on" if overview else "off"},
        lambda: counted_all(state_dir, size, overview))


def counted_all(state_dir, size, overview):
    """True once the worker has counted data1's `size` bytes into data2 and, with
    `overview`, every details group into the overview."""
    try:
        if json.loads((state_dir / "data2").read_bytes())["offset"] != size:
            return False
    except (FileNotFoundError, ValueError):
        return False
    if not overview:
        return True
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
        off, off_rss = time_catchup(state_dir, overview=False)
        for name in ("data2",):
            (state_dir / name).unlink()
        on, on_rss = time_catchup(state_dir, overview=True)
        results["overview_catchup_off_events_s"] = events / off
        results["overview_catchup_on_events_s"] = events / on
        results["overview_catchup_on_off_ratio"] = off / on
        results["overview_worker_rss_off_mb"] = off_rss
        results["overview_worker_rss_on_mb"] = on_rss
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
