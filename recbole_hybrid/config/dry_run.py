"""A dry run of a sequential model on a stand-in dataset, before any data is loaded."""

import copy

from recbole_hybrid.errors import ConfigError, UserError


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

    from recbole_hybrid.data.stand_in import StandInDataset
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
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return ConfigError(f"{config['model']} cannot be built or trained with these settings: "
                       f"{type(error).__name__}: {first_line}")
