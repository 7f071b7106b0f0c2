"""Projects: many apps counted by one engine, each apart (the ingest's projects file,
app/projects.py, says which token writes and reads which).

A project is named by its id, a short slug. Every event belongs to one project, the project
of the token it came with, and keeps its id from the moment it is stored:

    data1           a named project's id is the prefix of each of its tokens, `shop:1`
                    (storage/log/format.py); the default project's tokens are bare ids, as
                    the assignment has them
    data1.details   a group names its project ("project"; storage/log/details.py)
    data2           the default project's counts where the assignment has them, each named
                    project's under "projects" (storage/checkpoint.py)
    the views       an experience key per (project, experience id) in each store
                    (storage/views/derived_store.py's ExperienceKeys); the people and
                    installs of a named project are hashed with its id
    the stream      in cluster mode the same tokens, and a header naming the project of a
                    message's details (storage/stream/names.py)

The default project (id "") is every event written with no project: with no projects file,
every event, byte for byte as before projects existed.
"""

import re

DEFAULT = ""
MAX_LEN = 40
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,%d}" % (MAX_LEN - 1))
ID_RULE = (f"1 to {MAX_LEN} characters: lowercase letters, digits, '-' and '_', beginning "
           "with a letter or a digit")


def is_project_id(text):
    """True if `text` is a named project's id (the default's, "", is not one)."""
    return type(text) is str and _ID.fullmatch(text) is not None


def person_text(project, text):
    """What an install's or a user's key is hashed from (storage/views/sketches.person_key):
    `text` ("anon:<id>", "user:<id>") as it is in the default project; prefixed with the
    project's id and a '/' in a named one, which no default project's text begins with."""
    return text if not project else f"{project}/{text}"
