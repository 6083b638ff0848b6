"""RecBole's Config from the settings' layers, checked before any work starts.

Precedence (lowest first): the model's defaults (RecBole's or the plugin's yaml) <
`properties/dataset/<dataset>.yaml` (the working directory's, else the package's) <
`config_files` in order < `overrides` (the command line's `--key=value`). The process's own
`sys.argv` is never read. Every key must be known (`keys.check_keys`) and the common ones
well-typed (`values.check_values`); anything RecBole's Config raises becomes a ConfigError
naming the model and dataset.
"""

import sys
from unittest import mock

from recbole.config import Config
from recbole.utils import ModelType, get_model

from recbole_hybrid import registry
from recbole_hybrid.config import keys, values
from recbole_hybrid.config.files import dataset_config_file, read_yaml, read_yamls, resolve
from recbole_hybrid.errors import ConfigError, UserError


def config_inputs(model, dataset, config_files=(), overrides=None):
    """The config files (resolved, see `files.resolve`) and the config dict that give the
    precedence above."""
    overrides = dict(overrides or {})
    files = [f for f in [dataset_config_file(dataset), *map(resolve, config_files)] if f]
    model_file = registry.model_config_file(model)
    settings = {**read_yamls([model_file] if model_file else []), **read_yamls(files), **overrides}
    defaults = {}
    if "load_col" not in settings and get_model(model).type == ModelType.SEQUENTIAL:
        # RecBole's own default loads no timestamp, so histories would follow file order.
        defaults["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    if "show_progress" not in settings:
        defaults["show_progress"] = sys.stderr.isatty()
    return files, {**defaults, **overrides}


def build_config(model, dataset, config_files=(), overrides=None, scope="model", sources=None):
    """A checked RecBole Config with the precedence above. `scope="model"`: every override
    must be a setting of RecBole or this model; "any": of any model (a grid's shared
    settings). Keys of config files may always belong to other models. `sources`: where
    overrides come from, for messages ({key: "file:line"}; default their --key=value)."""
    registry.check_known(model)
    files, config_dict = config_inputs(model, dataset, config_files, overrides)
    file_settings = {path: read_yaml(path) for path in files}
    dataset_keys = file_settings.get(dataset_config_file(dataset), {})
    sources_given, sources = sources, {}  # key -> where it was set last, for the messages
    for path, settings in file_settings.items():
        sources.update(dict.fromkeys(settings, path))
    keys.check_keys(model, sources, "the config files (" + ", ".join(files) + ")",
                    scope="any", dataset_keys=dataset_keys)
    keys.check_keys(model, dict(overrides or {}), "the settings (--key=value)", scope=scope,
                    dataset_keys=dataset_keys)
    sources.update({key: f"--{key}" for key in overrides or {}}, **(sources_given or {}))
    try:
        typed = {**{k: v for f in file_settings.values() for k, v in f.items()},
                 **Config._convert_config_dict(None, dict(overrides or {}))}  # as RecBole reads them
        if "metrics" in typed:
            values.check_metric_names(typed["metrics"], f" (set by {sources['metrics']})")
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            # RecBole's own reading fails on a file without settings: leave those out
            config = Config(model, dataset, [f for f in files if file_settings[f]], config_dict)
    except UserError:
        raise
    except Exception as error:  # RecBole's Config raises many types for bad settings
        raise ConfigError(f"invalid configuration for {model} on {dataset}: "
                          f"{type(error).__name__}: {error}") from None
    values.check_values(config, sources)
    return config
