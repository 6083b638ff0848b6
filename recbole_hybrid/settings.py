"""A RecBole Config from the settings' layers, checked before any work starts.

Precedence (lowest first): the model's defaults (RecBole's or the plugin's yaml) <
`properties/dataset/<dataset>.yaml` < `config_files` in order < `overrides` (the command
line's `--key=value`). The process's own `sys.argv` is never read. Every key must be known
(`validate.check_keys`) and the common ones well-typed (`validate.check_values`); anything
RecBole's Config raises becomes a ConfigError naming the model and dataset.
"""

import os
import sys
from unittest import mock

import torch
import yaml
from recbole.config import Config
from recbole.utils import ModelType, get_model

from recbole_hybrid import registry, validate
from recbole_hybrid.errors import CheckpointError, ConfigError, UserError

DEFAULT_MODEL = "MaTrRec"
DEFAULT_DATASET = "ml-100k"
REPOSITORY_PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "properties")
# What a resumed run may change: anything else would train another model than the checkpoint's.
RESUMABLE_KEYS = {"epochs", "learning_rate", "weight_decay", "stopping_step", "eval_step",
                  "train_batch_size", "eval_batch_size", "show_progress", "data_path", "state",
                  "gpu_id", "use_gpu", "worker", "mamba_impl"}


def dataset_config_file(dataset):
    """`properties/dataset/<dataset>.yaml` from the working directory, else the repository's."""
    for folder in (os.path.join(os.getcwd(), "properties"), REPOSITORY_PROPERTIES):
        path = os.path.join(folder, "dataset", f"{dataset}.yaml")
        if os.path.isfile(path):
            return path
    return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<: *anchor` may be overridden
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"`{key}` is set twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path, what="config file"):
    """A yaml file's mapping; a missing file, a syntax error or a non-mapping is a UserError."""
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{what} {where} is not valid yaml ({problem}); fix the line, "
                          "e.g. `key: value` pairs with spaces, not tabs, for indentation") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text (utf-8) file") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{what} {path} must hold `key: value` settings, but holds a "
                          f"{type(content).__name__}")
    return content


def read_yamls(files, what="config file"):
    """The settings of several yaml files, later files winning."""
    settings = {}
    for path in files:
        settings.update(read_yaml(path, what))
    return settings


def config_inputs(model, dataset, config_files=(), overrides=None):
    """The config files and the config dict that give the precedence above."""
    overrides = dict(overrides or {})
    files = [f for f in [dataset_config_file(dataset), *config_files] if f]
    model_file = registry.model_config_file(model)
    settings = {**read_yamls([model_file] if model_file else []), **read_yamls(files), **overrides}
    defaults = {}
    if "load_col" not in settings and get_model(model).type == ModelType.SEQUENTIAL:
        # RecBole's own default loads no timestamp, so histories would follow file order.
        defaults["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    if "show_progress" not in settings:
        defaults["show_progress"] = sys.stderr.isatty()
    return files, {**defaults, **overrides}


def build_config(model, dataset, config_files=(), overrides=None, keys="model"):
    """A checked RecBole Config with the precedence above. `keys="model"`: every override
    must be a setting of RecBole or this model; "any": of any model (a grid's shared
    settings). Keys of config files may always belong to other models."""
    if not registry.is_known(model):
        raise UserError(registry.unknown_model_message(model))
    files, config_dict = config_inputs(model, dataset, config_files, overrides)
    file_settings = {path: read_yaml(path) for path in files}
    dataset_file = dataset_config_file(dataset)
    dataset_keys = file_settings.get(dataset_file, {})
    sources = {}  # key -> where it was set last, for the messages
    for path, settings in file_settings.items():
        sources.update(dict.fromkeys(settings, path))
    validate.check_keys(model, sources, "the config files (" + ", ".join(files) + ")",
                        scope="any", dataset_keys=dataset_keys)
    validate.check_keys(model, dict(overrides or {}), "the settings (--key=value)", scope=keys,
                        dataset_keys=dataset_keys)
    sources.update({key: f"--{key}" for key in overrides or {}})
    try:
        typed = {**{k: v for f in file_settings.values() for k, v in f.items()},
                 **Config._convert_config_dict(None, dict(overrides or {}))}  # as RecBole reads them
        if "metrics" in typed:
            validate.check_metric_names(typed["metrics"], f" (set by {sources['metrics']})")
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            # RecBole's own reading fails on a file without settings: leave those out
            config = Config(model, dataset, [f for f in files if file_settings[f]], config_dict)
    except UserError:
        raise
    except Exception as error:  # RecBole's Config raises many types for bad settings
        raise ConfigError(f"invalid configuration for {model} on {dataset}: "
                          f"{type(error).__name__}: {error}") from None
    validate.check_values(config, sources)
    return config


# Settings of a multi-process run's workers: a resume trains in one process.
DDP_KEYS = {"nproc", "world_size", "offset", "ip", "port", "local_rank", "ddp_backend"}


def checkpoint_settings(path):
    """(model, dataset, settings, epochs trained) of the run that wrote a checkpoint: the
    settings it was given (config files and --key=value, less the multi-process ones), not
    RecBole's derived values."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # A checkpoint RecBole's trainer wrote: it pickles RecBole's Config.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        saved = checkpoint["config"]
        settings = {k: v for k, v in {**saved.file_config_dict, **saved.variable_config_dict}.items()
                    if k not in DDP_KEYS}
        return saved["model"], saved["dataset"], settings, checkpoint["epoch"] + 1
    except Exception as error:  # any unreadable file gets the same advice
        raise CheckpointError(
            f"{path} is not a RecBole checkpoint ({type(error).__name__}: {error}); pass the "
            ".pth file a run wrote into its run folder"
        ) from None


def resume_config(path, overrides=None, model=None, dataset=None):
    """The Config to continue the run of checkpoint `path` with: its own settings, then
    `overrides` (only RESUMABLE_KEYS: the rest would change the model or its data; config
    files given on resume count as overrides)."""
    saved_model, saved_dataset, settings, trained = checkpoint_settings(path)
    for flag, given, saved in (("--model", model, saved_model), ("--dataset", dataset, saved_dataset)):
        if given and given != saved:
            raise CheckpointError(f"{path} is a {saved_model} run on {saved_dataset}; {flag}={given} "
                                  "cannot be resumed from it: start a new run without --resume")
    overrides = dict(overrides or {})
    fixed = sorted(k for k in overrides if k not in RESUMABLE_KEYS)
    if fixed:
        raise CheckpointError(
            f"--resume continues the run of {path} with its own settings; {', '.join(fixed)} "
            f"(from --key=value or --config_files) cannot change on resume (only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} can). Start a new run for other settings"
        )
    config = build_config(saved_model, saved_dataset, [], {**settings, **overrides}, keys="any")
    if trained >= config["epochs"]:
        raise CheckpointError(
            f"{path} has trained {trained} epochs already and epochs={config['epochs']}: pass a "
            f"larger --epochs (e.g. --epochs={trained + 10}) to train further")
    config["checkpoint_dir"] = os.path.dirname(os.path.abspath(path))
    return config


def require_positive(name, value):
    """A command-line count that must be >= 1 (--nproc, --max_evals, ...)."""
    if value < 1:
        raise ConfigError(f"{name}={value}: must be at least 1")
