"""Setting names checked before any work starts.

Every key must be one that RecBole's framework (config, data, trainer, evaluator), the model
or the dataset files read; a typo gets a did-you-mean. The known keys are collected from
RecBole's own yamls and from the `config["key"]` reads in its sources and the model's, so
they follow the installed versions. `--key=value` settings and tuning parameters must be
known to the model being run (`scope="model"`); config files and a grid's shared settings
may also hold keys of other models (`scope="any"`).
"""

import difflib
import functools
import glob
import inspect
import os
import re

import yaml

from recbole_hybrid import registry
from recbole_hybrid.errors import ConfigError, shown
from recbole_hybrid.utils.paths import recbole_folder, recbole_properties

_PACKAGE = os.path.dirname(os.path.dirname(__file__))
_KEY_READ = re.compile(
    r"""config(?:_dict)?(?:\[|\.get\(|\.setdefault\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")
# The settings of a multi-process run's processes (RecBole's and ours), in no yaml.
DDP_KEYS = frozenset({"nproc", "world_size", "offset", "ip", "port", "local_rank", "ddp_backend"})
# Other keys set or read by this package and RecBole, in no yaml.
_EXTRA_KEYS = DDP_KEYS | {"encoding", "benchmark_filename", "model", "dataset", "config_files"}


def _yaml_keys(paths):
    keys = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            keys |= set(yaml.safe_load(f) or {})
    return keys


def _source_keys(paths):
    keys = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            keys |= set(_KEY_READ.findall(f.read()))
    return keys


@functools.lru_cache(maxsize=None)
def framework_keys():
    """Keys RecBole reads whatever the model: its general yamls and its non-model sources."""
    properties = recbole_properties()
    yamls = [os.path.join(properties, "overall.yaml"),
             *glob.glob(os.path.join(properties, "quick_start_config", "*.yaml")),
             *[p for p in glob.glob(os.path.join(properties, "dataset", "*.yaml"))
               if not p.endswith("url.yaml")]]
    sources = [p for p in glob.glob(os.path.join(recbole_folder(), "**", "*.py"), recursive=True)
               if os.sep + "model" + os.sep not in p]
    ours = glob.glob(os.path.join(_PACKAGE, "**", "*.py"), recursive=True)
    return frozenset(_yaml_keys(yamls) | _source_keys(sources + ours) | _EXTRA_KEYS)


@functools.lru_cache(maxsize=None)
def model_keys(model):
    """Keys the model reads: its default yaml and the config reads of its class hierarchy."""
    from recbole.utils import get_model

    model_class = get_model(model)
    yaml_file = registry.model_config_file(model)
    sources = {inspect.getsourcefile(cls) for cls in model_class.__mro__
               if cls.__module__.startswith(("recbole", "recbole_hybrid")) or cls is model_class}
    return frozenset(_yaml_keys([yaml_file] if yaml_file else []) | _source_keys(sources))


@functools.lru_cache(maxsize=None)
def _all_model_keys():
    """{key: [models that read it]} over RecBole's models and the registered plugins."""
    owners = {}
    for path in glob.glob(recbole_properties("model", "*.yaml")):
        name = os.path.splitext(os.path.basename(path))[0]
        for key in _yaml_keys([path]):
            owners.setdefault(key, []).append(name)
    for name in registry.plugin_models():
        for key in model_keys(name):
            owners.setdefault(key, []).append(name)
    for key in _source_keys(glob.glob(os.path.join(recbole_folder(), "model", "**", "*.py"), recursive=True)):
        owners.setdefault(key, [])
    return owners


def foreign_keys(model, settings):
    """The keys of `settings` that other models read and `model` does not (a grid's shared
    settings for its other models)."""
    own = framework_keys() | model_keys(model)
    return sorted(k for k in settings if k in _all_model_keys() and k not in own)


def check_keys(model, settings, where, scope="model", dataset_keys=()):
    """Raise ConfigError for keys of `settings` nobody reads. `where` names their source
    (e.g. "--key=value"); `dataset_keys` are those of the dataset's own yaml."""
    known = framework_keys() | model_keys(model) | set(dataset_keys)
    if scope == "any":
        known |= set(_all_model_keys())
    unknown = sorted(k for k in settings if k not in known)
    if not unknown:
        return
    others = _all_model_keys()
    reasons = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
        if key in others and scope == "model":
            owners = ", ".join(sorted(others[key])[:4]) or "other RecBole models"
            reasons.append(f"'{shown(key)}' is a setting of {owners}, not of {model}"
                           + (f" (did you mean '{close[0]}'?)" if close else ""))
        else:
            reasons.append(f"'{shown(key)}' is not a setting of RecBole or {model}"
                           + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(
        f"unknown setting{'s' if len(unknown) > 1 else ''} in {where}: {'; '.join(reasons)}. "
        f"Settings are RecBole's (see its overall.yaml), the model's "
        f"(properties/model/{model}.yaml) and the dataset's; names are case-sensitive."
    )


