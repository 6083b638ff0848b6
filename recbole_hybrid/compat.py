"""Every fix RecBole 1.2.1 needs on today's stack (Python 3.10-3.13, numpy 2, pandas 2,
current torch and Ray), in one place.

`apply()` runs as RecBole is imported after `import recbole_hybrid`, and is idempotent. Each fix replaces one or more
RecBole attributes through `_patch`, which remembers the original, so a test can `revert` a
fix, watch the original breakage come back, and apply it again.

The fixes work with numpy 1 and 2 and with Ray 2.6 and current Ray. Breakages avoided by pins
instead (pyproject.toml): pandas 3 copy-on-write; with ray 2.6.3, numpy >= 2 and setuptools >= 81
(ray 2.6.3 imports pkg_resources and uses np.bool8).
"""

import contextlib
import errno
import functools
import logging
import os
import shutil
import sys
import types
import uuid
import warnings

import numpy as np
import torch

from recbole_hybrid import registry
from recbole_hybrid.errors import CheckpointError, ConfigError, OutputError, UnknownModelError
from recbole_hybrid.quick_start import checkpoint_pickle
from recbole_hybrid.utils.files import replaced_atomically

# Known noise, silenced before RecBole imports ray: ray 2.6.3 warns about pkg_resources and
# np.bool8 at import.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message="`np.bool8` is a deprecated", category=DeprecationWarning)
# Python >= 3.12 warns when it compiles the invalid escape sequences of RecBole's docstrings.
warnings.filterwarnings("ignore", message="invalid escape sequence", category=SyntaxWarning,
                        module=r".*[/\\]recbole[/\\]")
# RecBole builds torch.cuda.amp.GradScaler(enabled=False) in every Trainer, deprecated in torch.
warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.GradScaler", category=FutureWarning)

_originals = {}  # fix name -> [(owner, attribute, original value or _ABSENT)]
_ABSENT = object()


def _patch(fix, owner, attribute, replacement):
    with warnings.catch_warnings():  # numpy warns when its removed aliases are looked up
        warnings.simplefilter("ignore")
        original = getattr(owner, attribute, _ABSENT)
    _originals.setdefault(fix, []).append((owner, attribute, original))
    setattr(owner, attribute, replacement)


@contextlib.contextmanager
def _temporarily(owner, attribute, value):
    original = getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        setattr(owner, attribute, original)


# The aliases RecBole's Config defines, by names numpy 1 and 2 both have.
_NUMPY_ALIASES = {"bool": np.bool_, "int": np.int_, "float": np.float64, "complex": np.complex128,
                  "object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.str_}


def _missing_numpy_aliases():
    """The aliases this numpy lacks (numpy 2 has `np.bool` and `np.long` again: kept as they are)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {alias: value for alias, value in _NUMPY_ALIASES.items() if not hasattr(np, alias)}


def _fix_numpy_aliases():
    """RecBole's metrics (NDCG, ...) use `np.float` and friends, removed in numpy 1.24.
    RecBole defines these aliases only inside `Config()`, so evaluating a model loaded from
    a checkpoint in a fresh process crashed. Define the same aliases on import."""
    for alias, numpy_type in _missing_numpy_aliases().items():
        _patch("numpy_aliases", np, alias, numpy_type)


def _fix_config_on_numpy_2():
    """Config.compatibility_settings defines the aliases from `np.float_`, `np.complex_` and
    `np.unicode_`, removed in numpy 2: every Config() failed with AttributeError. Define the
    aliases this numpy lacks from names every numpy has."""
    from recbole.config import Config

    def compatibility_settings(self):
        for alias, numpy_type in _missing_numpy_aliases().items():
            setattr(np, alias, numpy_type)

    _patch("config_on_numpy_2", Config, "compatibility_settings", compatibility_settings)


def _fix_checkpoint_loading():
    """torch >= 2.6 loads with weights_only=True; RecBole's checkpoints pickle the Config.

    Only calls made from RecBole's own modules (Trainer.evaluate(load_best_model=True),
    Trainer.resume_checkpoint, load_data_and_model) get weights_only=False, with the
    unpickler that resolves only the names a RecBole checkpoint holds (`checkpoint_pickle`):
    a file naming anything else is a CheckpointError before any of it runs. Every other
    caller keeps torch's default.
    """
    original = torch.load

    @functools.wraps(original)
    def load(f, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if "weights_only" in kwargs or not caller.startswith("recbole."):
            return original(f, *args, **kwargs)
        kwargs.update(weights_only=False, pickle_module=checkpoint_pickle)
        try:
            return original(f, *args, **kwargs)
        except checkpoint_pickle.Refused as refused:
            raise CheckpointError(checkpoint_pickle.refusal(f, refused)) from None

    _patch("checkpoint_loading", torch, "load", load)


def _fix_exhaustive_search():
    """hyperopt >= 0.2.7 (0.3 too) samples with `rng.integers` (numpy Generator), but RecBole's
    exhaustive_search builds a legacy `np.random.RandomState`. Run RecBole's own function
    with `np.random.RandomState` resolved to `np.random.default_rng`."""
    from recbole.trainer import hyper_tuning

    original = hyper_tuning.exhaustive_search
    numpy_with_generator = types.SimpleNamespace(
        random=types.SimpleNamespace(RandomState=np.random.default_rng)
    )
    fixed = types.FunctionType(
        original.__code__,
        {**original.__globals__, "np": numpy_with_generator},
        original.__name__,
        original.__defaults__,
        original.__closure__,
    )
    fixed.__kwdefaults__ = original.__kwdefaults__
    _patch("exhaustive_search", hyper_tuning, "exhaustive_search", fixed)


def _fix_per_run_logging():
    """init_logger uses logging.basicConfig, a no-op once the root logger has handlers: a
    second run in one process logged into the first run's file. Drop the previous run's
    handlers first; handlers the user (or pytest) installed stay."""
    import recbole.quick_start.quick_start as quick_start
    import recbole.utils
    import recbole.utils.logger

    original = recbole.utils.logger.init_logger

    @functools.wraps(original)
    def init_logger(config):
        root = logging.getLogger()
        foreign = []
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if getattr(handler, "_recbole_run", False):
                handler.close()
            else:
                foreign.append(handler)
        original(config)
        for handler in root.handlers:
            handler._recbole_run = True
        for handler in foreign:
            root.addHandler(handler)

    for owner in (recbole.utils.logger, recbole.utils, quick_start):
        _patch("per_run_logging", owner, "init_logger", init_logger)


def _fix_checkpoint_files():
    """Trainer names checkpoints `{model}-{time to the second}.pth`, so parallel runs overwrite
    each other; and it writes them in place, so a crash mid-write destroys the best model.
    Give every run its own file (one name for all processes of a multi-process run, chosen
    by rank 0), write it atomically (temporary file, then rename), and let the processes of a
    multi-process run wait for rank 0's last save before they load the best model."""
    from recbole.trainer import trainer as trainer_module
    from recbole.utils import get_local_time, set_color

    trainer_class = trainer_module.Trainer
    original_init = trainer_class.__init__
    original_save = trainer_class._save_checkpoint
    original_evaluate = trainer_class.evaluate

    @functools.wraps(original_init)
    def __init__(self, config, model):
        original_init(self, config, model)
        name = [f"{config['model']}-{get_local_time()}-{uuid.uuid4().hex[:6]}.pth"]
        if not config["single_spec"]:
            torch.distributed.broadcast_object_list(name, src=0)
        self.saved_model_file = os.path.join(self.checkpoint_dir, name[0])

    @functools.wraps(original_evaluate)
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if load_best_model and not self.config["single_spec"]:
            torch.distributed.barrier()
        return original_evaluate(self, eval_data, load_best_model, model_file, show_progress)

    @functools.wraps(original_save)
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        target = kwargs.pop("saved_model_file", self.saved_model_file)
        try:
            with replaced_atomically(target) as partial:
                original_save(self, epoch, verbose=False, saved_model_file=partial, **kwargs)
        except (OSError, RuntimeError) as error:  # torch reports a full disk as RuntimeError
            kept = f"the previous best, {target}, is kept" if os.path.exists(target) else \
                "no earlier checkpoint exists"
            full = getattr(error, "errno", None) == errno.ENOSPC or \
                shutil.disk_usage(os.path.dirname(os.path.abspath(target))).free < 2**26
            why = "the disk is full" if full else str(error).strip().splitlines()[0]
            raise OutputError(f"the checkpoint of epoch {epoch} could not be written to {target} "
                              f"({why}); {kept}. Free some space or pass another "
                              "checkpoint_dir") from None
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {target}")

    _patch("checkpoint_files", trainer_class, "__init__", __init__)
    _patch("checkpoint_files", trainer_class, "_save_checkpoint", _save_checkpoint)
    _patch("checkpoint_files", trainer_class, "evaluate", evaluate)


def _fix_download_barrier():
    """Dataset._download ends with torch.distributed.barrier(), which raises without a
    process group: the first automatic download of a dataset crashed. Skip the barrier
    unless a process group exists."""
    from recbole.data.dataset import dataset as dataset_module

    original = dataset_module.Dataset._download

    @functools.wraps(original)
    def _download(self):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return original(self)
        with _temporarily(torch.distributed, "barrier", lambda *args, **kwargs: None):
            return original(self)

    _patch("download_barrier", dataset_module.Dataset, "_download", _download)


def _fix_model_lookup():
    """An unknown name fell through to RecBole's exlib package and surfaced as
    `ModuleNotFoundError: xgboost`. Raise UnknownModelError naming the valid models."""
    import recbole.config.configurator as configurator
    import recbole.quick_start.quick_start as quick_start
    import recbole.utils
    import recbole.utils.utils

    original = recbole.utils.utils.get_model

    @functools.wraps(original)
    def get_model(model_name):
        if registry.is_known(model_name):
            try:
                return original(model_name)
            except AttributeError:  # module found, class name spelled differently
                pass
        raise UnknownModelError(registry.unknown_model_message(model_name))

    for owner in (recbole.utils.utils, recbole.utils, configurator, quick_start):
        _patch("model_lookup", owner, "get_model", get_model)


def _fix_plugin_model_defaults():
    """Config reads model defaults only from RecBole's own properties/model/<Model>.yaml.
    For a plugin model, read the plugin's yaml at that same point of the sequence
    (after overall.yaml, before the dataset and quick-start yamls)."""
    from recbole.config import Config

    original = Config._load_internal_config_dict

    @functools.wraps(original)
    def _load_internal_config_dict(self, model, model_class, dataset):
        plugin_file = registry.plugin_config_file(model)
        if plugin_file is None:
            return original(self, model, model_class, dataset)
        read = self._update_internal_config_dict

        def read_plugin_file_after_overall(file):
            config_dict = read(file)
            if os.path.basename(file) == "overall.yaml":
                read(plugin_file)
            return config_dict

        self._update_internal_config_dict = read_plugin_file_after_overall
        try:
            return original(self, model, model_class, dataset)
        finally:
            del self._update_internal_config_dict

    _patch("plugin_model_defaults", Config, "_load_internal_config_dict", _load_internal_config_dict)


def _fix_concurrent_dirs():
    """ensure_dir checks for a folder, then creates it: when several processes start at once
    (multi-process training, parallel trials), one of them fails with FileExistsError."""
    import recbole.data.dataset.dataset as dataset_module
    import recbole.data.utils as data_utils
    import recbole.trainer.trainer as trainer_module
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    def ensure_dir(dir_path):
        os.makedirs(dir_path, exist_ok=True)

    for owner in (recbole.utils.utils, recbole.utils, recbole.utils.logger, trainer_module,
                  dataset_module, data_utils):
        _patch("concurrent_dirs", owner, "ensure_dir", ensure_dir)


# pandas 2's warnings about RecBole's dataset code: chained fillna(inplace=True), and
# Series.agg(len) on sequence fields.
_PANDAS_WARNINGS = (r"A value is trying to be set on a copy of a DataFrame or Series through "
                    r"chained assignment|using <built-in function len> in Series\.agg")


def _fix_pandas_warnings():
    """RecBole fills missing values with `df[field].fillna(..., inplace=True)` and splits
    sequence fields with `Series.agg(len)`: pandas 2 does both as RecBole means, but warns
    (FutureWarning) on every dataset load that they change with pandas 3, which the pin
    excludes. Load with those warnings silenced."""
    from recbole.data.dataset import dataset as dataset_module

    def quiet(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_PANDAS_WARNINGS, category=FutureWarning)
                return method(*args, **kwargs)

        return wrapper

    for name in ("_load_feat", "_fill_nan", "_remap"):
        method = getattr(dataset_module.Dataset, name)
        _patch("pandas_warnings", dataset_module.Dataset, name, quiet(method))


def ray_tune_api():
    """The installed Ray Tune's `report(metrics)`, `RunConfig` and `FailureConfig`: ray.tune's
    own where Ray has them (current Ray, which deprecates the ray.air ones), else Ray 2.6's."""
    from ray import tune

    if hasattr(tune, "RunConfig"):
        return types.SimpleNamespace(report=tune.report, RunConfig=tune.RunConfig,
                                     FailureConfig=tune.FailureConfig)
    from ray import air
    from ray.air import session

    return types.SimpleNamespace(report=session.report, RunConfig=air.RunConfig,
                                 FailureConfig=air.FailureConfig)


def _fix_ray_report():
    """RecBole's objective_function reports with `tune.report(**test_result)`, Ray 2.6's form;
    current Ray's `tune.report(metrics)` takes one dict, so RecBole's objective failed with
    TypeError inside a Ray trial. quick_start gets a `tune` whose report takes the keywords
    and passes them as one dict to the installed Ray's report."""
    import recbole.quick_start.quick_start as quick_start

    def report(**metrics):
        ray_tune_api().report(metrics)

    _patch("ray_report", quick_start, "tune", types.SimpleNamespace(report=report))


def ddp_backend(config_dict):
    """The process-group backend of a multi-process run: the `ddp_backend` config key, else
    nccl where CUDA is available and wanted, gloo (CPU processes) otherwise."""
    backend = config_dict.get("ddp_backend")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and config_dict.get("use_gpu", True) else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"ddp_backend must be 'nccl' or 'gloo', got {backend!r}")
    return backend


def _fix_ddp_on_cpu():
    """RecBole 1.2.1 hard-wires DDP to the nccl backend and CUDA devices, so multi-process
    training could not even start on a CPU machine. With the gloo backend, run each process
    on the CPU, and wrap the model in DDP without device ids."""
    from recbole.config import Config
    from recbole.trainer import trainer as trainer_module

    original_init_device = Config._init_device
    original_trainer_init = trainer_module.AbstractTrainer.__init__

    @functools.wraps(original_init_device)
    def _init_device(self):
        settings = self.final_config_dict
        if "local_rank" not in settings or ddp_backend(settings) == "nccl":
            return original_init_device(self)
        torch.distributed.init_process_group(
            backend="gloo",
            rank=settings["local_rank"] + settings["offset"],
            world_size=settings["world_size"],
            init_method=f"tcp://{settings['ip']}:{settings['port']}",
        )
        settings["device"] = torch.device("cpu")
        settings["single_spec"] = False
        if settings["local_rank"] != 0:  # as RecBole does: only rank 0 logs and shows progress
            settings.update(state="error", show_progress=False, verbose=False)

    @functools.wraps(original_trainer_init)
    def __init__(self, config, model):
        if config["single_spec"] or config["device"].type != "cpu":
            return original_trainer_init(self, config, model)
        self.config, self.model = config, model
        self.distributed_model = torch.nn.parallel.DistributedDataParallel(model)

    _patch("ddp_on_cpu", Config, "_init_device", _init_device)
    _patch("ddp_on_cpu", trainer_module.AbstractTrainer, "__init__", __init__)


def _fix_negative_sampling_default():
    """overall.yaml samples one negative per positive, and Config refuses any sampling with
    loss_type CE: every CE model needs `train_neg_sample_args: ~`, and pinning that in a
    model's defaults broke loss_type BPR (no negatives: KeyError 'neg_item_id' mid-training).
    Unless the user sets train_neg_sample_args, it follows the loss: none for CE, RecBole's
    uniform default otherwise."""
    from recbole.config import Config

    original = Config._get_final_config_dict

    @functools.wraps(original)
    def _get_final_config_dict(self):
        final = original(self)
        if "train_neg_sample_args" not in self.external_config_dict and final.get("loss_type") == "CE":
            final["train_neg_sample_args"] = None
        return final

    _patch("negative_sampling_default", Config, "_get_final_config_dict", _get_final_config_dict)


def _fix_log_file_names():
    """init_logger names the log `<model>-<dataset>-<time to the second>-<hash of the
    config>.log`: two runs started in the same second with the same settings (parallel
    trials, a grid's cells) appended to one file. Give each run its own name."""
    import recbole.utils.logger as logger_module

    original = logger_module.get_local_time

    @functools.wraps(original)
    def get_local_time():
        return f"{original()}-{uuid.uuid4().hex[:4]}"

    _patch("log_file_names", logger_module, "get_local_time", get_local_time)


FIXES = {
    "numpy_aliases": _fix_numpy_aliases,
    "config_on_numpy_2": _fix_config_on_numpy_2,
    "checkpoint_loading": _fix_checkpoint_loading,
    "exhaustive_search": _fix_exhaustive_search,
    "per_run_logging": _fix_per_run_logging,
    "checkpoint_files": _fix_checkpoint_files,
    "download_barrier": _fix_download_barrier,
    "model_lookup": _fix_model_lookup,
    "plugin_model_defaults": _fix_plugin_model_defaults,
    "ddp_on_cpu": _fix_ddp_on_cpu,
    "concurrent_dirs": _fix_concurrent_dirs,
    "negative_sampling_default": _fix_negative_sampling_default,
    "log_file_names": _fix_log_file_names,
    "pandas_warnings": _fix_pandas_warnings,
    "ray_report": _fix_ray_report,
}


def apply():
    """Apply every fix not applied yet."""
    for name, fix in FIXES.items():
        if name not in _originals:
            fix()


def revert(name):
    """Restore RecBole's original attributes for one fix (tests use this)."""
    for owner, attribute, original in reversed(_originals.pop(name, [])):
        if original is _ABSENT:
            delattr(owner, attribute)
        else:
            setattr(owner, attribute, original)


@contextlib.contextmanager
def reverted(name):
    """Run a block with one fix undone, then apply it again."""
    revert(name)
    try:
        yield
    finally:
        FIXES[name]()
