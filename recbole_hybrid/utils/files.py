"""Writing files so that nothing is lost: a folder checked for writing before any work
starts, a file replaced in one step (readers see the old one or the new one, never part of
one), the first free name beside earlier results, and one sentence for a failed write."""

import contextlib
import errno
import os
import re

from recbole_hybrid.errors import OutputError


def writable_folder(path, what="output folder"):
    """The absolute path; OutputError now if `path` cannot become a folder this process
    writes into."""
    if not str(path).strip():
        raise OutputError(f"{what}: the path is empty; pass a folder")
    path = os.path.abspath(path)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"{what} {path} cannot be created: {existing} is a file, not a "
                          "folder; pass another path or move the file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} cannot be written: {existing} is not writable by "
                          "this user; pass another path")
    return path


def describe_os_error(error, path=None):
    """One sentence for an OSError while writing outputs."""
    where = path or error.filename or "an output"
    if error.errno == errno.ENOSPC:
        return f"the disk is full while writing {where}; free some space and run again"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{where} cannot be written (permission denied or read-only); pass another path"
    return f"{where} cannot be written ({error.strerror or error})"


@contextlib.contextmanager
def replaced_atomically(path, suffix=""):
    """A temporary path beside `path` to write to; when the block ends without an error it
    replaces `path` in one step, else it is removed. `suffix` ends the temporary name
    (np.savez insists on .npz)."""
    partial = f"{path}.{os.getpid()}.partial{suffix}"
    try:
        yield partial
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)


PARTIAL = re.compile(r"\.(\d+)\.partial(\.\w+)?$")  # replaced_atomically's names: pid


def remove_stale_partials(folder):
    """Remove the temporary files of `replaced_atomically` (and of results.json) under
    `folder` whose process is gone (killed while writing); their paths."""
    removed = []
    for root, _, names in os.walk(folder):
        for name in names:
            found = PARTIAL.search(name)
            if found and not _alive(int(found.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(root, name))
                    removed.append(os.path.join(root, name))
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def write_text_atomically(path, text):
    with replaced_atomically(path) as partial, open(partial, "w", encoding="utf-8") as f:
        f.write(text)


def next_free(folder, name):
    """`folder/name`, or `name` with -2, -3, ... before its extension: the first that does
    not exist (results.json, results-2.json, ...)."""
    stem, extension = os.path.splitext(name)
    n = 1
    while True:
        path = os.path.join(folder, name if n == 1 else f"{stem}-{n}{extension}")
        if not os.path.exists(path):
            return path
        n += 1
