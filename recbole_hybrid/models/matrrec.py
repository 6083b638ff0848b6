"""MaTrRec (Zhang, Zhang, Yang, arXiv 2407.19239): each layer a Mamba sublayer followed by
a Transformer layer with causal self-attention; no position embedding.

    item embedding -> LayerNorm -> Dropout -> n_layers x [ResidualMamba, TransformerLayer]
    -> the hidden state at each sequence's last item

The Transformer layer is RecBole's (multi-head self-attention with the causal and padding
mask, then its feed-forward network). The ablations of the paper's Table 3 are config keys:
use_position_embedding, use_ffn, use_residual, use_dropout (False sets every dropout to 0),
n_heads, n_layers. Initialisation: N(0, initializer_range) weights, zero biases.
"""

import torch
from recbole.model.layers import MultiHeadAttention, TransformerLayer
from torch import nn

from recbole_hybrid.errors import ConfigError
from recbole_hybrid.models.base import (
    TiedEmbeddingRecommender, flag, heads_divide, normal_init, positive_int, probability,
)
from recbole_hybrid.models.layers import ResidualMamba, WithoutResidual
from recbole_hybrid.modules import Dropout, replace_dropouts


class MaTrRec(TiedEmbeddingRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        n_layers = positive_int(config, "n_layers")
        n_heads = heads_divide(config, self.hidden_size)
        inner_size = positive_int(config, "inner_size")
        use_ffn = flag(config, "use_ffn", True)
        residual = flag(config, "use_residual", True)
        keep = 1.0 if flag(config, "use_dropout", True) else 0.0
        dropout_prob = keep * probability(config, "dropout_prob")
        hidden_dropout_prob = keep * probability(config, "hidden_dropout_prob")
        attn_dropout_prob = keep * probability(config, "attn_dropout_prob")
        if config["hidden_act"] not in ("gelu", "relu", "swish", "tanh", "sigmoid"):
            raise ConfigError(f"hidden_act must be gelu, relu, swish, tanh or sigmoid, got {config['hidden_act']!r}")
        eps = config["layer_norm_eps"]

        self.position_embedding = (
            nn.Embedding(self.max_seq_length, self.hidden_size)
            if flag(config, "use_position_embedding", False) else None
        )
        self.layer_norm = nn.LayerNorm(self.hidden_size, eps=eps)
        self.dropout = Dropout(dropout_prob)
        self.mamba_layers = nn.ModuleList(
            ResidualMamba(self.hidden_size, dropout_prob, residual=residual, **self.mamba_kwargs(config))
            for _ in range(n_layers)
        )

        def transformer():
            if use_ffn:
                layer = TransformerLayer(n_heads, self.hidden_size, inner_size, hidden_dropout_prob,
                                         attn_dropout_prob, config["hidden_act"], eps)
                if not residual:
                    layer.multi_head_attention = WithoutResidual(layer.multi_head_attention)
                    layer.feed_forward = WithoutResidual(layer.feed_forward)
                return layer
            attention = MultiHeadAttention(n_heads, self.hidden_size, hidden_dropout_prob,
                                           attn_dropout_prob, eps)
            return attention if residual else WithoutResidual(attention)

        self.transformer_layers = nn.ModuleList(transformer() for _ in range(n_layers))
        replace_dropouts(self.transformer_layers)  # RecBole's nn.Dropout: the faster CPU mask
        self.initialize(config, normal_init(config["initializer_range"]))

    def forward(self, item_seq, item_seq_len):
        x = self.item_embedding(item_seq)
        if self.position_embedding is not None:
            positions = torch.arange(item_seq.shape[1], device=item_seq.device)
            x = x + self.position_embedding(positions)
        x = self.dropout(self.layer_norm(x))
        mask = self.get_attention_mask(item_seq)  # causal, padding masked
        layers = list(zip(self.mamba_layers, self.transformer_layers))
        for mamba, transformer in layers[:-1]:
            x = transformer(mamba(x), mask)
        mamba, transformer = layers[-1]
        if isinstance(transformer, TransformerLayer):
            # its feed-forward network is position-wise: the last one runs at the positions read out
            x = transformer.multi_head_attention(mamba(x), mask)
            return transformer.feed_forward(self.gather_indexes(x, item_seq_len - 1))
        return self.gather_indexes(transformer(mamba(x), mask), item_seq_len - 1)
