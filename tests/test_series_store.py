"""storage/views/series_store.py: commits with their offset, retention, versions, damage
refused."""

import sqlite3

import pytest

from storage.views.series_store import ALL, HOUR, MINUTE, CorruptSeries, SeriesReader, SeriesStore

FINGERPRINT = "f" * 64


def store(tmp_path, retention=3600):
    series = SeriesStore(tmp_path, retention)
    series.open(FINGERPRINT)
    return series


def test_commit_adds_minutes_hours_and_all_events(tmp_path):
    series = store(tmp_path)
    series.commit([(60, ALL, 3), (60, 1, 2), (60, 5, 1), (3660, ALL, 1), (3660, 1, 1)],
                  [(0, ALL, 3), (0, 1, 2), (0, 5, 1), (3600, ALL, 1), (3600, 1, 1)], 30, FINGERPRINT)
    series.commit([(3660, ALL, 4), (3660, 1, 4)], [(3600, ALL, 4), (3600, 1, 4)], 40, FINGERPRINT)
    reader = SeriesReader(tmp_path)
    assert reader.buckets(MINUTE, 1, 0, 10_000) == {60: 2, 3660: 5}
    assert reader.buckets(HOUR, 1, 0, 10_000) == {0: 2, 3600: 5}
    assert reader.buckets(HOUR, ALL, 0, 10_000) == {0: 3, 3600: 5}
    assert reader.counts(HOUR, 0, 3600) == {1: 2, 5: 1}
    state = reader.state()
    assert (state.offset, state.fingerprint, state.events, state.newest_minute) == (
        40, FINGERPRINT, 8, 3660)
    series.close()


def test_minutes_are_kept_relative_to_the_newest_event(tmp_path):
    series = store(tmp_path, retention=600)
    series.commit([(0, ALL, 1), (600, ALL, 1), (1200, ALL, 1)], [(0, ALL, 3)], 10, FINGERPRINT)
    reader = SeriesReader(tmp_path)
    assert reader.buckets(MINUTE, ALL, 0, 10_000) == {600: 1, 1200: 1}
    assert reader.buckets(HOUR, ALL, 0, 10_000) == {0: 3}  # hours are kept for good
    series.close()


def test_each_project_is_read_apart_and_keeps_its_minutes_by_its_own_events(tmp_path):
    series = store(tmp_path, retention=600)
    alpha, alpha_all = ("alpha", 1), ("alpha", ALL)
    # The default project's events run an hour ahead of alpha's: alpha's minutes stay.
    series.commit([(0, alpha_all, 2), (0, alpha, 2), (3600, ALL, 1), (3600, 1, 1)],
                  [(0, alpha_all, 2), (0, alpha, 2), (3600, ALL, 1), (3600, 1, 1)],
                  10, FINGERPRINT)
    reader = SeriesReader(tmp_path)
    assert reader.buckets(MINUTE, 1, 0, 10_000) == {3600: 1}
    assert reader.buckets(MINUTE, 1, 0, 10_000, "alpha") == {0: 2}
    assert reader.buckets(MINUTE, ALL, 0, 10_000, "alpha") == {0: 2}
    assert reader.buckets(MINUTE, ALL, 0, 10_000, "bravo") == {}
    assert reader.counts(HOUR, 0, 7200) == {1: 1}
    assert reader.counts(HOUR, 0, 7200, "alpha") == {1: 2}
    assert (reader.state().newest_minute, reader.state("alpha").newest_minute,
            reader.state("bravo").newest_minute) == (3600, 0, 0)
    assert reader.state().events == 1  # the default project's
    # alpha's own newer events drop its old minutes, and nobody else's.
    series.commit([(1200, alpha_all, 1), (1200, alpha, 1)],
                  [(0, alpha_all, 1), (0, alpha, 1)], 20, FINGERPRINT)
    assert reader.buckets(MINUTE, 1, 0, 10_000, "alpha") == {1200: 1}
    assert reader.buckets(HOUR, 1, 0, 10_000, "alpha") == {0: 3}
    assert reader.buckets(MINUTE, 1, 0, 10_000) == {3600: 1}
    series.reset(FINGERPRINT)
    assert reader.buckets(HOUR, 1, 0, 10_000, "alpha") == {}
    assert reader.state("alpha").newest_minute == 0
    series.close()


def test_a_store_in_an_unknown_version_or_shape_is_refused(tmp_path):
    series = store(tmp_path)
    series.db.execute("UPDATE state SET version = 99")
    series.close()
    with pytest.raises(CorruptSeries, match="version 99"):
        SeriesStore(tmp_path, 3600).open(FINGERPRINT)
    db = sqlite3.connect(tmp_path / "series.sqlite3")
    db.execute("INSERT INTO state SELECT * FROM state")
    db.commit()
    db.close()
    with pytest.raises(CorruptSeries, match="2 rows"):
        SeriesStore(tmp_path, 3600).open(FINGERPRINT)


@pytest.mark.parametrize("content", [b"garbage" * 100, b"\x00" * 4096, b"SQLite format 3\x00" + b"\x07" * 200])
def test_a_damaged_file_is_refused_and_set_aside(tmp_path, content):
    (tmp_path / "series.sqlite3").write_bytes(content)
    series = SeriesStore(tmp_path, 3600)
    with pytest.raises(CorruptSeries):
        series.open(FINGERPRINT)
    aside = series.set_aside()
    assert aside.name.startswith("series.sqlite3.bad-") and aside.read_bytes() == content
    assert series.open(FINGERPRINT).offset == 0


def test_the_reader_never_creates_the_store_and_follows_a_replaced_one(tmp_path):
    reader = SeriesReader(tmp_path)
    assert reader.state() is None and not (tmp_path / "series.sqlite3").exists()
    series = store(tmp_path)
    series.commit([(60, 1, 1), (60, ALL, 1)], [(0, 1, 1), (0, ALL, 1)], 2, FINGERPRINT)
    assert reader.state().offset == 2
    series.set_aside()
    series.open(FINGERPRINT)
    assert reader.state().offset == 0  # the new store, not the one set aside
    series.close()


def test_reset_empties_the_store(tmp_path):
    series = store(tmp_path)
    series.commit([(60, 1, 1), (60, ALL, 1)], [(0, 1, 1), (0, ALL, 1)], 2, FINGERPRINT)
    series.reset(FINGERPRINT)
    state = SeriesReader(tmp_path).state()
    assert (state.offset, state.events, state.newest_minute) == (0, 0, 0)
    assert SeriesReader(tmp_path).buckets(HOUR, ALL, 0, 10_000) == {}
    series.close()
