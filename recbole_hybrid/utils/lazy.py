"""Public names of a package that import their module on first use (PEP 562), so that
importing the package costs nothing until a name is used."""

import importlib


def lazy_attributes(package, modules):
    """A module-level `__getattr__` for `package` that returns `modules[name]`'s `name`."""

    def __getattr__(name):
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(modules[name]), name)

    return __getattr__
