"""Settings checked before any work starts.

- Keys: every key must be one that RecBole's framework (config, data, trainer, evaluator),
  the model or the dataset files read; a typo gets a did-you-mean. The known keys are
  collected from RecBole's own yamls and from the `config["key"]` reads in its sources and
  the model's, so they follow the installed versions. `--key=value` settings and tuning
  parameters must be known to the model being run (`scope="model"`); config files and a
  grid's shared settings may also hold keys of other models (`scope="any"`).
- Values: the common training and evaluation keys get their type and range checked on the
  built Config (`check_values`), so `--epochs=ten` fails at once, not mid-run.
"""

import copy
import difflib
import functools
import glob
import importlib.util
import inspect
import os
import re

import yaml

from recbole_hybrid.errors import ConfigError, UserError

_RECBOLE = os.path.dirname(importlib.util.find_spec("recbole").origin)
_PACKAGE = os.path.dirname(__file__)
_KEY_READ = re.compile(
    r"""config(?:_dict)?(?:\[|\.get\(|\.setdefault\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")
# Keys set or read by this package and by RecBole's multi-process set-up, not in any yaml.
_EXTRA_KEYS = {"ddp_backend", "nproc", "world_size", "offset", "ip", "port", "local_rank",
               "encoding", "benchmark_filename", "model", "dataset", "config_files"}
LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


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
    properties = os.path.join(_RECBOLE, "properties")
    yamls = [os.path.join(properties, "overall.yaml"),
             *glob.glob(os.path.join(properties, "quick_start_config", "*.yaml")),
             *[p for p in glob.glob(os.path.join(properties, "dataset", "*.yaml"))
               if not p.endswith("url.yaml")]]
    sources = [p for p in glob.glob(os.path.join(_RECBOLE, "**", "*.py"), recursive=True)
               if os.sep + "model" + os.sep not in p]
    ours = glob.glob(os.path.join(_PACKAGE, "**", "*.py"), recursive=True)
    return frozenset(_yaml_keys(yamls) | _source_keys(sources + ours) | _EXTRA_KEYS)


@functools.lru_cache(maxsize=None)
def model_keys(model):
    """Keys the model reads: its default yaml and the config reads of its class hierarchy."""
    from recbole.utils import get_model

    from recbole_hybrid import registry

    model_class = get_model(model)
    yaml_file = registry.model_config_file(model)
    sources = {inspect.getsourcefile(cls) for cls in model_class.__mro__
               if cls.__module__.startswith(("recbole", "recbole_hybrid")) or cls is model_class}
    return frozenset(_yaml_keys([yaml_file] if yaml_file else []) | _source_keys(sources))


@functools.lru_cache(maxsize=None)
def _all_model_keys():
    """{key: [models that read it]} over RecBole's models and the registered plugins."""
    from recbole_hybrid import registry

    owners = {}
    for path in glob.glob(os.path.join(_RECBOLE, "properties", "model", "*.yaml")):
        name = os.path.splitext(os.path.basename(path))[0]
        for key in _yaml_keys([path]):
            owners.setdefault(key, []).append(name)
    for name in registry.plugin_models():
        for key in model_keys(name):
            owners.setdefault(key, []).append(name)
    for key in _source_keys(glob.glob(os.path.join(_RECBOLE, "model", "**", "*.py"), recursive=True)):
        owners.setdefault(key, [])
    return owners


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
            reasons.append(f"'{key}' is a setting of {owners}, not of {model}"
                           + (f" (did you mean '{close[0]}'?)" if close else ""))
        else:
            reasons.append(f"'{key}' is not a setting of RecBole or {model}"
                           + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(
        f"unknown setting{'s' if len(unknown) > 1 else ''} in {where}: {'; '.join(reasons)}. "
        f"Settings are RecBole's (see its overall.yaml), the model's "
        f"(properties/model/{model}.yaml) and the dataset's; names are case-sensitive."
    )


# key -> (test of a value, what the value must be)
VALUE_RULES = {
    "epochs": (lambda v: _is_int(v) and v >= 1, "a positive integer, e.g. 50"),
    "train_batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "eval_batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "learning_rate": (lambda v: _is_number(v) and 0 < v < float("inf"), "a positive number, e.g. 0.001"),
    "weight_decay": (lambda v: _is_number(v) and 0 <= v < float("inf"), "a number >= 0"),
    "stopping_step": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "eval_step": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no validation)"),
    "MAX_ITEM_LIST_LENGTH": (lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),
    "worker": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "world_size": (lambda v: _is_int(v) and (v == -1 or v >= 1),
                   "-1 (this machine's --nproc processes) or the number of processes of all nodes"),
    "gpu_id": (lambda v: _is_int(v) and v >= 0 or isinstance(v, str) and (not v.strip() or all(
        part.strip().isdigit() for part in v.split(","))), "a GPU index or a list like '0,1'"),
    "topk": (lambda v: (_is_int(v) and v >= 1) or (isinstance(v, list) and v
                                                   and all(_is_int(k) and k >= 1 for k in v)),
             "a positive integer or a list of them, e.g. [5, 10]"),
    "learner": (lambda v: isinstance(v, str) and v.lower() in LEARNERS,
                f"one of {', '.join(LEARNERS)}"),
    "state": (lambda v: v is None or str(v).upper() in LOG_LEVELS, f"one of {', '.join(LOG_LEVELS)}"),
    "clip_grad_norm": (lambda v: v is None or isinstance(v, dict),
                       "empty or a mapping of clip_grad_norm_'s arguments, e.g. {max_norm: 5}"),
    "load_col": (lambda v: v is None or (isinstance(v, dict) and all(
        isinstance(c, list) or c is None for c in v.values())),
        "empty (every column) or a mapping of file kinds to column lists, e.g. "
        "{inter: [user_id, item_id, timestamp]}"),
    **{key: (lambda v: isinstance(v, bool), "True or False")
       for key in ("show_progress", "reproducibility", "use_gpu", "shuffle", "save_dataset",
                   "save_dataloaders", "repeatable", "enable_amp", "enable_scaler", "log_wandb")},
    **{key: (lambda v: _is_int(v) and v >= 1, "a positive integer")
       for key in ("hidden_size", "inner_size", "n_layers", "num_layers", "n_heads", "d_state",
                   "d_conv", "expand")},
    **{key: (lambda v: v is None or (_is_number(v) and 0 <= v < 1), "a probability in [0, 1)")
       for key in ("dropout_prob", "hidden_dropout_prob", "attn_dropout_prob")},
}


def check_values(config, sources=None):
    """Raise ConfigError for a common key with a value of the wrong type or range, or a
    valid_metric the evaluation does not compute. `sources` names where a key was set
    ({key: "--epochs" or a file}), for the message."""
    from recbole.utils import ModelType

    settings = config.final_config_dict
    sources = sources or {}

    def where(key):
        return f" (set by {sources[key]})" if key in sources else ""

    for key, (test, expected) in VALUE_RULES.items():
        if key in settings and not test(settings[key]):
            raise ConfigError(f"{key} must be {expected}, got {settings[key]!r}{where(key)}")
    if settings.get("MODEL_TYPE") == ModelType.SEQUENTIAL and "loss_type" in settings:
        if settings["loss_type"] not in ("CE", "BPR"):  # RecBole's sequential models know these
            raise ConfigError(f"loss_type must be CE or BPR for a sequential model, got "
                              f"{settings['loss_type']!r}{where('loss_type')}")
    _check_valid_metric(settings)


def check_metric_names(metrics, where=""):
    """Raise ConfigError, with a did-you-mean, for a name in `metrics` RecBole does not know."""
    from recbole.evaluator.register import metrics_dict

    for metric in [metrics] if isinstance(metrics, str) else metrics or []:
        if str(metric).lower() not in metrics_dict:
            close = difflib.get_close_matches(str(metric).lower(), list(metrics_dict), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"metrics: RecBole has no metric {metric!r}{where}{hint} "
                              f"(it has {', '.join(sorted(metrics_dict))})")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def computed_metrics(settings):
    """The names ("ndcg@10", "auc", ...) of the metrics an evaluation with these settings
    reports; empty when the metrics are unknown to RecBole (its own check names them)."""
    from recbole.evaluator.base_metric import TopkMetric
    from recbole.evaluator.register import metrics_dict

    metrics = settings.get("metrics") or []
    metrics = [metrics] if isinstance(metrics, str) else metrics
    topk = settings.get("topk") or []
    topk = [topk] if _is_int(topk) else topk
    computed = set()
    for metric in metrics:
        metric_class = metrics_dict.get(str(metric).lower())
        if metric_class is None:
            return set()
        if issubclass(metric_class, TopkMetric):
            computed |= {f"{metric.lower()}@{k}" for k in topk}
        else:
            computed.add(metric.lower())
    return computed


def _check_valid_metric(settings):
    computed = computed_metrics(settings)
    valid_metric = settings.get("valid_metric")
    if valid_metric and computed and str(valid_metric).lower() not in computed:
        raise ConfigError(
            f"valid_metric {valid_metric} is not among the metrics the evaluation computes "
            f"({', '.join(sorted(computed))}): pick one of them, or add its metric to `metrics` "
            "and its cut-off to `topk`"
        )


def check_model(config, n_users=8, n_items=20):
    """Build a sequential model from `config` on a stand-in dataset (`n_users`, `n_items`
    ids) and take one training loss and one full ranking on two short sequences, on the CPU,
    before any data is loaded: impossible hyperparameters (heads that do not divide the
    hidden size, no layers, k_interests above the sequence length, ...) fail in seconds.
    Models that need more of the dataset than its id sizes, or inputs a plain sequence batch
    lacks, are left to the run itself."""
    import torch
    from recbole.data.interaction import Interaction
    from recbole.utils import ModelType, get_model

    from recbole_hybrid.bundle import StandInDataset
    from recbole_hybrid.models.base import mamba_impl

    model_class = get_model(config["model"])
    if model_class.type != ModelType.SEQUENTIAL:
        return
    if config["mamba_impl"] is not None:
        mamba_impl(config)  # the implementation can run on the run's device
    cpu_config = copy.deepcopy(config)  # the dry run is on the CPU, in this package's own path
    cpu_config["device"] = torch.device("cpu")
    if config["mamba_impl"] is not None:
        cpu_config["mamba_impl"] = "torch"
    length = config["MAX_ITEM_LIST_LENGTH"]
    try:
        model = model_class(cpu_config, StandInDataset(cpu_config, n_users, n_items))
    except (AttributeError, KeyError):
        return  # reads more of the dataset than a stand-in has
    except UserError:
        raise
    except Exception as error:
        raise _cannot_build(config, error) from None
    sequences = torch.zeros(2, length, dtype=torch.long)
    sequences[0, : min(3, length)] = torch.arange(1, min(3, length) + 1)
    sequences[1, 0] = 1
    batch = Interaction({
        model.ITEM_SEQ: sequences,
        model.ITEM_SEQ_LEN: torch.tensor([min(3, length), 1]),
        model.POS_ITEM_ID: torch.tensor([4, 2]),
        model.NEG_ITEM_ID: torch.tensor([5, 6]),
        model.USER_ID: torch.tensor([1, 2]),
    })
    try:
        model.calculate_loss(batch).backward()
        with torch.no_grad():
            model.eval()
            model.full_sort_predict(batch)
    except (KeyError, AttributeError):
        return  # the model wants inputs its own data loader makes (masks, ...)
    except UserError:
        raise
    except Exception as error:
        raise _cannot_build(config, error) from None


def _cannot_build(config, error):
    return ConfigError(f"{config['model']} cannot be built or trained with these settings: "
                       f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
