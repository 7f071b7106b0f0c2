"""storage/log/checkpoint_store.py: data2's one writer and one reader."""

import json
import os

from storage.checkpoint import Checkpoint
from storage.log.checkpoint_store import CheckpointStore


def test_load_missing_is_none(tmp_path):
    assert CheckpointStore(tmp_path).load() is None


def test_commit_returns_the_stamped_checkpoint_and_leaves_its_argument_alone(tmp_path):
    store = CheckpointStore(tmp_path)
    new = Checkpoint(offset=4, counts={1: 2})
    stamped = store.commit(new)
    assert new.updated_at == "" and stamped.updated_at.endswith("Z")
    assert store.load() == stamped
    assert json.loads((tmp_path / "data2").read_bytes())["updated_at"] == stamped.updated_at


def test_set_aside_keeps_the_file_under_a_new_name(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.set_aside() is None  # nothing to set aside
    (tmp_path / "data2").write_bytes(b"garbage")
    aside = store.set_aside()
    assert aside.name.startswith("data2.bad-") and aside.read_bytes() == b"garbage"
    assert os.listdir(tmp_path) == [aside.name]


def test_remove_stray_temp(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.remove_stray_temp() is None
    (tmp_path / "data2.tmp").write_bytes(b"half")
    assert store.remove_stray_temp().name == "data2.tmp"
    assert os.listdir(tmp_path) == []
