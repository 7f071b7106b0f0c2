"""The reference model, written independently of the code under test, and the invariant.

A complete token is non-space bytes followed by a whitespace byte; a valid one is a canonical
id up to 2**63-1, bare (the default project's) or after a project's id and a colon. The
invariant every test can check at any instant:

    data2.counts == counts of the valid complete bare tokens in data1[0 : data2.offset]
    data2.projects[p].counts == the same of project p's tokens
"""

import bisect
import collections
import json
import re
import sqlite3
import struct
from pathlib import Path

COMPLETE_TOKEN = re.compile(rb"(\S+)\s")
CANONICAL_ID = re.compile(rb"0|[1-9][0-9]{0,18}")
PROJECT_ID = re.compile(rb"[a-z0-9][a-z0-9_-]{0,39}")
TORN_TAIL = re.compile(rb"\S*\Z")


def valid_counts(data, project=""):
    """{id as str: count} of `project`'s valid ids among the complete tokens of `data` (""
    for the default project's, which are bare)."""
    counts = collections.Counter()
    for token in COMPLETE_TOKEN.findall(data):
        named, colon, bare = token.rpartition(b":")
        if colon and not PROJECT_ID.fullmatch(named):
            continue
        if named.decode() == project and CANONICAL_ID.fullmatch(bare) and int(bare) < 2**63:
            counts[str(int(bare))] += 1
    return dict(counts)


def project_counts(data):
    """{project: {id as str: count}} of the named projects' valid ids in `data`."""
    projects = {token.rpartition(b":")[0].decode() for token in COMPLETE_TOKEN.findall(data)
                if PROJECT_ID.fullmatch(token.rpartition(b":")[0])}
    counted = {project: valid_counts(data, project) for project in sorted(projects)}
    return {project: counts for project, counts in counted.items() if counts}


def complete_length(data):
    """Bytes of `data` up to and including its last separator."""
    return TORN_TAIL.search(data).start()


def read_checkpoint(state_dir):
    path = Path(state_dir) / "data2"
    return json.loads(path.read_bytes()) if path.exists() else None


def check_invariant(state_dir):
    """Assert data2.counts == counts of the complete tokens in data1[0:data2.offset].

    Reads data2 first: data1 only grows past the offset data2 records, so the prefix it
    names is stable however the processes are racing. Returns the checkpoint (or None).
    """
    checkpoint = read_checkpoint(state_dir)
    if checkpoint is None:
        return None
    with open(Path(state_dir) / "data1", "rb") as data1:
        prefix = data1.read(checkpoint["offset"])
    assert len(prefix) == checkpoint["offset"], "data2's offset is past the end of data1"
    assert checkpoint["counts"] == valid_counts(prefix)
    assert {project: entry["counts"] for project, entry in checkpoint.get("projects", {}).items()
            } == project_counts(prefix)
    return checkpoint


def caught_up(state_dir):
    """True once the worker has consumed every complete token in data1."""
    data1 = (Path(state_dir) / "data1").read_bytes()
    checkpoint = read_checkpoint(state_dir)
    return (checkpoint["offset"] if checkpoint else 0) == complete_length(data1)


# --- the counts over time ------------------------------------------------------------------
# The time index read independently: 16-byte entries (second, offset), little-endian. A
# token is dated by the last entry at or before its first byte, or by the first entry if it
# comes before them all; with no index, by second 0.

def index_entries(state_dir):
    path = Path(state_dir) / "data1.timeindex"
    data = path.read_bytes() if path.exists() else b""
    usable = len(data) - len(data) % 16
    return list(struct.iter_unpack("<QQ", data[:usable]))


def expected_series(state_dir, offset):
    """{(experience, minute start): count} for the valid tokens of data1[0:offset], the
    experience its id as an int in the default project, (project, id) in a named one."""
    entries = index_entries(state_dir)
    offsets = [entry_offset for _, entry_offset in entries]
    with open(Path(state_dir) / "data1", "rb") as data1:
        prefix = data1.read(offset)
    series = collections.Counter()
    for match in COMPLETE_TOKEN.finditer(prefix):
        named, colon, token = match.group(1).rpartition(b":")
        if colon and not PROJECT_ID.fullmatch(named):
            continue
        if not (CANONICAL_ID.fullmatch(token) and int(token) < 2**63):
            continue
        if entries:
            position = max(0, bisect.bisect_right(offsets, match.start()) - 1)
            second = entries[position][0]
        else:
            second = 0
        experience = (named.decode(), int(token)) if colon else int(token)
        series[experience, second - second % 60] += 1
    return dict(series)


def read_series(state_dir):
    """(offset, {(experience, minute): count}, {(experience, hour): count}) from
    series.sqlite3, or None if there is none; a named project's experience (and its all
    events, -1) as (project, id), by its key."""
    path = Path(state_dir) / "series.sqlite3"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN")  # one snapshot for the three reads: the worker commits meanwhile
        offset = db.execute("SELECT offset FROM state").fetchone()[0]
        named = {key: (project, experience) for key, project, experience
                 in db.execute("SELECT key, project, experience FROM experience_key")}
        minutes = {(named.get(e, e), b): n
                   for e, b, n in db.execute("SELECT experience, bucket, count FROM minute")}
        hours = {(named.get(e, e), b): n
                 for e, b, n in db.execute("SELECT experience, bucket, count FROM hour")}
        # (selected by name: the tables' own column order is the store's business)
    finally:
        db.close()
    return offset, minutes, hours


def check_series(state_dir):
    """Assert the series store holds exactly data1[0:its offset], dated by the index, per
    minute and per hour, with the all-events rows the sums of the others. Returns it."""
    stored = read_series(state_dir)
    if stored is None:
        return None
    offset, minutes, hours = stored
    expected = expected_series(state_dir, offset)
    by_minute = {key: n for key, n in minutes.items() if not _all(key[0])}
    assert by_minute == expected, f"series at offset {offset} differ from data1 and its index"
    by_hour = collections.Counter()
    for (experience, minute), n in expected.items():
        by_hour[experience, minute - minute % 3600] += n
    assert {key: n for key, n in hours.items() if not _all(key[0])} == dict(by_hour)
    all_hours = collections.Counter()  # (project, hour): each project's all events
    for (experience, hour), n in by_hour.items():
        all_hours[experience[0] if type(experience) is tuple else "", hour] += n
    assert {(e[0] if type(e) is tuple else "", b): n for (e, b), n in hours.items()
            if _all(e)} == dict(all_hours)
    return stored


def _all(experience):
    """True for the rows of all of a project's events (-1, or (project, -1))."""
    return experience == -1 or (type(experience) is tuple and experience[1] == -1)
