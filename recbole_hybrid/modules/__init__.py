"""Neural network blocks shared by the models."""

from recbole_hybrid.modules.mamba import Mamba

__all__ = ["Mamba"]
