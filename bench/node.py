"""`python -m bench node`: the ingest beside the two public Node.js implementations of the
assignment, single events, 16 connections kept alive, 3 interleaved rounds.

    AbbyNode/JudoInterviewApp     express; appendFileSync, then answers (POST /event)
    GillGurpreet/mini-analytics   express; answers before fs.appendFile is done
                                  (POST /ingest-api)

Neither ever syncs to disk. Their code is not part of this project: clone each into
bench/node-apps/ (as AbbyNode+JudoInterviewApp and GillGurpreet+mini-analytics); this part
installs their npm dependencies there and runs each as its README does, unchanged (the
second's fixed port 3000 is moved to a free one by wrapping express's listen). Without node
and npm, or without the sources, the part is skipped and says why.
"""

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from bench.harness import REPO, bare_server, ingest_server, run_wrk, server, wrk_script

APPS = REPO / "bench" / "node-apps"
ROUNDS = 3
EVENT = b'{"experienceID": 12345}'

# Each app: (folder, path it takes events on, how to start it on the port in $PORT).
NODE_APPS = {
    "node_abby": ("AbbyNode+JudoInterviewApp", "/event", "exec node index.js"),
    "node_gill": ("GillGurpreet+mini-analytics", "/ingest-api",
                  "exec node -e \"const e = require('express'); const listen = "
                  "e.application.listen; e.application.listen = function (port, ...rest) "
                  "{ return listen.call(this, process.env.PORT, ...rest) }; "
                  "require('./ingest-api.js')\""),
}


def missing():
    """Why this part cannot run here, or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    absent = [folder for folder, _, _ in NODE_APPS.values() if not (APPS / folder).is_dir()]
    if absent:
        return f"clone {', '.join(absent)} into {APPS} first"
    return None


@contextlib.contextmanager
def node_server(folder, command):
    app = APPS / folder
    if not (app / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=app,
                       check=True, capture_output=True, timeout=600)
    escaped = command.replace("{", "{{").replace("}", "}}")  # server() formats in the port
    try:
        with server(["sh", "-c", f"cd '{app}' && PORT={{port}} {escaped}"]) as started:
            yield started
    finally:
        reap(app)


def reap(app):
    """Stop what an app started beside its server (the first spawns its worker)."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and Path(proc, "cwd").resolve() == app.resolve():
                os.kill(int(proc.name), signal.SIGKILL)


def bench_node(seconds):
    why = missing()
    if why:
        print(f"bench node: skipped: {why}", file=sys.stderr)
        return {"node_skipped": why}
    configs = {
        "ours_fsync_on": (ingest_server, "/event"),
        "ours_fsync_off": (lambda: ingest_server(fsync=False), "/event"),
        "bare_plain": (lambda: bare_server(16, pinned=False), "/event"),
        **{name: ((lambda f=folder, c=command: node_server(f, c)), path)
           for name, (folder, path, command) in NODE_APPS.items()},
    }
    runs = {name: [] for name in configs}
    scripts = {}
    try:
        for path in {path for _, path in configs.values()}:
            scripts[path] = wrk_script(EVENT, path)
        paths = {path: context.__enter__() for path, context in scripts.items()}
        for _ in range(ROUNDS):
            for name, (start, path) in configs.items():
                with start() as (port, _):
                    run_wrk(port, paths[path], seconds=1)
                    runs[name].append(run_wrk(port, paths[path], seconds=seconds))
    finally:
        for context in scripts.values():
            context.__exit__(None, None, None)
    results = {}
    for name, measured in runs.items():
        rates = [run["rate"] for run in measured]
        results[f"{name}_req_s"] = statistics.median(rates)
        results[f"{name}_spread"] = (min(rates), max(rates))
        results[f"{name}_p99_ms"] = statistics.median(run["p99"] for run in measured)

    def ratio(a, b):
        per_round = [x["rate"] / y["rate"] for x, y in zip(runs[a], runs[b])]
        return statistics.median(per_round), min(per_round), max(per_round)

    results["on_vs_off"] = ratio("ours_fsync_on", "ours_fsync_off")
    results["on_vs_bare_plain"] = ratio("ours_fsync_on", "bare_plain")
    for name in NODE_APPS:
        results[f"on_vs_{name}"] = ratio("ours_fsync_on", name)
    results["p99_on_vs_bare_plain"] = (results["ours_fsync_on_p99_ms"]
                                       / results["bare_plain_p99_ms"])
    return results


def rows(results):
    if "node_skipped" in results:
        return [("Node.js implementations", f"skipped: {results['node_skipped']}")]
    if "ours_fsync_on_req_s" not in results:
        return []  # the part was not asked for
    shown = []
    labels = {"ours_fsync_on": "Ours, fsync on", "ours_fsync_off": "Ours, fsync off",
              "bare_plain": "Bare waitress, launched plainly",
              "node_abby": "AbbyNode/JudoInterviewApp (node)",
              "node_gill": "GillGurpreet/mini-analytics (node)"}
    for name, label in labels.items():
        low, high = results[f"{name}_spread"]
        shown.append((f"{label} (req/s, p99 ms)", f"{results[f'{name}_req_s']:,.0f} "
                      f"({low:,.0f} to {high:,.0f}), p99 {results[f'{name}_p99_ms']:.1f}"))
    for key, label in (("on_vs_off", "  fsync on / off"),
                       ("on_vs_bare_plain", "  fsync on / bare launched plainly"),
                       ("on_vs_node_abby", "  fsync on / AbbyNode"),
                       ("on_vs_node_gill", "  fsync on / GillGurpreet")):
        median, low, high = results[key]
        shown.append((f"{label} (median, rounds' spread)", f"{median:.2f} ({low:.2f} to {high:.2f})"))
    shown.append(("  p99, fsync on / bare launched plainly", f"{results['p99_on_vs_bare_plain']:.2f}"))
    return shown
