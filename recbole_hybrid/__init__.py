"""recbole-hybrid: Mamba-based sequential recommenders as RecBole 1.2.1 models.

`import recbole_hybrid` is all a user needs: the RecBole fixes of `compat` are applied and the
plugin models registered, so RecBole resolves them by name everywhere. Both happen as RecBole
is imported (at once if it already is), so that commands that need neither torch nor RecBole
(`recbole-hybrid --help`, `convert`) do not load them; the public names below are imported on
first use (PEP 562).
"""

__version__ = "0.1.0"

import importlib.abc  # noqa: E402
import importlib.machinery  # noqa: E402
import sys  # noqa: E402

from recbole_hybrid.utils.lazy import lazy_attributes  # noqa: E402

_MODULES = {
    "run": "recbole_hybrid.quick_start.runner",
    "Recommender": "recbole_hybrid.serving.recommender",
    "register_model": "recbole_hybrid.registry",
    "plugin_models": "recbole_hybrid.registry",
    "UserError": "recbole_hybrid.errors",
}
__all__ = sorted(_MODULES) + ["__version__"]
__getattr__ = lazy_attributes(__name__, _MODULES)

_activated = False


def _activate():
    """Apply the RecBole fixes and register the plugin models (once)."""
    global _activated
    if _activated:
        return
    _activated = True
    from recbole_hybrid import compat

    compat.apply()
    import recbole_hybrid.models  # noqa: F401  (registers Mamba4Rec, MaTrRec, MLSA4Rec)


class _ActivateAfterRecBole(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `recbole` as the path finder does, and activates this package once RecBole's
    `__init__` has run, before the import that asked for it goes on."""

    def find_spec(self, name, path=None, target=None):
        if name != "recbole":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            self.loader = spec.loader
            spec.loader = self
        return spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        sys.meta_path.remove(self)
        _activate()


if "recbole" in sys.modules:
    _activate()
elif not any(isinstance(finder, _ActivateAfterRecBole) for finder in sys.meta_path):
    sys.meta_path.insert(0, _ActivateAfterRecBole())
