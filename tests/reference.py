"""The reference model, written independently of the code under test, and the invariant.

A complete token is non-space bytes followed by a whitespace byte; a valid one is a canonical
id up to 2**63-1. The invariant every test can check at any instant:

    data2.counts == counts of the valid complete tokens in data1[0 : data2.offset]
"""

import collections
import json
import re
from pathlib import Path

COMPLETE_TOKEN = re.compile(rb"(\S+)\s")
CANONICAL_ID = re.compile(rb"0|[1-9][0-9]{0,18}")
TORN_TAIL = re.compile(rb"\S*\Z")


def valid_counts(data):
    """{id as str: count} of the valid ids among the complete tokens of `data`."""
    counts = collections.Counter(
        str(int(token)) for token in COMPLETE_TOKEN.findall(data)
        if CANONICAL_ID.fullmatch(token) and int(token) < 2**63
    )
    return dict(counts)


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
    return checkpoint


def caught_up(state_dir):
    """True once the worker has consumed every complete token in data1."""
    data1 = (Path(state_dir) / "data1").read_bytes()
    checkpoint = read_checkpoint(state_dir)
    return (checkpoint["offset"] if checkpoint else 0) == complete_length(data1)
