"""Mamba4Rec (Liu et al., arXiv 2403.03900): Mamba blocks and a feed-forward network in
place of self-attention, no position embedding.

    item embedding -> Dropout -> LayerNorm -> num_layers x [ResidualMamba, FeedForward]
    -> the hidden state at each sequence's last item

With one layer the Mamba sublayer has no residual (LN(Dropout(Mamba(x)))), as in the
authors' code. Initialisation: N(0, 0.02) weights, zero biases (`mamba_init: native` keeps
Mamba's own inside its blocks).
"""

from torch import nn

from recbole_hybrid.models.base import TiedEmbeddingRecommender, normal_init, positive_int, probability
from recbole_hybrid.models.layers import LAYER_NORM_EPS, FeedForward, ResidualMamba
from recbole_hybrid.modules import Dropout


class Mamba4Rec(TiedEmbeddingRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        num_layers = positive_int(config, "num_layers")
        dropout_prob = probability(config, "dropout_prob")
        self.dropout = Dropout(dropout_prob)
        self.layer_norm = nn.LayerNorm(self.hidden_size, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(
            nn.Sequential(
                ResidualMamba(self.hidden_size, dropout_prob, residual=num_layers > 1,
                              **self.mamba_kwargs(config)),
                FeedForward(self.hidden_size, 4 * self.hidden_size, dropout_prob),
            )
            for _ in range(num_layers)
        )
        self.initialize(config, normal_init(0.02))

    def forward(self, item_seq, item_seq_len):
        x = self.layer_norm(self.dropout(self.item_embedding(item_seq)))
        for mamba, feed_forward in self.layers[:-1]:
            x = feed_forward(mamba(x))
        mamba, feed_forward = self.layers[-1]
        # the feed-forward network is position-wise: the last one runs at the positions read out
        return feed_forward(self.gather_indexes(mamba(x), item_seq_len - 1))
