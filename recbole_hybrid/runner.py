"""Train and evaluate one model on one dataset, RecBole's way, into a run folder.

Config precedence (lowest first): the model's defaults (RecBole's or the plugin's yaml) <
`properties/dataset/<dataset>.yaml` < `config_files` in order < `overrides` (the command
line's `--key=value`). The process's own `sys.argv` is never read.
"""

import datetime
import glob
import json
import logging
import os
import socket
import sys
import time
from unittest import mock

import torch
import yaml
from recbole.config import Config
from recbole.data import data_preparation
from recbole.utils import (
    ModelType,
    get_environment,
    get_model,
    get_trainer,
    init_logger,
    init_seed,
)
from texttable import Texttable

from recbole_hybrid import registry
from recbole_hybrid.compat import ddp_backend
from recbole_hybrid.datasets import check_dataset, create_dataset
from recbole_hybrid.errors import CheckpointError, UserError

DEFAULT_MODEL = "MaTrRec"
DEFAULT_DATASET = "ml-100k"
REPOSITORY_PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "properties")
RESULTS_FILE = "results.json"
EFFICIENCY_KEYS = ("parameters", "epochs_run", "train_seconds_per_epoch", "test_inference_seconds",
                   "peak_memory_mb")


def dataset_config_file(dataset):
    """`properties/dataset/<dataset>.yaml` from the working directory, else the repository's."""
    for folder in (os.path.join(os.getcwd(), "properties"), REPOSITORY_PROPERTIES):
        path = os.path.join(folder, "dataset", f"{dataset}.yaml")
        if os.path.isfile(path):
            return path
    return None


def config_inputs(model, dataset, config_files=(), overrides=None):
    """The config files and the config dict that give the precedence above."""
    overrides = dict(overrides or {})
    files = [f for f in [dataset_config_file(dataset), *config_files] if f]
    for path in files:
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
    model_file = registry.model_config_file(model)
    settings = {**read_yamls([model_file] if model_file else []), **read_yamls(files), **overrides}
    defaults = {}
    # RecBole rejects negative sampling with loss_type CE, and its overall default samples.
    if "train_neg_sample_args" not in settings and str(settings.get("loss_type")).strip("'\"") == "CE":
        defaults["train_neg_sample_args"] = None
    if "load_col" not in settings and get_model(model).type == ModelType.SEQUENTIAL:
        # RecBole's own default loads no timestamp, so histories would follow file order.
        defaults["load_col"] = {"inter": ["user_id", "item_id", "timestamp"]}
    if "show_progress" not in settings:
        defaults["show_progress"] = sys.stderr.isatty()
    return files, {**defaults, **overrides}


def build_config(model, dataset, config_files=(), overrides=None):
    """A RecBole Config with the precedence above; bad settings raise UserError."""
    files, config_dict = config_inputs(model, dataset, config_files, overrides)
    try:
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            return Config(model, dataset, files, config_dict)
    except UserError:
        raise
    except (ValueError, KeyError, TypeError, NotImplementedError, SyntaxError) as error:
        raise UserError(f"invalid configuration for {model} on {dataset}: {error}") from None


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
):
    """Train, evaluate on the test split, write `<run folder>/results.json`; return it as a dict.

    `resume` continues an interrupted run from its checkpoint, in its own run folder, with
    the checkpoint's configuration (`overrides` still apply, e.g. more epochs). `callback`
    is RecBole's `callback_fn(epoch_idx, valid_score)`, called after each validation.
    Without `model` / `dataset`, the last of `config_files` that names one decides.
    """
    distributed = nproc > 1 or world_size > 0
    if resume:
        if distributed:
            raise UserError("--resume works with single-process runs only (--nproc=1)")
        config = _config_from_checkpoint(resume, overrides)
        run_dir = os.path.dirname(os.path.abspath(resume))
    else:
        named = read_yamls([f for f in config_files if os.path.isfile(f)])
        model = model or named.get("model") or DEFAULT_MODEL
        dataset = dataset or named.get("dataset") or DEFAULT_DATASET
        config = build_config(model, dataset, config_files, overrides)
        check_dataset(config)
        run_dir = _new_run_dir(output_dir, model, dataset)
        if "checkpoint_dir" not in {**config.file_config_dict, **config.variable_config_dict}:
            config["checkpoint_dir"] = run_dir

    started = time.time()
    if distributed:
        result = _run_distributed(
            config, config_files, overrides, nproc, world_size, ip, port, group_offset
        )
    else:
        result = _train_and_evaluate(config, resume, callback)
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
        versions=_versions(),
    )
    result["results_file"] = _write_results(run_dir, result)
    return result


def _train_and_evaluate(config, resume, callback=None):
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_seconds = _time_epochs(trainer)
    if torch.device(config["device"]).type == "cuda":
        torch.cuda.reset_peak_memory_stats(config["device"])
    if resume:
        trainer.resume_checkpoint(resume)
        if trainer.start_epoch >= config["epochs"]:
            raise CheckpointError(
                f"{resume} already finished epoch {trainer.start_epoch - 1} of "
                f"epochs={config['epochs']}: pass a larger --epochs to train further"
            )
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=True, show_progress=config["show_progress"],
            callback_fn=callback,
        )
    except KeyboardInterrupt:
        saved = trainer.saved_model_file
        raise UserError(
            "interrupted. "
            + (
                f"The best checkpoint so far is {saved}: continue with --resume={saved}"
                if os.path.isfile(saved)
                else "No checkpoint had been written yet."
            )
        ) from None
    _synchronize(config["device"])
    inference_started = time.perf_counter()  # loading the best weights (ms) included
    test_result = trainer.evaluate(
        test_data, load_best_model=True, show_progress=config["show_progress"]
    )
    _synchronize(config["device"])
    inference_seconds = time.perf_counter() - inference_started
    logger.info("The running environment:\n" + get_environment(config).draw())
    logger.info(f"best valid: {best_valid_result}")
    logger.info(f"test result: {test_result}")
    return {
        "best_valid_score": float(best_valid_score),
        "best_valid_result": dict(best_valid_result),
        "test_result": dict(test_result),
        "checkpoint": os.path.abspath(trainer.saved_model_file),
        "log_file": _log_file(),
        "device": str(config["device"]),
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "epochs_run": len(epoch_seconds),
        "train_seconds_per_epoch": sum(epoch_seconds) / max(1, len(epoch_seconds)),
        "test_inference_seconds": round(inference_seconds, 3),
        "peak_memory_mb": _peak_memory_mb(config["device"]),
    }


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
    """CUDA: the most memory tensors took on the device; CPU: the process's peak resident set."""
    if torch.device(device).type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _run_distributed(config, config_files, overrides, nproc, world_size, ip, port, offset):
    """RecBole's multi-process training: one process per GPU (nccl) or per CPU worker (gloo),
    `world_size` processes over all nodes; rank 0 of this node logs and reports."""
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    if nproc < 1 or world_size < nproc:
        raise UserError(
            f"--world_size ({world_size}) counts the processes on all nodes, so it cannot be "
            f"smaller than --nproc ({nproc}), the processes on this node"
        )
    model, dataset = config["model"], config["dataset"]
    files, config_dict = config_inputs(model, dataset, config_files, overrides)
    backend = ddp_backend({**config.final_config_dict, **config_dict})
    if backend == "nccl" and nproc > torch.cuda.device_count():
        raise UserError(
            f"--nproc={nproc} asks for one GPU per process, but {torch.cuda.device_count()} GPUs "
            "are visible; lower --nproc, or pass --ddp_backend=gloo for CPU processes"
        )
    if offset == 0:
        _check_port_free(ip, port)
    config_dict.update(checkpoint_dir=config["checkpoint_dir"], world_size=world_size, ip=ip,
                       port=port, nproc=nproc, offset=offset, ddp_backend=backend)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_distributed_worker, args=(model, dataset, files, config_dict, queue), nprocs=nproc,
             join=True)
    # RecBole's workers report metrics only: the efficiency figures are not measured here
    unmeasured = {**dict.fromkeys(EFFICIENCY_KEYS), "device": f"{nproc} {backend} processes"}
    if queue.empty():  # the nodes with offset > 0 report nothing
        return {"best_valid_score": None, "best_valid_result": {}, "test_result": {},
                "checkpoint": None, "log_file": None, **unmeasured}
    result = queue.get()
    checkpoints = sorted(glob.glob(os.path.join(config["checkpoint_dir"], f"{model}-*.pth")))
    return {
        "best_valid_score": float(result["best_valid_score"]),
        "best_valid_result": dict(result["best_valid_result"]),
        "test_result": dict(result["test_result"]),
        "checkpoint": checkpoints[-1] if checkpoints else None,
        "log_file": None,
        **unmeasured,
    }


def _distributed_worker(local_rank, model, dataset, files, config_dict, queue):
    """One process of a multi-process run: RecBole's run_recbole with this package imported
    (this module's import applies the fixes and registers the models in the new process)."""
    from recbole.quick_start import run_recbole

    if config_dict["ddp_backend"] == "gloo":  # CPU processes share the cores, not each take all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config_dict["nproc"]))
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        run_recbole(model, dataset, files, {**config_dict, "local_rank": local_rank}, queue=queue)


def _check_port_free(ip, port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip if ip != "localhost" else "127.0.0.1", int(port)))
        except OSError as error:
            raise UserError(
                f"--port={port} on {ip} is not free ({error.strerror}); pick another with --port"
            ) from None


def _config_from_checkpoint(path, overrides):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # A checkpoint this package's runs wrote: it pickles RecBole's Config.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        config = checkpoint["config"]
    except Exception as error:  # any unreadable file gets the same advice
        raise CheckpointError(
            f"{path} is not a RecBole checkpoint ({type(error).__name__}: {error}); pass the "
            ".pth file a run wrote into its run folder"
        ) from None
    if overrides:
        config.final_config_dict.update(config._convert_config_dict(dict(overrides)))
    return config


def _new_run_dir(output_dir, model, dataset):
    """A run folder path nobody uses yet; it is created when the first file is written."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(os.path.abspath(output_dir), f"{model}-{dataset}-{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _write_results(run_dir, result):
    """Write results.json into the run folder, never over an earlier results file."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RESULTS_FILE)
    n = 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(run_dir, f"results-{n}.json")
    with open(path, "x", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=float)
    return path


def format_results(result):
    """The best valid and the test metrics side by side, as a text table."""
    table = Texttable()
    table.set_deco(Texttable.HEADER)
    table.set_cols_dtype(["t", "f", "f"])
    table.set_precision(4)
    table.add_row(["metric", "best valid", "test"])
    for metric, value in result["test_result"].items():
        table.add_row([metric, result["best_valid_result"].get(metric, float("nan")), value])
    return (
        f"{result['model']} on {result['dataset']} "
        f"(model selected on valid {result['valid_metric']})\n{table.draw()}"
    )


def read_yamls(files):
    settings = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            settings.update(yaml.load(f, Loader=yaml.FullLoader) or {})
    return settings


def _log_file():
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return os.path.abspath(handler.baseFilename)
    return None


def _versions():
    import recbole

    from recbole_hybrid import __version__

    return {"recbole_hybrid": __version__, "recbole": recbole.__version__, "torch": torch.__version__}
