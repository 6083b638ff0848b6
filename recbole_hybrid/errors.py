"""Errors a user can fix: the command line prints their message, never a traceback."""


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""


class UnknownModelError(UserError, ValueError):
    """A model name that neither this plugin nor RecBole defines."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset whose atomic files are missing and could not be downloaded."""


class InvalidDatasetError(UserError, ValueError):
    """Atomic files that exist but cannot be used as asked (e.g. a missing column)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or resumed."""


class ConfigError(UserError, ValueError):
    """Hyperparameters a model cannot be built with."""
