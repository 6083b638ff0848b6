"""Train and evaluate one model on one dataset, RecBole's way, into a run folder.

`run` checks everything it can before any work starts (settings, dataset files, output
folder: `config.builder.build_config`, `data.atomic_files.check_dataset`,
`run_folder.new_run_dir`), then
trains with RecBole's trainer, tests the best checkpoint and writes `results.json`.
Interruptions (Ctrl-C, SIGTERM) raise `Interrupted` naming the checkpoint to resume from.
"""

import contextlib
import datetime
import logging
import os
import time

import torch
from recbole.data import data_preparation
from recbole.utils import get_environment, get_model, get_trainer, init_logger, init_seed

from recbole_hybrid.config import DEFAULT_DATASET, DEFAULT_MODEL
from recbole_hybrid.config.builder import build_config
from recbole_hybrid.config.dry_run import check_model
from recbole_hybrid.config.files import read_yamls, resolve
from recbole_hybrid.config.values import at_least
from recbole_hybrid.data.atomic_files import check_dataset, create_dataset
from recbole_hybrid.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    Interrupted,
    OutputError,
    UserError,
)
from recbole_hybrid.quick_start import per_user, run_folder
from recbole_hybrid.quick_start.checkpoints import resume_config
from recbole_hybrid.utils.files import describe_os_error, writable_folder
from recbole_hybrid.utils.versions import versions


def run(
    model=None,
    dataset=None,
    config_files=(),
    overrides=None,
    *,
    resume=None,
    output_dir="runs",
    nproc=1,
    world_size=-1,
    ip="localhost",
    port="5678",
    group_offset=0,
    callback=None,
    scope="model",
):
    """Train, evaluate on the test split, write `<run folder>/results.json`; return it as a dict.

    `resume` continues an interrupted run from its checkpoint, in its own run folder, with
    the checkpoint's configuration (`overrides` of training keys still apply, e.g. more
    epochs). `callback` is RecBole's `callback_fn(epoch_idx, valid_score)`, called after
    each validation. Without `model` / `dataset`, the last of `config_files` that names one
    decides. `scope` is `build_config`'s check of the overrides' keys.
    """
    try:
        config, folder = _prepare(model, dataset, config_files, overrides, resume, output_dir,
                                  nproc, world_size, ip, port, group_offset, scope)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while checking the settings and data; nothing was "
                          "written") from None
    distributed = is_distributed(nproc, world_size)
    with folder as run_dir:
        if not resume and "checkpoint_dir" not in config.external_config_dict:
            config["checkpoint_dir"] = run_dir
        started = time.time()
        if distributed:
            from recbole_hybrid.quick_start.distributed import run_distributed

            result = run_distributed(
                config, config_files, overrides, nproc, world_size, ip, port, group_offset
            )
        else:
            result = _train_and_evaluate(config, resume, run_dir, callback)
        result.update(
            model=config["model"],
            dataset=config["dataset"],
            valid_metric=config["valid_metric"],
            valid_metric_bigger=config["valid_metric_bigger"],
            resumed_from=resume,
            seconds=round(time.time() - started, 1),
            finished=datetime.datetime.now().isoformat(timespec="seconds"),
            config_files=list(config_files),
            overrides={k: str(v) for k, v in (overrides or {}).items()},
            versions=versions(),
        )
        result["results_file"] = run_folder.write_results(run_dir, result)
    return result


def is_distributed(nproc, world_size):
    """Several processes here, or this node's part of a group over several nodes."""
    return nproc > 1 or world_size > 0


def _prepare(model, dataset, config_files, overrides, resume, output_dir, nproc, world_size, ip,
             port, group_offset, scope):
    """Every check that can run before any work: (the Config, its run folder's context)."""
    at_least("--nproc", nproc)
    if world_size != -1 and world_size < 1:
        raise ConfigError(f"--world_size={world_size}: give the number of processes on all "
                          "nodes, or leave it out (-1) for this machine's --nproc processes")
    distributed = is_distributed(nproc, world_size)
    if distributed:
        from recbole_hybrid.quick_start.distributed import check_launch

        check_launch(nproc, world_size, ip, port, group_offset)
    if resume:
        if distributed:
            raise UserError("--resume works with single-process runs only (--nproc=1)")
        config = resume_config(resume, {**read_yamls(config_files), **(overrides or {})},
                               model, dataset)
        check_dataset(config)
        folder = run_folder.resumed_run_dir(resume)
    else:
        named = read_yamls([f for f in config_files if os.path.isfile(resolve(f))])
        for key, given in (("model", model), ("dataset", dataset)):
            if given and named.get(key) not in (None, given):
                raise ConfigError(f"--{key}={given}, but the config files set {key}: "
                                  f"{named[key]}; drop one of the two")
        model = model or named.get("model") or DEFAULT_MODEL
        dataset = dataset or named.get("dataset") or DEFAULT_DATASET
        config = build_config(model, dataset, config_files, overrides, scope=scope)
        check_model(config)
        check_dataset(config)
        if "checkpoint_dir" in config.external_config_dict:
            writable_folder(config["checkpoint_dir"], "checkpoint_dir")
        folder = run_folder.new_run_dir(output_dir, model, dataset)
    writable_folder("log", "RecBole's log folder (./log, in the working directory)")
    return config, folder


def _train_and_evaluate(config, resume, run_dir, callback=None):
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(config)
    try:
        dataset = create_dataset(config)
        logger.info(dataset)
        train_data, valid_data, test_data = data_preparation(config, dataset)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while loading the data; nothing was trained") from None
    except UserError:
        raise
    except (ValueError, KeyError, IndexError) as error:
        raise DataError(f"RecBole could not prepare {config['dataset']} for {config['model']} "
                        f"({type(error).__name__}: {error}); check the data files and the "
                        "filtering settings (e.g. user_inter_num_interval)") from None

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = _build_model(config, train_data)
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_seconds = _time_epochs(trainer)
    if torch.device(config["device"]).type == "cuda":
        torch.cuda.reset_peak_memory_stats(config["device"])
    if resume:
        _resume(trainer, resume, config)
    with _training_faults(trainer):
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=True, show_progress=config["show_progress"],
            callback_fn=callback,
        )
        if best_valid_result is None and not os.path.isfile(trainer.saved_model_file):
            raise UserError(f"no epoch gave a valid {config['valid_metric']} to select a model "
                            "by (was it NaN?); check valid_metric and the valid split")
        if best_valid_result is None:
            # No epoch beat the checkpoint's best (RecBole restores its score, not its
            # metrics): evaluate the best checkpoint on the valid split once more.
            best_valid_result = trainer.evaluate(valid_data, load_best_model=True,
                                                 show_progress=config["show_progress"])
        _synchronize(config["device"])
        inference_started = time.perf_counter()  # loading the best weights (ms) included
        uid_field = config["USER_ID_FIELD"]
        with per_user.recording(trainer, uid_field) as (values, users):
            test_result = trainer.evaluate(
                test_data, load_best_model=True, show_progress=config["show_progress"]
            )
        _synchronize(config["device"])
        inference_seconds = time.perf_counter() - inference_started
        per_user_file = per_user.save(run_dir, dataset, uid_field, values, users)
    logger.info("The running environment:\n" + get_environment(config).draw())
    logger.info(f"best valid: {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {
        "best_valid_score": float(best_valid_score),
        "best_valid_result": dict(best_valid_result),
        "test_result": dict(test_result),
        "checkpoint": os.path.abspath(trainer.saved_model_file),
        "log_file": run_folder.log_file(),
        "device": str(config["device"]),
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs_run": len(epoch_seconds),
        "train_seconds_per_epoch": sum(epoch_seconds) / max(1, len(epoch_seconds)),
        "test_inference_seconds": round(inference_seconds, 3),
        "peak_memory_mb": _peak_memory_mb(config["device"]),
        "per_user_file": per_user_file,
    }


def _build_model(config, train_data):
    """The model, with RecBole's own checks of impossible hyperparameters as a ConfigError."""
    try:
        return get_model(config["model"])(config, train_data._dataset).to(config["device"])
    except UserError:
        raise
    except (ValueError, TypeError, KeyError, AssertionError, NotImplementedError) as error:
        raise ConfigError(f"{config['model']} cannot be built with these settings: "
                          f"{type(error).__name__}: {error}") from None


def _resume(trainer, checkpoint, config):
    """Load the checkpoint into model and optimizer; the training keys of this run's config
    (learning_rate, weight_decay) replace the optimizer's saved ones."""
    try:
        trainer.resume_checkpoint(checkpoint)
    except RuntimeError as error:  # load_state_dict: the weights do not fit this model
        raise CheckpointError(
            f"the weights in {checkpoint} do not fit {config['model']} as configured now "
            f"({str(error).splitlines()[0]}); was the dataset or the model's code changed since?"
        ) from None
    for group in trainer.optimizer.param_groups:
        group["lr"] = config["learning_rate"]
        group["weight_decay"] = config["weight_decay"]


@contextlib.contextmanager
def _training_faults(trainer):
    """Interruptions, divergence and failed writes during training and testing, as messages
    that name the checkpoint kept so far; no half-written checkpoint is left behind."""
    saved = trainer.saved_model_file

    def kept():
        if os.path.isfile(saved):
            return f"The best checkpoint so far is {saved}: continue with --resume={saved}"
        return "No checkpoint had been written yet."

    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted. {kept()}") from None
    except OSError as error:
        raise OutputError(f"{describe_os_error(error)}. {kept()}") from None
    except ValueError as error:
        if str(error) != "Training loss is nan":  # RecBole's own check after each batch
            raise
        raise UserError(f"training diverged: the loss became NaN; lower learning_rate (now "
                        f"{trainer.config['learning_rate']}). {kept()}") from None


def _time_epochs(trainer):
    """Wraps the trainer's `_train_epoch`; the returned list gets each epoch's seconds."""
    seconds, train_epoch = [], trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        _synchronize(trainer.device)
        started = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        _synchronize(trainer.device)
        seconds.append(time.perf_counter() - started)
        return loss

    trainer._train_epoch = timed_train_epoch
    return seconds


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device):
    """CUDA: the most memory tensors took on the device; CPU: the process's peak resident set
    (Linux: VmHWM; its ru_maxrss keeps the peak of the process that started this one, e.g. a
    grid process that ran a search, across fork and exec)."""
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
