"""Plugin models by name, found the way RecBole finds its own.

`recbole.utils.get_model(name)` imports `recbole.model.<kind>_recommender.<name.lower()>`, and
`importlib.util.find_spec` answers from `sys.modules` first. Placing a plugin model's module
there makes the name resolve everywhere RecBole looks (Config, run_recbole,
objective_function, load_data_and_model, and worker processes that import this package).
The plugin's default yaml is read by `Config` through the hook in `compat.py`.
"""

import difflib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Optional

from recbole_hybrid.errors import UnknownModelError, shown
from recbole_hybrid.utils.paths import recbole_properties

# recbole.model's subpackage of each ModelType (by name: nothing here imports RecBole)
_SUBPACKAGE_OF_TYPE = {
    "GENERAL": "general_recommender",
    "SEQUENTIAL": "sequential_recommender",
    "CONTEXT": "context_aware_recommender",
    "KNOWLEDGE": "knowledge_aware_recommender",
}
_RECBOLE_SUBPACKAGES = list(_SUBPACKAGE_OF_TYPE.values()) + ["exlib_recommender"]


@dataclass(frozen=True)
class PluginModel:
    model_class: type
    config_file: Optional[str]


_plugins: dict = {}


def _registered():
    """The registered plugins; importing RecBole registers this package's own models (see
    `recbole_hybrid.__init__`)."""
    import recbole  # noqa: F401

    return _plugins


def register_model(model_class, config_file=None):
    """Make `model_class` resolvable by its class name in every RecBole entry point.

    `config_file` is the model's default yaml; `Config` reads it where RecBole reads
    `properties/model/<Model>.yaml` for its own models. Registering twice is harmless.
    """
    name = model_class.__name__
    subpackage = _SUBPACKAGE_OF_TYPE.get(getattr(getattr(model_class, "type", None), "name", None))
    if subpackage is None:
        raise TypeError(
            f"{name} has no RecBole model type: subclass a RecBole recommender such as "
            "recbole.model.abstract_recommender.SequentialRecommender"
        )
    if config_file is not None and not os.path.isfile(config_file):
        raise FileNotFoundError(f"default config of {name} not found: {config_file}")
    module_name = f"recbole.model.{subpackage}.{name.lower()}"
    module = sys.modules[model_class.__module__]
    if sys.modules.get(module_name) is not module:
        if _recbole_module_exists(name) or module_name in sys.modules:
            raise ValueError(
                f"cannot register {name}: RecBole already has a model module named "
                f"{module_name}; give the plugin model another name"
            )
        sys.modules[module_name] = module
    _plugins[name] = PluginModel(model_class, config_file)
    return model_class


def plugin_models():
    """Names of the registered plugin models, sorted."""
    return sorted(_registered())


def plugin_class(name):
    """The class of a registered plugin model, or None."""
    entry = _registered().get(name)
    return entry.model_class if entry else None


def plugin_config_file(name):
    """The default yaml of a plugin model, or None (not a plugin model, or none given)."""
    entry = _registered().get(name)
    return entry.config_file if entry else None


def model_config_file(name):
    """The default yaml `Config` reads for `name` (plugin or RecBole model), or None."""
    if name in _registered():
        return _plugins[name].config_file
    path = recbole_properties("model", f"{name}.yaml")
    return path if os.path.isfile(path) else None


def recbole_models(subpackage="sequential_recommender"):
    """Class names of RecBole's own models in one `recbole.model` subpackage, sorted."""
    from recbole.model.abstract_recommender import AbstractRecommender

    package = importlib.import_module(f"recbole.model.{subpackage}")
    return sorted(
        name
        for name, obj in vars(package).items()
        if isinstance(obj, type)
        and issubclass(obj, AbstractRecommender)
        and obj.__module__.startswith(package.__name__ + ".")
    )


def is_known(name):
    """Whether `get_model(name)` can find a module for `name` (plugin or RecBole)."""
    return name in _registered() or _recbole_module_exists(name)


def check_known(name):
    """UnknownModelError, naming the valid models, unless `is_known(name)`."""
    if not is_known(name):
        raise UnknownModelError(unknown_model_message(name))


def _recbole_module_exists(name):
    # Look for the module file without importing it: RecBole's exlib package imports
    # xgboost and lightgbm, which is how an unknown name used to surface.
    for subpackage in _RECBOLE_SUBPACKAGES:
        spec = importlib.util.find_spec(f"recbole.model.{subpackage}")
        for folder in spec.submodule_search_locations or []:
            if os.path.isfile(os.path.join(folder, f"{name.lower()}.py")):
                return True
    return False


def unknown_model_message(name):
    """One paragraph naming the valid models, with a close match if there is one."""
    plugin = plugin_models()
    sequential = recbole_models()
    close = difflib.get_close_matches(name, plugin + sequential, n=1, cutoff=0.6)
    close += [m for m in plugin + sequential if m.lower() == name.lower()]
    hint = f" Did you mean '{close[-1]}'?" if close else ""
    return (
        f"Unknown model '{shown(name)}'.{hint} Model names are case-sensitive. "
        f"Models of recbole-hybrid: {', '.join(plugin) or 'none registered'}. "
        f"RecBole's sequential models: {', '.join(sequential)}. "
        "RecBole's general, context-aware and knowledge-aware models are accepted by "
        "their class names too."
    )
