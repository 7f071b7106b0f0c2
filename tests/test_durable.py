"""storage/durable.py: a replace is whole or not at all, and leaves no temp file behind."""

import os

import pytest

from storage.durable import replace_durably


def test_replace_durably_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "data2"
    target.write_bytes(b"old")
    replace_durably(str(target), b"new contents")
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["data2"]


def test_a_failed_rename_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "data2"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        replace_durably(str(target), b"new")
    assert target.read_bytes() == b"old"
