"""data1, the event log: its on-disk format, written down once.

The writer (storage/log/writer.py) and the reader (storage/log/reader.py) both follow this
page; the file's name and place are in storage/layout.py.

Format
    data1 is a sequence of records. A record is one experience id in canonical ASCII
    decimal (no sign, no leading zeros, 0 <= id <= 2**63 - 1) followed by one space:

        1 100 1 1 

    An event of a named project (storage/projects.py) has its project's id and a colon
    before its id:

        1 shop:7 1 shop:7 

    The writer only ever appends. Readers accept any ASCII whitespace as a separator, so
    a file edited by hand with newlines still reads the same.

Invariants
    * A token is complete only when a separator follows it. Bytes after the last separator
      are a *torn tail*: the writer died in the middle of a write, so they were never
      acknowledged. The writer removes them when it opens the log; readers never consume
      them.
    * A complete token that is not a canonical id, bare or after a project's id (garbage
      written by something else, NUL bytes left by a power loss) is skipped and counted as
      skipped; it never stops a reader.
    * At most MAX_UNSYNCED bytes at the end of data1 were ever written and not yet synced
      (the writer syncs before it writes more). A power loss can lose any pages of those,
      which then read as NULs, or cut the file short; everything before them is durable.
      storage/log/details.py's repair relies on it to tell a torn data1 from another one.
"""

from storage.projects import MAX_LEN as MAX_PROJECT_LEN
from storage.projects import is_project_id

SEPARATOR = b" "
# Exactly the bytes that bytes.split() splits on, so a reader can split a block with it.
SEPARATORS = b" \t\n\r\x0b\x0c"

MAX_UNSYNCED = 8 * 1024 * 1024
MAX_ID = 2**63 - 1
MAX_ID_LEN = len(str(MAX_ID))
MAX_TOKEN_LEN = MAX_PROJECT_LEN + 1 + MAX_ID_LEN


def encode(ids, project=""):
    """Return the records for `ids` (valid ids) of `project` as the bytes to append."""
    if project:
        return "".join([f"{project}:{value} " for value in ids]).encode("ascii")
    return (" ".join(map(str, ids)) + " ").encode("ascii")


def parse_key(token):
    """(project, id) of a complete token, "" the default project; None if it is not one."""
    if b":" not in token:
        value = parse_token(token)
        return None if value is None else ("", value)
    project, _, rest = token.partition(b":")
    value = parse_token(rest)
    if value is None:
        return None
    project = project.decode("ascii", "replace")
    return (project, value) if is_project_id(project) else None


def parse_token(token):
    """Return the id a complete bare token stands for, or None if it is not a canonical id."""
    if (
        0 < len(token) <= MAX_ID_LEN
        and token.isdigit()  # bytes.isdigit() is ASCII-only: no signs, '_' or spaces
        and (token[0] != 0x30 or len(token) == 1)  # no leading zeros: one spelling per id
    ):
        value = int(token)
        if value <= MAX_ID:
            return value
    return None


def last_separator(buf):
    """Index of the last separator byte in `buf`, or -1 if it holds none."""
    last = -1
    # The writer's own separator first: once it is found, the others need only be looked
    # for after it, so a block is scanned about once rather than six times.
    for sep in (b" ", b"\n", b"\t", b"\r", b"\x0b", b"\x0c"):
        last = max(last, buf.rfind(sep, last + 1))
    return last


