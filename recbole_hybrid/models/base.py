"""What the three models share: a tied item embedding that scores the sequence representation,
CE or BPR loss, config checks with clear messages, and the authors' weight initialisations."""

import math

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss
from torch import nn

from recbole_hybrid.config.values import BOOLEAN, POSITIVE_INT, PROBABILITY, require
from recbole_hybrid.errors import ConfigError
from recbole_hybrid.modules import Mamba
from recbole_hybrid.ops.backend import check, requested_impl


class TiedEmbeddingRecommender(SequentialRecommender):
    """A SequentialRecommender whose `forward(item_seq, item_seq_len)` returns one vector per
    sequence (batch, hidden_size), scored against every item by the item embedding table:
    logits = h @ item_embedding.weight.T (loss_type CE), or BPR with sampled negatives."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = positive_int(config, "hidden_size")
        self.loss_type = config["loss_type"]
        if self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        elif self.loss_type == "BPR":
            self.loss_fct = BPRLoss()
        else:
            raise ConfigError(f"{type(self).__name__}: loss_type must be 'CE' or 'BPR', got {self.loss_type!r}")
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)

    def _sequence_output(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])

    def calculate_loss(self, interaction):
        h = self._sequence_output(interaction)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            pos_score = (h * self.item_embedding(pos_items)).sum(-1)
            neg_score = (h * self.item_embedding(neg_items)).sum(-1)
            return self.loss_fct(pos_score, neg_score)
        return self.loss_fct(h @ self.item_embedding.weight.T, pos_items)

    def predict(self, interaction):
        h = self._sequence_output(interaction)
        return (h * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self._sequence_output(interaction) @ self.item_embedding.weight.T

    def mamba_kwargs(self, config):
        """Mamba block settings from the config: d_state, d_conv, expand, mamba_impl."""
        return {
            "d_state": positive_int(config, "d_state"),
            "d_conv": positive_int(config, "d_conv"),
            "expand": positive_int(config, "expand"),
            "impl": mamba_impl(config),
        }

    def initialize(self, config, init_weights):
        """Apply the authors' `init_weights` to every module, as their code does (which also
        re-initialises the Linear layers inside Mamba); with `mamba_init: native`, then give
        every Mamba block back its native initialisation."""
        mamba_init = config["mamba_init"] or "authors"
        if mamba_init not in ("authors", "native"):
            raise ConfigError(f"{type(self).__name__}: mamba_init must be 'authors' or 'native', got {mamba_init!r}")
        self.apply(init_weights)
        if mamba_init == "native":
            for module in self.modules():
                if isinstance(module, Mamba):
                    module.reset_parameters()


def normal_init(std):
    """Linear and Embedding weights ~ N(0, std), biases 0, LayerNorm 1 and 0."""

    def init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    return init_weights


def kaiming_init(module):
    """Linear and Embedding weights kaiming_uniform(a=sqrt(5)), biases 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


def mamba_impl(config):
    """`mamba_impl`, checked against the run's device now rather than at the first step."""
    impl = requested_impl(config["mamba_impl"])
    check(impl, config["device"])
    return impl


def positive_int(config, key):
    return require(key, config[key], POSITIVE_INT)


def probability(config, key):
    return float(require(key, config[key], PROBABILITY))


def flag(config, key, default):
    return default if config[key] is None else require(key, config[key], BOOLEAN)


def heads_divide(config, hidden_size):
    n_heads = positive_int(config, "n_heads")
    if hidden_size % n_heads:
        divisors = [k for k in range(1, hidden_size + 1) if hidden_size % k == 0]
        raise ConfigError(
            f"hidden_size ({hidden_size}) must be divisible by n_heads ({n_heads}); "
            f"n_heads could be one of {divisors}"
        )
    return n_heads

