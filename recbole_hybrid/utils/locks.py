"""Exclusive locks that die with their owner (`flock`): one process at a time may work on a
folder (a grid's output, a run being resumed)."""

import contextlib
import fcntl
import os

from recbole_hybrid.errors import OutputError


@contextlib.contextmanager
def exclusive(path, busy_message):
    """Hold an exclusive lock on `path` (a folder, or a file created if missing) for the
    block; OutputError(`busy_message`) if another process holds it."""
    flags = os.O_RDONLY if os.path.isdir(path) else os.O_RDWR | os.O_CREAT
    descriptor = os.open(path, flags, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(busy_message) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
