"""Setting values checked before any work starts, and by the models' constructors.

`check_values` tests the common training and evaluation keys of a built Config against
`VALUE_RULES`, so `--epochs=ten` fails at once, not mid-run; the models read their own keys
through `require` with the same rules (`POSITIVE_INT`, `PROBABILITY`, `BOOLEAN`). Command-line
counts (`--nproc`, `--max_evals`, ...) go through `at_least`.
"""

import difflib
from typing import Callable, NamedTuple

from recbole_hybrid.errors import ConfigError

LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Rule(NamedTuple):
    """A test of a value, and what the value must be (for the message)."""

    test: Callable
    expected: str

    def or_empty(self):
        """The same rule, also accepting None (a key left empty)."""
        return Rule(lambda v: v is None or self.test(v), self.expected)


POSITIVE_INT = Rule(lambda v: _is_int(v) and v >= 1, "a positive integer")
PROBABILITY = Rule(lambda v: _is_number(v) and 0 <= v < 1, "a probability in [0, 1)")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "True or False")


def require(key, value, rule, where=""):
    """`value` if it passes `rule`, else ConfigError naming `key` (set `where`)."""
    if not rule.test(value):
        raise ConfigError(f"{key} must be {rule.expected}, got {value!r}{where}")
    return value


def at_least(name, value, least=1):
    """A command-line count (`--nproc`, `--max_evals`, `--jobs`, ...) that must be >= `least`."""
    if isinstance(value, bool) or not _is_number(value) or value < least:
        raise ConfigError(f"{name}={value}: must be at least {least}")
    return value


def positive(name, value):
    """A command-line amount (`--cpus_per_cell`, ...) that must be a number above 0."""
    if isinstance(value, bool) or not _is_number(value) or not 0 < value < float("inf"):
        raise ConfigError(f"{name}={value}: must be a number above 0 (fractions share a CPU)")
    return value


VALUE_RULES = {
    "epochs": Rule(POSITIVE_INT.test, "a positive integer, e.g. 50"),
    "train_batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "learning_rate": Rule(lambda v: _is_number(v) and 0 < v < float("inf"),
                          "a positive number, e.g. 0.001"),
    "weight_decay": Rule(lambda v: _is_number(v) and 0 <= v < float("inf"), "a number >= 0"),
    "stopping_step": POSITIVE_INT,
    "eval_step": Rule(lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: no validation)"),
    "MAX_ITEM_LIST_LENGTH": POSITIVE_INT.or_empty(),
    "seed": Rule(lambda v: _is_int(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),
    "worker": Rule(lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "world_size": Rule(lambda v: _is_int(v) and (v == -1 or v >= 1),
                       "-1 (this machine's --nproc processes) or the number of processes of all "
                       "nodes"),
    "gpu_id": Rule(lambda v: _is_int(v) and v >= 0 or isinstance(v, str) and (not v.strip() or all(
        part.strip().isdigit() for part in v.split(","))), "a GPU index or a list like '0,1'"),
    "topk": Rule(lambda v: (_is_int(v) and v >= 1) or (isinstance(v, list) and v
                                                       and all(_is_int(k) and k >= 1 for k in v)),
                 "a positive integer or a list of them, e.g. [5, 10]"),
    "learner": Rule(lambda v: isinstance(v, str) and v.lower() in LEARNERS,
                    f"one of {', '.join(LEARNERS)}"),
    "state": Rule(lambda v: str(v).upper() in LOG_LEVELS,
                  f"one of {', '.join(LOG_LEVELS)}").or_empty(),
    "clip_grad_norm": Rule(lambda v: isinstance(v, dict),
                           "empty or a mapping of clip_grad_norm_'s arguments, e.g. "
                           "{max_norm: 5}").or_empty(),
    "load_col": Rule(lambda v: isinstance(v, dict) and all(
        isinstance(c, list) or c is None for c in v.values()),
        "empty (every column) or a mapping of file kinds to column lists, e.g. "
        "{inter: [user_id, item_id, timestamp]}").or_empty(),
    **dict.fromkeys(("show_progress", "reproducibility", "use_gpu", "shuffle", "save_dataset",
                     "save_dataloaders", "repeatable", "enable_amp", "enable_scaler",
                     "log_wandb"), BOOLEAN),
    **dict.fromkeys(("hidden_size", "inner_size", "n_layers", "num_layers", "n_heads", "d_state",
                     "d_conv", "expand"), POSITIVE_INT),
    **dict.fromkeys(("dropout_prob", "hidden_dropout_prob", "attn_dropout_prob"),
                    PROBABILITY.or_empty()),
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

    for key, rule in VALUE_RULES.items():
        if key in settings:
            require(key, settings[key], rule, where(key))
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
