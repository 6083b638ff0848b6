"""Neural network blocks shared by the models."""

from recbole_hybrid.modules.dropout import Dropout, replace_dropouts
from recbole_hybrid.modules.mamba import Mamba

__all__ = ["Dropout", "Mamba", "replace_dropouts"]
