"""`python -m bench projects`: what the project key costs (docs/projects.md), measured against
no projects in the same run.

- Ingest: SDK batches of 100 (bench/sdk.py's body, fresh event ids per request) with no
  projects file (no token), with one project, and with 100 projects (each request with the
  next project's write token): events/s, and each against no projects.
- Catch-up: the worker counting a backlog of SDK events from the traffic generator (counts,
  series and overview), all in the default project, in one project, and spread over 100
  projects (bench/overview.make_backlog): events/s, and each against no projects.
"""

import shutil
import statistics
import sys

from bench.harness import run_wrk, scratch_dir, server, time_worker_until
from bench.overview import counted_all, make_backlog
from bench.sdk import DONE, EVENTS, fresh_ids_script, sdk_body

ROUNDS = 3
BACKLOG_EVENTS = 200_000
SHAPES = {"none": 0, "one": 1, "hundred": 100}


def write_token(number):
    return f"bench-write-token-{number:04d}"


def projects_file(folder, count):
    """A projects file of `count` projects (app-0, ...), each with one write token; None for
    no projects."""
    if not count:
        return None
    path = folder / f"projects-{count}.toml"
    path.write_text("".join(f'[projects.app-{n}]\nwrite_tokens = ["{write_token(n)}"]\n'
                            for n in range(count)))
    return path


def bench_projects(seconds):
    results = {}
    folder = scratch_dir()
    try:
        template = sdk_body()
        scripts, files = {}, {}
        for shape, count in SHAPES.items():
            scripts[shape] = folder / f"{shape}.lua"
            tokens = [write_token(number) for number in range(count)]
            scripts[shape].write_text(fresh_ids_script(template, tokens) + DONE)
            files[shape] = projects_file(folder, count)
        rates = {shape: [] for shape in SHAPES}
        for _ in range(ROUNDS):  # interleaved: a slow spell weighs on every shape alike
            for shape in SHAPES:
                env = {"MINI_ANALYTICS_FSYNC": "on", "MINI_ANALYTICS_INGEST_CPU": "auto"}
                if files[shape]:
                    env["MINI_ANALYTICS_PROJECTS_FILE"] = str(files[shape])
                with server([sys.executable, "-m", "app"], env) as (port, _):
                    run_wrk(port, str(scripts[shape]), seconds=1)
                    rates[shape].append(run_wrk(port, str(scripts[shape]), seconds)["rate"])
        for shape, measured in rates.items():
            results[f"projects_ingest_{shape}_events_s"] = statistics.median(measured) * EVENTS
        catchup = {shape: [] for shape in SHAPES}
        for shape, count in SHAPES.items():
            state_dir = folder / f"backlog-{shape}"
            state_dir.mkdir()
            events, _, _ = make_backlog(state_dir, BACKLOG_EVENTS, projects=count)
            size = (state_dir / "data1").stat().st_size
            for _ in range(ROUNDS):
                for leftover in state_dir.iterdir():  # counted again from nothing each time
                    if leftover.is_dir():
                        shutil.rmtree(leftover)
                    elif leftover.name not in ("data1", "data1.details"):
                        leftover.unlink()
                elapsed = time_worker_until(
                    state_dir, {"MINI_ANALYTICS_SERIES": "on", "MINI_ANALYTICS_OVERVIEW": "on"},
                    lambda: counted_all(state_dir, size, True)).seconds
                catchup[shape].append(events / elapsed)
            shutil.rmtree(state_dir, ignore_errors=True)
        for shape, measured in catchup.items():
            results[f"projects_catchup_{shape}_events_s"] = statistics.median(measured)
        for kind in ("ingest", "catchup"):
            for shape in ("one", "hundred"):
                results[f"projects_{kind}_{shape}_vs_none"] = (
                    results[f"projects_{kind}_{shape}_events_s"]
                    / results[f"projects_{kind}_none_events_s"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def rows(results):
    """The bench table's lines for this part."""
    if "projects_ingest_none_events_s" not in results:
        return []
    out = []
    for kind, what in (("ingest", "Ingest, SDK batches of 100"),
                       ("catchup", "Catch-up, counts, series and overview")):
        out.append((f"{what}: no projects / 1 / 100 (events/s)", " / ".join(
            f"{results[f'projects_{kind}_{shape}_events_s']:,.0f}" for shape in SHAPES)))
        out.append(("  1 project / none, 100 projects / none",
                    f"{results[f'projects_{kind}_one_vs_none']:.2f}, "
                    f"{results[f'projects_{kind}_hundred_vs_none']:.2f}"))
    return out
