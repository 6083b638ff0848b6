"""Layers the three models are built from (shapes: (batch, L, hidden_size) in and out)."""

import math

import torch
import torch.nn.functional as F
from recbole.model.layers import ItemToInterestAggregation
from torch import nn

from recbole_hybrid.modules import Dropout, Mamba

LAYER_NORM_EPS = 1e-12


class ResidualMamba(nn.Module):
    """LN(Dropout(Mamba(x)) + x); without the residual, LN(Dropout(Mamba(x)))."""

    def __init__(self, hidden_size, dropout_prob, residual=True, **mamba_kwargs):
        super().__init__()
        self.mamba = Mamba(d_model=hidden_size, **mamba_kwargs)
        self.dropout = Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.residual = residual

    def forward(self, x):
        h = self.dropout(self.mamba(x))
        return self.layer_norm(h + x if self.residual else h)


class FeedForward(nn.Module):
    """Linear(d, inner) -> GELU -> Dropout -> Linear(inner, d) -> Dropout -> LN(out + x)."""

    def __init__(self, hidden_size, inner_size, dropout_prob):
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.dropout = Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, x):
        h = self.dropout(self.dense_2(self.dropout(F.gelu(self.dense_1(x)))))
        return self.layer_norm(h + x)


class WithoutResidual(nn.Module):
    """A RecBole sublayer that ends in `LayerNorm(h + input)` (MultiHeadAttention,
    FeedForward), run as `LayerNorm(h)`: its LayerNorm is taken out, the input subtracted
    from what is left, and the LayerNorm applied to that. For ablations."""

    def __init__(self, sublayer):
        super().__init__()
        self.layer_norm = sublayer.LayerNorm
        sublayer.LayerNorm = nn.Identity()
        self.sublayer = sublayer

    def forward(self, x, *args):
        return self.layer_norm(self.sublayer(x, *args) - x)


class LowRankSelfAttention(nn.Module):
    """LightSANs' item-to-interest attention without its position branch and output dense:
    keys and values are pooled from the L positions to k_interests latent interests
    (RecBole's ItemToInterestAggregation), queries stay per position, and the softmax runs
    over positions (dim -2) as in RecBole; no mask. Returns LN(x + Dropout(context))."""

    def __init__(self, hidden_size, n_heads, k_interests, seq_len, attn_dropout_prob, dropout_prob):
        super().__init__()
        self.n_heads, self.head_size = n_heads, hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.key_pooling = ItemToInterestAggregation(seq_len, hidden_size, k_interests)
        self.value_pooling = ItemToInterestAggregation(seq_len, hidden_size, k_interests)
        self.attn_dropout = Dropout(attn_dropout_prob)
        self.dropout = Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def _heads(self, x):  # (batch, n, hidden) -> (batch, heads, n, head_size)
        return x.view(*x.shape[:2], self.n_heads, self.head_size).transpose(1, 2)

    def forward(self, x):
        q = self._heads(self.query(x))
        k = self._heads(self.key_pooling(self.key(x)))
        v = self._heads(self.value_pooling(self.value(x)))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)  # (batch, heads, L, k)
        context = self.attn_dropout(torch.softmax(scores, dim=-2)) @ v
        context = context.transpose(1, 2).reshape(x.shape)
        return self.layer_norm(x + self.dropout(context))
