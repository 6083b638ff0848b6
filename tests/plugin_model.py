"""A plugin model for tests: the last item's embedding, transformed, scored against all items."""

import os

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn

from recbole_hybrid import register_model

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "tinyseqrec.yaml")


class TinySeqRec(SequentialRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_embedding = nn.Embedding(self.n_items, config["hidden_size"], padding_idx=0)
        self.transform = nn.Linear(config["hidden_size"], config["hidden_size"])
        self.loss_fct = nn.CrossEntropyLoss()

    def forward(self, item_seq, item_seq_len):
        last = self.gather_indexes(self.item_embedding(item_seq), item_seq_len - 1)
        return self.transform(last)

    def calculate_loss(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.loss_fct(h @ self.item_embedding.weight.T, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (h * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return torch.matmul(h, self.item_embedding.weight.T)


register_model(TinySeqRec, CONFIG_FILE)
