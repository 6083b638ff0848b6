"""RecBole's checkpoints: read one, and the settings to continue its run with.

A checkpoint is the dict RecBole's trainer saves: `config` (RecBole's Config, pickled),
`epoch`, `cur_step`, `best_valid_score`, `state_dict`, `other_parameter`, `optimizer`.

It is a pickle, read through `checkpoint_pickle` (only the names such a checkpoint holds);
a file naming anything else is refused unless the caller trusts it (`--trust_checkpoint`).
"""

import os
import pickle

import torch

from recbole_hybrid.quick_start import checkpoint_pickle
from recbole_hybrid.config.builder import build_config
from recbole_hybrid.config.keys import DDP_KEYS
from recbole_hybrid.errors import CheckpointError

# What a resumed run may change: anything else would train another model than the checkpoint's.
RESUMABLE_KEYS = {"epochs", "learning_rate", "weight_decay", "stopping_step", "eval_step",
                  "train_batch_size", "eval_batch_size", "show_progress", "data_path", "state",
                  "gpu_id", "use_gpu", "worker", "mamba_impl"}


def load_checkpoint(path, or_bundle=False, trust=False):
    """The checkpoint's dict, read on the CPU; CheckpointError for anything else (whose
    advice names a bundle too where `or_bundle`: where one would do as well). Names beyond a
    RecBole checkpoint's are refused unless `trust`: unpickling them could run code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False,
                                pickle_module=pickle if trust else checkpoint_pickle)
        if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict) \
                or not hasattr(checkpoint.get("config"), "final_config_dict"):
            raise TypeError("it is not the dict RecBole's trainer saves")
        return checkpoint
    except checkpoint_pickle.Refused as refused:
        advice = ("a bundle (recbole-hybrid export) loads without unpickling anything; if you "
                  "trust where the file comes from, pass --trust_checkpoint "
                  "(Recommender.load(..., trust_checkpoint=True)) to read it as it is"
                  if or_bundle else "pass the .pth file a run wrote into its run folder")
        raise CheckpointError(f"{checkpoint_pickle.refusal(path, refused)}; {advice}") from None
    except Exception as error:  # any unreadable file gets the same advice
        raise CheckpointError(
            f"{path} is {'neither a bundle nor' if or_bundle else 'not'} a readable RecBole "
            f"checkpoint ({type(error).__name__}: {error}); it may be truncated or corrupted: "
            f"pass {'a bundle from `recbole-hybrid export` or ' if or_bundle else ''}the .pth "
            "file a run wrote into its run folder"
        ) from None


def checkpoint_settings(path):
    """(model, dataset, settings, epochs trained) of the run that wrote a checkpoint: the
    settings it was given (config files and --key=value, less the multi-process ones), not
    RecBole's derived values."""
    checkpoint = load_checkpoint(path)
    try:
        saved = checkpoint["config"]
        settings = {k: v for k, v in {**saved.file_config_dict, **saved.variable_config_dict}.items()
                    if k not in DDP_KEYS}
        return saved["model"], saved["dataset"], settings, checkpoint["epoch"] + 1
    except Exception as error:
        raise CheckpointError(f"{path} is not a RecBole checkpoint ({type(error).__name__}: "
                              f"{error}); pass the .pth file a run wrote into its run folder") from None


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
    config = build_config(saved_model, saved_dataset, [], {**settings, **overrides}, scope="any")
    if trained >= config["epochs"]:
        raise CheckpointError(
            f"{path} has trained {trained} epochs already and epochs={config['epochs']}: pass a "
            f"larger --epochs (e.g. --epochs={trained + 10}) to train further")
    config["checkpoint_dir"] = os.path.dirname(os.path.abspath(path))
    return config
