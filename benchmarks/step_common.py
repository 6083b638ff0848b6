"""What the training-step benchmarks share: a model with its package defaults on a batch of
random full-length item sequences, as RecBole's trainer would step it.

The model's yaml is this package's where it has one (the Mamba models), else RecBole's own
(SASRec, LightSANs); `recbole_hybrid` is whichever copy Python imports, so a benchmark can
point PYTHONPATH at an exported older revision.
"""

import os
import sys


def training_setup(model_name, batch, length, items, device="cpu", config_dict=None):
    """(model in train mode, Adam at lr 1e-3, interaction): item ids uniform in 1..items,
    every sequence of full length; seeds fixed, so two processes build the same."""
    import torch
    from recbole.config import Config
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model

    import recbole_hybrid

    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
    own = os.path.join(os.path.dirname(recbole_hybrid.__file__), "properties", "model",
                       f"{model_name}.yaml")
    config = Config(model=model_name, dataset="synthetic",
                    config_file_list=[own] if os.path.exists(own) else None,
                    config_dict={"MAX_ITEM_LIST_LENGTH": length, "use_gpu": device == "cuda",
                                 "train_neg_sample_args": None, **(config_dict or {})})

    class Items:  # the one thing a RecBole dataset tells a sequential model
        def num(self, field):
            return items + 1  # item ids 1..items, 0 is padding

    torch.manual_seed(0)
    model = get_model(model_name)(config, Items()).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    interaction = Interaction({
        model.ITEM_SEQ: torch.randint(1, items + 1, (batch, length), generator=g),
        model.ITEM_SEQ_LEN: torch.full((batch,), length),
        model.POS_ITEM_ID: torch.randint(1, items + 1, (batch,), generator=g),
    }).to(device)
    return model, optimizer, interaction
