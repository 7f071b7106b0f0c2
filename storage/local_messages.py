"""Messages over a local (Unix) socket between the ingest and the worker on one machine: a
4-byte big-endian length, then the message's JSON (storage/stream/reads.py's documents, as
cluster mode sends them over NATS). worker/overview_answers.py answers; ask() asks (for
app/worker_overview.py, and `python -m worker status`)."""

import socket
import struct

from storage.stream import reads

LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024  # a length beyond this is damage, not a message


def read_message(stream):
    """The next message from a file-like `stream` (a socket's makefile("rb")), or None at its
    end. Raises ValueError for a length beyond MAX_MESSAGE or a body that is not JSON."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    length, = LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        raise ValueError(f"a message of {length} bytes")
    body = stream.read(length)
    if len(body) < length:
        return None
    return reads.decode(body)


def message(document):
    """`document` as sent: its length, then its JSON."""
    body = reads.encode(document)
    return LENGTH.pack(len(body)) + body


def ask(path, question, timeout):
    """Send `question` to the socket at `path` and return the answer, waiting at most
    `timeout` seconds for each step. Raises OSError (nobody listening, a timeout) or
    ValueError (an answer that is not one), or EOFError if the connection closes first."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conversation:
        conversation.settimeout(timeout)
        conversation.connect(str(path))
        conversation.sendall(message(question))
        with conversation.makefile("rb") as answers:
            answer = read_message(answers)
    if answer is None:
        raise EOFError("the connection closed without an answer")
    return answer
