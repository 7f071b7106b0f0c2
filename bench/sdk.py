"""`python -m bench sdk`: Judo SDK batches of 100 real-shaped events, 16 connections, every
request with fresh event ids: events/s against today's minimal batches of 100 and a bare
waitress app reading the same bodies; what the dedupe costs with 0 and 20 M ids in its window,
and the ingest's peak RSS; the details file's bytes per event."""

import datetime
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

from bench.harness import (PIDS, against, bare_server, ingest_server, run_wrk, scratch_dir,
                           wrk_script)
from bench.sdk_shapes import android_timestamp, ios_timestamp
from storage.layout import DETAILS, SEEN
from storage.log import details
from storage.log.seen_index import SeenIndex

ROUNDS = 3
EVENTS = 100
FULL_WINDOW_IDS = 20_000_000
# The ingest's targets, SDK events/s with dedupe on (docs/benchmarks.md, SDK batches).
TARGET_EMPTY_WINDOW = 100_000
TARGET_FULL_WINDOW = 70_000
PLACEHOLDER = "@ID@"


def sdk_body(installs=7):
    """100 events as the SDKs send them (bench/sdk_shapes.py has the field-by-field source),
    each id a placeholder that the wrk script fills with a fresh value per request; from
    `installs` app installs (an SDK sends its own install's events only: 1 is that shape)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    events = []
    for number in range(EVENTS):
        # Each event its own moment, as the SDKs stamp them (a batch is what an install
        # gathered over a while), in iOS's format and Android's in turn: a body with one
        # timestamp lets the ingest parse it once a batch, and hides what parsing costs.
        moment = now - datetime.timedelta(seconds=7 * (EVENTS - number))
        stamp = (ios_timestamp(moment) if number % installs % 2 == 0 else
                 android_timestamp(moment))
        events.append({
            "id": PLACEHOLDER, "timestamp": stamp,
            "anonymousID": f"4F1E6B0C-6E4A-4C8B-9D0E-{number % installs:012d}",
            "type": "screen",
            "properties": {"id": f"node-{number % 9}", "name": "Écran d'accueil",
                           "experienceID": str(1000 + number % 37),
                           "experienceRevisionID": "rev-12", "experienceName": "Welcome"},
            "context": {"device": {"id": "7C0E3D1E-2B5A-4F44-9C3A-0D9A1E3B5F21",
                                   "buildEnvironment": "PRODUCTION"},
                        "os": {"name": "iOS", "version": "17.2"}, "locale": "en-CA"},
        })
    return json.dumps({"batch": events})


# Lua for wrk: uuid(), a random version-4 UUID, as both SDKs make each event's id. Random,
# not a counter: what a body's ids hold of entropy is what compressing it cannot take away
# (a cluster's messages are stored compressed: storage/stream/sdk_message.py). Each of
# wrk's Lua states seeds its own generator from /dev/urandom.
UUID_LUA = r"""
local urandom = io.open("/dev/urandom", "rb")
local seed = 0
for c in urandom:read(4):gmatch(".") do seed = seed * 256 + c:byte() end
urandom:close()
math.randomseed(seed)
local random = math.random
local function uuid()
  return string.format("%04X%04X-%04X-4%03X-%04X-%04X%04X%04X", random(0, 0xFFFF),
    random(0, 0xFFFF), random(0, 0xFFFF), random(0, 0xFFF), random(0x8000, 0xBFFF),
    random(0, 0xFFFF), random(0, 0xFFFF), random(0, 0xFFFF))
end
"""


def fresh_ids_script(template, tokens=()):
    """Lua for wrk: each request is `template` with its placeholders replaced by fresh
    event ids (random UUIDs, UUID_LUA); with `tokens`, each request carries the next of them
    in Judo-Access-Token."""
    parts = template.split(PLACEHOLDER)
    quoted = ", ".join('"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
                       for part in parts)
    listed = ", ".join(f'"{token}"' for token in tokens)
    return (
        UUID_LUA +
        f"local parts = {{{quoted}}}\n"
        f"local tokens = {{{listed}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  local out = {parts[1]}\n"
        "  for i = 2, #parts do\n"
        "    out[#out + 1] = uuid()\n"
        "    out[#out + 1] = parts[i]\n"
        "  end\n"
        '  local headers = {["Content-Type"] = "application/json"}\n'
        "  if #tokens > 0 then headers['Judo-Access-Token'] = tokens[n % #tokens + 1] end\n"
        '  return wrk.format("POST", "/batch?apiVersion=2", headers, table.concat(out))\n'
        "end\n"
    )


def prefilled_index(folder, ids):
    """A details file and a dedupe index holding `ids` random ids received in the last hour,
    as an ingest leaves them: the ingest opens and trusts it. Returns the two paths."""
    details_path, seen_path = folder / DETAILS, folder / SEEN
    identity = os.urandom(16)
    details_path.write_bytes(details.HEADER.pack(details.MAGIC, details.VERSION, identity, 0))
    fd = os.open(details_path, os.O_RDONLY)
    try:
        written = SimpleNamespace(identity=identity, end=details.HEADER.size, fd=fd)
        index = SeenIndex(seen_path, written, 86400, set_aside=None)
        step = 1_000_000
        for start in range(0, ids, step):
            count = min(step, ids - start)
            index.insert(os.urandom(16 * count), [int(time.time()) - 1800] * count,
                         details.HEADER.size)
        index.close()
    finally:
        os.close(fd)
    return details_path, seen_path


def peak_rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1]) / 1024


def bench_sdk(seconds):
    results = {}
    template = sdk_body()
    results["sdk_body_bytes"] = len(template.replace(PLACEHOLDER, "x" * 36))  # a UUID's length
    minimal = json.dumps({"batch": [{"experienceID": 1000 + i % 37} for i in range(EVENTS)]})
    folder = scratch_dir()
    try:
        began = time.perf_counter()
        full = prefilled_index(folder, FULL_WINDOW_IDS)
        results["sdk_prefill_20m_s"] = time.perf_counter() - began
        results["sdk_index_20m_bytes"] = sum(f.stat().st_size for f in full[1].iterdir())

        def with_full_window(state_dir):
            shutil.copy(full[0], state_dir / full[0].name)
            shutil.copytree(full[1], state_dir / full[1].name)

        script_path = folder / "sdk.lua"
        script_path.write_text(fresh_ids_script(template) + DONE)
        configs = {
            "sdk": (lambda: ingest_server(), str(script_path)),
            "sdk_no_dedupe": (lambda: ingest_server(dedupe_window=0), str(script_path)),
            "sdk_20m": (lambda: ingest_server(prepare=with_full_window), str(script_path)),
            "bare": (lambda: bare_server(16), str(script_path)),
        }
        runs = {name: [] for name in [*configs, "minimal"]}
        rss = {name: [] for name in configs}
        details_per_event = []
        with wrk_script(minimal.encode(), "/batch") as minimal_script:
            for _ in range(ROUNDS):
                for name, (start, script) in [*configs.items(),
                                              ("minimal", (ingest_server, minimal_script))]:
                    with start() as (port, state_dir):
                        run_wrk(port, script, seconds=1)
                        runs[name].append(run_wrk(port, script, seconds=seconds))
                        if name in rss:
                            rss[name].append(peak_rss_mb(PIDS[port]))
                        if name == "sdk":
                            kept = (state_dir / DETAILS).stat().st_size - details.HEADER.size
                            stored = (state_dir / "data1").read_bytes().count(b" ")
                            details_per_event.append(kept / stored)
        for name, measured in runs.items():
            results[f"sdk_{name}_events_s" if not name.startswith("sdk") else
                    f"{name}_events_s"] = statistics.median(r["rate"] for r in measured) * EVENTS
            spread = [r["rate"] for r in measured]
            results[f"{name}_spread"] = (min(spread) * EVENTS, max(spread) * EVENTS)
            results[f"{name}_p99_ms"] = statistics.median(r["p99"] for r in measured)
        for name, values in rss.items():
            results[f"{name}_peak_rss_mb"] = max(values)
        rate = lambda name: results[f"{name}_events_s"]  # noqa: E731
        results.update(
            sdk_vs_minimal=rate("sdk") / results["sdk_minimal_events_s"],
            sdk_vs_bare=rate("sdk") / results["sdk_bare_events_s"],
            sdk_dedupe_cost=rate("sdk") / rate("sdk_no_dedupe"),
            sdk_20m_vs_empty=rate("sdk_20m") / rate("sdk"),
            sdk_details_bytes_per_event=statistics.median(details_per_event),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


DONE = (
    "done = function(summary, latency, requests)\n"
    '  io.write(string.format("PERCENTILES %d %d %d\\n", latency:percentile(50),\n'
    "    latency:percentile(99), latency:percentile(99.9)))\n"
    "end\n"
)


def rows(results):
    """The bench table's lines for this part."""
    if "sdk_events_s" not in results:
        return []
    spread = lambda name: "{:,.0f} to {:,.0f}".format(*results[f"{name}_spread"])  # noqa: E731
    return [
        ("SDK batches of 100, dedupe on, empty window (events/s)",
         against(f"{results['sdk_events_s']:,.0f} ({spread('sdk')})", results["sdk_events_s"],
                 TARGET_EMPTY_WINDOW, "{:,}")),
        ("SDK batches of 100, dedupe on, 20 M ids in the window (events/s)",
         against(f"{results['sdk_20m_events_s']:,.0f} ({spread('sdk_20m')})",
                 results["sdk_20m_events_s"], TARGET_FULL_WINDOW, "{:,}")),
        ("SDK batches of 100, dedupe off (events/s)",
         f"{results['sdk_no_dedupe_events_s']:,.0f} ({spread('sdk_no_dedupe')})"),
        ("Minimal batches of 100 ids (events/s)",
         f"{results['sdk_minimal_events_s']:,.0f} ({spread('minimal')})"),
        ("Bare waitress reading the SDK bodies (events/s)",
         f"{results['sdk_bare_events_s']:,.0f} ({spread('bare')})"),
        ("  SDK / minimal batches", f"{results['sdk_vs_minimal']:.2f}"),
        ("  SDK / bare waitress", f"{results['sdk_vs_bare']:.2f}"),
        ("  dedupe on / off", f"{results['sdk_dedupe_cost']:.2f}"),
        ("  20 M ids in the window / empty", f"{results['sdk_20m_vs_empty']:.2f}"),
        ("SDK p99, empty window / 20 M ids (ms)",
         f"{results['sdk_p99_ms']:.1f} / {results['sdk_20m_p99_ms']:.1f}"),
        ("Ingest peak RSS, empty window / 20 M ids / dedupe off (MB)",
         f"{results['sdk_peak_rss_mb']:.0f} / {results['sdk_20m_peak_rss_mb']:.0f} / "
         f"{results['sdk_no_dedupe_peak_rss_mb']:.0f}"),
        ("Dedupe index with 20 M ids (MB)", f"{results['sdk_index_20m_bytes'] / 2**20:,.0f}"),
        ("Details file (bytes per event)", f"{results['sdk_details_bytes_per_event']:.0f}"),
        ("SDK body of 100 events (bytes)", f"{results['sdk_body_bytes']:,}"),
    ]
