"""Where RecBole is installed, found without importing it."""

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=None)
def recbole_folder():
    """The folder of the installed `recbole` package."""
    return os.path.dirname(importlib.util.find_spec("recbole").origin)


def recbole_properties(*parts):
    """A path inside RecBole's own `properties/` folder."""
    return os.path.join(recbole_folder(), "properties", *parts)
