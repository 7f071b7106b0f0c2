"""The ingest's counted columns (storage/log/counted.py) of one commit, read as the overview's
rule reads an event (worker/overview.py, SdkEvents._extract), but as arrays: an install's
key, a user's, a screen view's experience, screen, revision and names, a row an event, with
no Python object made a row.

SdkEvents gathers a commit's sections as they are read (a few slices a group); rows() maps
them at once, a project at a time: the commit's equal texts found with one dict, keys
made once a distinct install or user, the rows that break the format set aside. FactCounter
takes the arrays as they are; OverviewCounter takes them as SdkEvents' views and links
(SdkEvents.columns_as_views()).
"""

import itertools

import numpy

from storage.log.counted import NONE

ROWS = numpy.dtype([("time", "<i8"), ("experience", "<i8"), ("index", "<u2", (6,))])
INSTALL, USER, SCREEN, REVISION, EXPERIENCE_NAME, SCREEN_NAME = range(6)
# The rule's range of a moment (seconds): 0 <= moment < 2**40.
END_MS = 2**40 * 1000


class ProjectRows:
    """One project's rows of a commit, those that keep to the format: `moment`,
    `experience` (-1: not a screen view), `device` and `carried` (the keys of its install
    and user, 0 for none), each an int64 array; `text` (n × 6: each index's text, as a
    position in `texts`, the commit's texts as its sections list them: a text stands for
    where it is first listed, so that equal texts have equal positions) and `named` (n × 6:
    whether the index names a text)."""

    __slots__ = ("project", "moment", "experience", "device", "carried", "text", "named",
                 "texts")

    def __init__(self, project, moment, experience, device, carried, text, named, texts):
        self.project, self.moment, self.experience = project, moment, experience
        self.device, self.carried, self.text, self.named = device, carried, text, named
        self.texts = texts

    def views(self):
        """Which rows are screen views (a boolean array)."""
        return self.experience >= 0

    def positions(self, column, rows):
        """The text of `column` in each of `rows` (a boolean array), as its position in
        `texts`; len(texts) where it names none."""
        return numpy.where(self.named[rows, column], self.text[rows, column], len(self.texts))

    def text_of(self, column, rows, missing):
        """The texts of `column` in `rows`, as a list; `missing` where it names none."""
        texts = self.texts + [missing]
        return list(map(texts.__getitem__, self.positions(column, rows).tolist()))


def rows(sections, key, set_aside):
    """[ProjectRows] of `sections` ([counted.Section], a commit's, in the order read), one a
    project. `key(project, kind, text)` is an install's ("anon:") or a user's ("user:") key;
    each row that breaks the format is set aside as (None, why) in `set_aside`."""
    by_project = {}
    for section in sections:
        by_project.setdefault(section.texts[0], []).append(section)
    return [_project_rows(project, listed, key, set_aside)
            for project, listed in by_project.items()]


def _project_rows(project, sections, key, set_aside):
    table = numpy.frombuffer(b"".join(section.rows for section in sections), ROWS)
    counts = numpy.fromiter((section.count for section in sections), numpy.int64,
                            len(sections))
    sizes = numpy.fromiter((len(section.texts) for section in sections), numpy.int64,
                           len(sections))
    section_of = numpy.repeat(numpy.arange(len(sections)), counts)
    index = table["index"].astype(numpy.int64)
    time_ms, experience = table["time"], table["experience"]
    broken = ((index.max(axis=1, initial=0) >= sizes[section_of])
              | (index[:, INSTALL] == NONE) | (time_ms < 0) | (time_ms >= END_MS)
              | (experience < -1))
    if broken.any():
        set_aside.extend([(None, "its counted columns are out of range (an index past "
                                 "their texts, no install, or a time or experienceID out "
                                 "of range)")] * int(broken.sum()))
        kept = ~broken
        index, time_ms, experience = index[kept], time_ms[kept], experience[kept]
        section_of = section_of[kept]
    # Each text of the commit stands for where it is first listed: the same text in two
    # requests is one install, one screen. One pass in C (setdefault over a count).
    texts = list(itertools.chain.from_iterable(section.texts for section in sections))
    numbered = numpy.fromiter(map({}.setdefault, texts, itertools.count()), numpy.int64,
                              len(texts))
    first_text = numpy.concatenate(([0], numpy.cumsum(sizes)[:-1]))
    text = numbered[first_text[section_of][:, None] + index]
    named = index != NONE
    return ProjectRows(project, time_ms // 1000, experience,
                       _keys(text, named, INSTALL, texts, lambda text: key(project, "anon:", text)),
                       _keys(text, named, USER, texts, lambda text: key(project, "user:", text)),
                       text, named, texts)


def _keys(text, named, column, texts, key):
    """The key of each row's text in `column` (0 where it names none), each distinct text
    keyed once."""
    chosen = text[:, column]
    present = named[:, column]
    wanted = numpy.flatnonzero(numpy.bincount(chosen[present], minlength=len(texts)))
    keys = numpy.zeros(len(texts), numpy.int64)
    keys[wanted] = [key(texts[at]) for at in wanted.tolist()]
    return numpy.where(present, keys[chosen], 0)
