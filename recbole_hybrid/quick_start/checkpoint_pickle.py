"""The unpickler RecBole's checkpoints are read with: torch.load's `pickle_module`.

A checkpoint is a pickle, and unpickling may call whatever the file names. Torch's
`weights_only` reader cannot take RecBole's files (they are written with pickle protocol 4,
whose opcodes it refuses), so they are read with an unpickler that resolves only the names
such a checkpoint holds (`_allowed`): RecBole's Config and enums, model classes of RecBole, of
this package and of registered plugins, tensors, devices, numpy scalars. Anything else is
`Refused` before it is called. `recbole_hybrid.compat` reads RecBole's own loads (resume, the
best model after training, load_data_and_model) through it too.
"""

import importlib
import pickle

from recbole_hybrid import registry

# (module, name) a RecBole checkpoint holds besides model classes and RecBole's enums
_NAMES = {
    ("collections", "OrderedDict"), ("torch", "device"), ("torch", "Size"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("recbole.config.configurator", "Config"), ("yaml.loader", "FullLoader"),
    ("_codecs", "encode"),  # bytes, as pickle protocol 2 writes them
}
_MODEL_PACKAGES = ("recbole.model.", "recbole_hybrid.models.")


class Refused(pickle.UnpicklingError):
    """The pickle names something a RecBole checkpoint never holds."""


def _allowed(module, name):
    """The object `module.name` if a RecBole checkpoint may name it, else None. Only
    RecBole's, this package's and registered plugins' model modules are imported here."""
    if (module, name) in _NAMES:
        return getattr(importlib.import_module(module), name, None)
    if module == "recbole.utils.enum_type":  # RecBole's enums, not what the module imports
        found = getattr(importlib.import_module(module), name, None)
        return found if isinstance(found, type) and found.__module__ == module else None
    plugin = registry.plugin_class(name)
    if plugin is not None and plugin.__module__ == module:
        return plugin
    if module.startswith(_MODEL_PACKAGES):
        from recbole.model.abstract_recommender import AbstractRecommender

        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            return None
        if isinstance(found, type) and issubclass(found, AbstractRecommender):
            return found
    return None


# This module is torch.load's pickle_module: torch subclasses `Unpickler` (for tensors and
# storages) and keeps its find_class for every other name; `load` reads files that are not
# zips (torch's legacy format starts with pickles read by it; a plain pickle is read by it whole)
class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = _allowed(module, name)
        if found is None:
            raise Refused(f"{module}.{name}")
        return found


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


def refusal(path, refused):
    """The sentence that says why the file at `path` was not read."""
    return (f"{path} is a pickle that names {refused}, which a RecBole checkpoint never holds: "
            "reading it could run any code it carries, so it was not read")
