"""The session rule: one device's screen views of one experience, split where a gap is longer
than the timeout.

The sessions of a set of screen views are the maximal runs in time order with no gap longer
than the timeout: the connected parts of the views when each is joined to any other at most
the timeout away. That depends only on the set, never on the order the views arrive in, so
each view is placed as it comes: it joins every session it falls within the timeout of
(a late view can stretch one session, or join two into one), or begins a session of its own.

A session is [first, last, screens]: its first and last screen view (device time, seconds)
and how many screen views it holds. Its duration is last - first.
"""


def place(sessions, moment, timeout):
    """Add a screen view at `moment` to `sessions` (one device's sessions of one experience,
    sorted by first, each more than `timeout` from the next) and keep them so.

    Returns (the sessions it replaced, the session it is now in): the replaced ones are gone
    from `sessions` and the new one is in it, in place.
    """
    low = 0
    while low < len(sessions) and sessions[low][1] + timeout < moment:
        low += 1
    high = low
    while high < len(sessions) and sessions[high][0] - timeout <= moment:
        high += 1
    replaced = sessions[low:high]
    if len(replaced) == 1:  # the usual case: a view within one session's reach
        first, last, screens = replaced[0]
        joined = [min(moment, first), max(moment, last), screens + 1]
    elif replaced:
        joined = [min(moment, replaced[0][0]), max(moment, replaced[-1][1]),
                  1 + sum(session[2] for session in replaced)]
    else:
        joined = [moment, moment, 1]
    sessions[low:high] = [joined]
    return replaced, joined

