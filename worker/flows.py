"""The flow rule: what one session adds to its experience's flow.

A session (worker/sessions.py) is a sequence of screen views. What it adds is counted in the
hour it starts in, under the revision of its first view (the revision the person began), so
that, as with the overview's other session figures, a session is counted once, and taken
out and put in again whole when a late view changes it:

    revision     the session, its duration and whether it bounced (one view), per revision

    reach        each screen it viewed, once, however often it came back to it
    position     for each screen reached, the step at which it first was (1 for the first
                 view; MAX_POSITION for any step from there on)
    to_reach     for each screen reached, seconds from the session's first view to the
                 screen's first view: a goal's time to completion
    on_screen    for each view but the last, seconds to the next view, on that view's screen
                 (the last view's time is not known: the session ended there)
    exits        (exit screen, reached screen) for each screen reached, the exit screen
                 being its last view's: a screen's exits are the pairs (it, it); a goal's
                 sessions that left from X without reaching it are exits(X, X) less
                 exits(X, goal); a screen's reach is the sum of its pairs
    moves        (from, to) for each two consecutive views: the paths people take. The
                 moves out of a screen are its views less its exits.

A goal reached twice in a session counts once, at its first view.
"""

from storage.views.overview_store import (MAX_POSITION, ON_SCREEN, POSITIONS,
                                          REVISION_BOUNCES, REVISION_DURATION_SUM,
                                          REVISION_DURATIONS, REVISION_SESSIONS, TO_REACH)
from storage.views.sketches import duration_bucket


def add_session(changes, experience, session, sign):
    """Count a session in (sign 1) or out (sign -1) of `changes` (storage/views/overview_store's
    Changes)."""
    first, last, views = session
    _, _, began_on = views[0]  # the revision the session began on
    key = (experience, first - first % 3600, began_on)
    row = changes.revision(key)
    row[REVISION_SESSIONS] += sign
    row[REVISION_DURATION_SUM] += sign * (last - first)
    row[REVISION_BOUNCES] += sign * (len(views) == 1)
    _bump(row[REVISION_DURATIONS], duration_bucket(last - first), sign)
    reached = {}  # screen -> (position, moment), at its first view
    for position, (moment, screen, _) in enumerate(views, 1):
        if screen not in reached:
            reached[screen] = (min(position, MAX_POSITION), moment)
    _, exit_screen, _ = views[-1]
    exits = changes.flow_exits
    for screen, (position, moment) in reached.items():
        pair = (*key, exit_screen, screen)
        exits[pair] = exits.get(pair, 0) + sign
        row = changes.flow_screen(key, screen)
        _bump(row[POSITIONS], position, sign)
        _bump(row[TO_REACH], duration_bucket(moment - first), sign)
    moves = changes.flow_moves
    for (moment, screen, _), (after, following, _) in zip(views, views[1:]):
        _bump(changes.flow_screen(key, screen)[ON_SCREEN], duration_bucket(after - moment),
              sign)
        move = (*key, screen, following)
        moves[move] = moves.get(move, 0) + sign


def extend_session(changes, experience, before, after):
    """Count in what `after` adds to `before`, a session it extends at its end
    (worker/sessions.extend: `before`'s views are StoredViews, and `after`'s their
    extension by views none of which sorts before `before`'s last): the same changes as
    counting `before` out and `after` in, in the time of the views added rather than of
    the whole session, whose views are not read. A session that gains views as it goes
    (the common case: an install's next batch) would otherwise cost its whole length each
    time, and a long one more each commit."""
    first, last, views = before
    _, later_last, extended = after
    known, began_on, last_view, reached = views.summary()
    added_views = extended.added
    key = (experience, first - first % 3600, began_on)
    row = changes.revision(key)
    row[REVISION_DURATION_SUM] += later_last - last
    row[REVISION_BOUNCES] -= known == 1
    _bump(row[REVISION_DURATIONS], duration_bucket(last - first), -1)
    _bump(row[REVISION_DURATIONS], duration_bucket(later_last - first), 1)
    reached = set(reached)  # each kept its first view, so its row
    added = {}
    for position, (moment, screen, _) in enumerate(added_views, known + 1):
        if screen not in reached and screen not in added:
            added[screen] = (min(position, MAX_POSITION), moment)
    exits = changes.flow_exits
    _, exit_before, _ = last_view
    _, exit_after, _ = added_views[-1]
    if exit_after != exit_before:  # every screen reached before leaves from another one now
        for screen in reached:
            pair = (*key, exit_before, screen)
            exits[pair] = exits.get(pair, 0) - 1
            pair = (*key, exit_after, screen)
            exits[pair] = exits.get(pair, 0) + 1
    for screen, (position, moment) in added.items():
        pair = (*key, exit_after, screen)
        exits[pair] = exits.get(pair, 0) + 1
        row = changes.flow_screen(key, screen)
        _bump(row[POSITIONS], position, 1)
        _bump(row[TO_REACH], duration_bucket(moment - first), 1)
    moves = changes.flow_moves
    for (moment, screen, _), (after_moment, following, _) in zip([last_view, *added_views],
                                                                 added_views):
        _bump(changes.flow_screen(key, screen)[ON_SCREEN],
              duration_bucket(after_moment - moment), 1)
        move = (*key, screen, following)
        moves[move] = moves.get(move, 0) + 1


def _bump(histogram, bucket, sign):
    histogram[bucket] = histogram.get(bucket, 0) + sign
