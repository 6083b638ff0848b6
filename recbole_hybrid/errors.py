"""Every error class of the package: errors a user can fix, and interruptions. The command
line prints their message (one paragraph: what was wrong, where, how to fix it), never a
traceback."""


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it (exit code 2)."""


class UnknownModelError(UserError, ValueError):
    """A model name that neither this plugin nor RecBole defines."""


class ConfigError(UserError, ValueError):
    """Settings a run cannot be started with: unknown keys, wrong types, impossible values."""


class DataError(UserError, ValueError):
    """Data files that are missing or cannot be used as asked."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A dataset whose atomic files are missing and could not be downloaded."""


class InvalidDatasetError(DataError):
    """Atomic files that exist but cannot be used as asked (format, columns, values)."""


class MalformedInputError(UserError, ValueError):
    """Raw rows given to `convert` that do not fit the declared format."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read, resumed or loaded into the model."""


class BundleError(CheckpointError):
    """A bundle that cannot be read: corrupted, not a bundle, or of another format version."""


class InvalidQueryError(UserError, ValueError):
    """A recommendation request that cannot be answered: unknown user, no known item, bad k."""


class OutputError(UserError):
    """An output (run folder, results, checkpoint) that cannot be written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the work; the message says what was kept and how to go on
    (exit code 130). A KeyboardInterrupt, so that `except Exception` never swallows it."""


def shown(name, limit=60):
    """`name` for a message: cut after `limit` characters, saying how long it was."""
    name = str(name)
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name)} characters)"


def last_line(text):
    """The last non-blank line of an error text (its message after a traceback), or "-"."""
    lines = str(text or "").strip().splitlines()
    return lines[-1] if lines else "-"
