"""MLSA4Rec (Su, Huang, arXiv 2407.13135): Mamba and low-rank decomposed self-attention
(LSA) fused by a gate, then Mamba layers.

    item embedding -> Dropout -> LayerNorm -> MambaLSAInteraction
    -> num_layers x ResidualMamba (no FFN) -> the hidden state at each sequence's last item

The LSA pools keys and values over all L positions, so unlike Mamba4Rec and MaTrRec the
representation at a position also sees later items and the padding after the sequence.
Initialisation: kaiming_uniform(a=sqrt(5)) weights, zero biases.
"""

import torch
import torch.nn.functional as F
from torch import nn

from recbole_hybrid.errors import ConfigError
from recbole_hybrid.models.base import (
    TiedEmbeddingRecommender, heads_divide, kaiming_init, positive_int, probability,
)
from recbole_hybrid.models.layers import LAYER_NORM_EPS, LowRankSelfAttention, ResidualMamba
from recbole_hybrid.modules import Dropout


class MambaLSAInteraction(nn.Module):
    """E -> H:  H_M = LN1(E + Dropout(Mamba(E)));  H_A = LSA(H_M);
    G = LN2(GELU(W1 H_A) * H_M);  H = LN3(Dropout(GELU(W2 [H_A; G])) + GELU(W3 E))."""

    def __init__(self, hidden_size, n_heads, k_interests, seq_len, dropout_prob, attn_dropout_prob,
                 **mamba_kwargs):
        super().__init__()
        self.mamba = ResidualMamba(hidden_size, dropout_prob, **mamba_kwargs)
        self.lsa = LowRankSelfAttention(hidden_size, n_heads, k_interests, seq_len,
                                        attn_dropout_prob, dropout_prob)
        self.gate = nn.Linear(hidden_size, hidden_size)  # W1
        self.gate_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.fuse = nn.Linear(2 * hidden_size, hidden_size)  # W2
        self.skip = nn.Linear(hidden_size, hidden_size)  # W3
        self.dropout = Dropout(dropout_prob)
        self.out_norm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, e):
        h_m = self.mamba(e)
        h_a = self.lsa(h_m)
        g = self.gate_norm(F.gelu(self.gate(h_a)) * h_m)
        fused = self.dropout(F.gelu(self.fuse(torch.cat([h_a, g], dim=-1))))
        return self.out_norm(fused + F.gelu(self.skip(e)))


class MLSA4Rec(TiedEmbeddingRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        num_layers = positive_int(config, "num_layers")
        k_interests = positive_int(config, "k_interests")
        if k_interests > self.max_seq_length:
            raise ConfigError(
                f"k_interests ({k_interests}) must not exceed MAX_ITEM_LIST_LENGTH "
                f"({self.max_seq_length}): the LSA pools the sequence's positions into k_interests"
            )
        dropout_prob = probability(config, "dropout_prob")
        self.dropout = Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(self.hidden_size, eps=LAYER_NORM_EPS)
        self.interaction = MambaLSAInteraction(
            self.hidden_size, heads_divide(config, self.hidden_size), k_interests,
            self.max_seq_length, dropout_prob, probability(config, "attn_dropout_prob"),
            **self.mamba_kwargs(config),
        )
        self.mamba_layers = nn.ModuleList(
            ResidualMamba(self.hidden_size, dropout_prob, **self.mamba_kwargs(config))
            for _ in range(num_layers)
        )
        self.initialize(config, kaiming_init)

    def forward(self, item_seq, item_seq_len):
        x = self.interaction(self.layer_norm(self.dropout(self.item_embedding(item_seq))))
        for layer in self.mamba_layers:
            x = layer(x)
        return self.gather_indexes(x, item_seq_len - 1)
