"""The plugin models, registered with RecBole by name with their default yamls."""

import os

from recbole_hybrid.config.files import PACKAGE_PROPERTIES
from recbole_hybrid.models.mamba4rec import Mamba4Rec
from recbole_hybrid.models.matrrec import MaTrRec
from recbole_hybrid.models.mlsa4rec import MLSA4Rec
from recbole_hybrid.registry import register_model

DEFAULTS = os.path.join(PACKAGE_PROPERTIES, "model")

for _model in (Mamba4Rec, MaTrRec, MLSA4Rec):
    register_model(_model, os.path.join(DEFAULTS, f"{_model.__name__}.yaml"))

__all__ = ["Mamba4Rec", "MaTrRec", "MLSA4Rec"]
