"""Every fix RecBole 1.2.1 needs on today's stack, in one place (SPEC section 2).

`apply()` runs on `import recbole_hybrid` and is idempotent. Each fix replaces one or more
RecBole attributes through `_patch`, which remembers the original, so a test can `revert` a
fix, watch the original breakage come back, and apply it again.

Breakages avoided by pins instead of patches (see setup.cfg): numpy >= 2, pandas 3
copy-on-write, setuptools >= 81 (ray 2.6.3 imports pkg_resources).
"""

import contextlib
import functools
import logging
import os
import sys
import types
import uuid
import warnings

import numpy as np
import torch

from recbole_hybrid import registry
from recbole_hybrid.errors import ConfigError, UnknownModelError

# Known noise, silenced before RecBole imports ray: ray 2.6.3 warns about pkg_resources and
# np.bool8 at import; pandas 2 warns that RecBole's chained fillna(inplace=True) stops working in
# pandas 3, which the pin excludes.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message="`np.bool8` is a deprecated", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.data\.")
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


def _fix_numpy_aliases():
    """RecBole's metrics (NDCG, ...) use `np.float` and friends, removed in numpy 1.24.
    RecBole defines these aliases only inside `Config()`, so evaluating a model loaded from
    a checkpoint in a fresh process crashed. Define the same aliases on import."""
    aliases = {"bool": np.bool_, "int": np.int_, "float": np.float_, "complex": np.complex_,
               "object": np.object_, "str": np.str_, "long": np.int_, "unicode": np.unicode_}
    for alias, numpy_type in aliases.items():
        _patch("numpy_aliases", np, alias, numpy_type)


def _fix_checkpoint_loading():
    """torch >= 2.6 loads with weights_only=True; RecBole's checkpoints pickle the Config.

    Only calls made from RecBole's own modules (Trainer.evaluate(load_best_model=True),
    Trainer.resume_checkpoint, load_data_and_model) get weights_only=False: they read the
    checkpoints RecBole itself wrote. Every other caller keeps torch's default.
    """
    original = torch.load

    @functools.wraps(original)
    def load(f, *args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if "weights_only" not in kwargs and caller.startswith("recbole."):
            kwargs["weights_only"] = False
        return original(f, *args, **kwargs)

    _patch("checkpoint_loading", torch, "load", load)


def _fix_exhaustive_search():
    """hyperopt >= 0.2.7 samples with `rng.integers` (numpy Generator), but RecBole's
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
        partial = f"{target}.partial"
        original_save(self, epoch, verbose=False, saved_model_file=partial, **kwargs)
        os.replace(partial, target)
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


FIXES = {
    "numpy_aliases": _fix_numpy_aliases,
    "checkpoint_loading": _fix_checkpoint_loading,
    "exhaustive_search": _fix_exhaustive_search,
    "per_run_logging": _fix_per_run_logging,
    "checkpoint_files": _fix_checkpoint_files,
    "download_barrier": _fix_download_barrier,
    "model_lookup": _fix_model_lookup,
    "plugin_model_defaults": _fix_plugin_model_defaults,
    "ddp_on_cpu": _fix_ddp_on_cpu,
    "concurrent_dirs": _fix_concurrent_dirs,
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
