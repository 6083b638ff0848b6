"""Top-k recommendations from a trained sequential model, in the dataset's own tokens.

    recommender = Recommender.load("runs/<run>/MaTrRec-<time>.pth")  # checkpoint + its dataset
    recommender = Recommender.load("model.bundle")                   # a bundle: no dataset needed
    recommender.recommend(users=["1", "2"], k=10)
    recommender.recommend(sequences=[["12", "7", "301"]], k=10)
    recommender.save("model.bundle")

Scores come from the model's own `full_sort_predict` on an Interaction of ITEM_SEQ (the last
MAX_ITEM_LIST_LENGTH items, padded on the right as RecBole's test loader pads them), ITEM_SEQ_LEN
and USER_ID (read by the models that score with a user embedding: Caser, HGN, ...). For models
whose scores do not depend on the padding (probed at load), queries of similar length are
padded only to the longest of them: the same scores, less work for short histories. A user's
history is the whole sequence the model saw at test time: train, valid and test items.
Loading a bundle unpickles nothing; a checkpoint is RecBole's pickle: load only your own.
"""

import os
from typing import List, NamedTuple, Optional

import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType, get_model

from recbole_hybrid.errors import CheckpointError, InvalidQueryError, UserError
from recbole_hybrid.serving import bundle
from recbole_hybrid.utils.versions import versions


class Query(NamedTuple):
    """One encoded request: `items` in internal ids (the whole history, oldest first),
    `user_id` 0 for a bare sequence, `ignored` the unknown item tokens left out."""

    user: Optional[str]
    user_id: int
    items: List[int]
    ignored: List[str]


class Recommender:
    """A trained sequential model with its user and item vocabularies and user histories.

    `users`, `items`: tokens by internal id (id 0 is `[PAD]`); `histories`: one list of
    internal item ids per user id.
    """

    def __init__(self, model, config, users, items, histories):
        self.model, self.config = model, config
        self.users, self.items, self.histories = list(users), list(items), histories
        self.user_ids = {token: i for i, token in enumerate(self.users) if i > 0}
        self.item_ids = {token: i for i, token in enumerate(self.items) if i > 0}
        self.max_length = config["MAX_ITEM_LIST_LENGTH"]
        self.device = next(model.parameters()).device
        self.sequences_allowed = self._scores_without_user()
        self.padding_free = self._padding_free()

    @property
    def name(self):
        return f"{self.config['model']} on {self.config['dataset']}"

    @classmethod
    def load(cls, path, device=None, data_path=None, trust_checkpoint=False):
        """A bundle, or a RecBole checkpoint (`.pth`) with its dataset (read from the
        checkpoint's `data_path`, or from `data_path` when given). What the file holds decides
        how it is read, not its name; a checkpoint naming more than a RecBole checkpoint holds
        is refused unless `trust_checkpoint` (unpickling it could run code)."""
        device = _usable_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if not os.path.exists(path):
            raise CheckpointError(f"model file not found: {path}")
        if bundle.is_bundle(path):
            if data_path:
                raise UserError(f"{path} is a bundle, which needs no data_path")
            return cls(*bundle.read_bundle(path, device))
        return cls(*_read_checkpoint(path, device, data_path, trust_checkpoint))

    def save(self, path):
        """Write a bundle (see `recbole_hybrid.serving.bundle`)."""
        bundle.write_bundle(path, self.config, self.model.state_dict(), self.users, self.items,
                            self.histories, versions(written=True))

    def recommend(self, users=None, sequences=None, k=10, exclude_seen=True, batch_size=256):
        """Top-k items for each user token of `users` (their whole history) or each list of
        item tokens of `sequences`, `batch_size` at a time; returns one dict per query:
        {"user", "items", "scores", "ignored"} (`ignored`: unknown item tokens left out).
        `exclude_seen` leaves out the query's own items; lists can be shorter than k then."""
        if (users is None) == (sequences is None):
            raise InvalidQueryError("give either users or sequences (one of the two)")
        if isinstance(users, str) or isinstance(sequences, str):
            raise InvalidQueryError("users and sequences are lists (of tokens / of token lists)")
        self.check_k(k)
        queries = ([self.user_query(u) for u in users] if users is not None
                   else [self.sequence_query(s) for s in sequences])
        return [result for start in range(0, len(queries), batch_size)
                for result in self.top_k(queries[start:start + batch_size], k, exclude_seen)]

    def user_query(self, user):
        """A Query for a user token: the user's whole history."""
        user = str(user)
        user_id = self.user_ids.get(user)
        if user_id is None:
            examples = ", ".join(repr(u) for u in self.users[1:4])
            raise InvalidQueryError(
                f"unknown user {user!r}: {self.name} knows {len(self.users) - 1} users (tokens "
                f"of the dataset's user_id column after filtering, e.g. {examples})"
            )
        if not self.histories[user_id]:
            raise InvalidQueryError(f"user {user!r} has no interactions left after filtering")
        return Query(user, user_id, self.histories[user_id], [])

    def sequence_query(self, tokens):
        """A Query for a list of item tokens, oldest first; unknown tokens are left out."""
        if not self.sequences_allowed:
            raise InvalidQueryError(
                f"{self.config['model']} scores with a user embedding, so it recommends for "
                "known users only, not for a bare item sequence"
            )
        tokens = [str(t) for t in tokens]
        if not tokens:
            raise InvalidQueryError("the item sequence is empty: give at least one item token")
        known = [self.item_ids[t] for t in tokens if t in self.item_ids]
        ignored = [t for t in tokens if t not in self.item_ids]
        if not known:
            examples = ", ".join(repr(i) for i in self.items[1:4])
            raise InvalidQueryError(
                f"none of the items {', '.join(map(repr, ignored[:10]))} is known to "
                f"{self.name} ({len(self.items) - 1} items, tokens of the dataset's item_id "
                f"column after filtering, e.g. {examples})"
            )
        return Query(None, 0, known, ignored)

    def check_k(self, k):
        n = len(self.items) - 1
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise InvalidQueryError(
                f"k must be an integer from 1 to {n} (the number of items), got {k!r}")

    @torch.no_grad()
    def top_k(self, queries, k, exclude_seen=True):
        """Top-k of a batch of Queries; `k` and `exclude_seen` are one value for all or a
        list with one per query. Returns one dict per query (see `recommend`)."""
        n = len(queries)
        ks = k if isinstance(k, list) else [k] * n
        exclude = exclude_seen if isinstance(exclude_seen, list) else [exclude_seen] * n
        scores = self._scores(queries)
        scores[:, 0] = float("-inf")  # the padding item
        seen = [(row, item) for row, q in enumerate(queries) if exclude[row] for item in q.items]
        if seen:
            rows, items = torch.tensor(seen, device=scores.device).T
            scores[rows, items] = float("-inf")
        values, indices = scores.topk(max(ks), dim=1)
        values, indices = values.cpu().tolist(), indices.cpu().tolist()
        results = []
        for row, query in enumerate(queries):
            kept = [(i, v) for i, v in zip(indices[row][:ks[row]], values[row])
                    if v != float("-inf")]
            results.append({"user": query.user, "items": [self.items[i] for i, _ in kept],
                            "scores": [v for _, v in kept], "ignored": query.ignored})
        return results

    def _scores(self, queries):
        """full_sort_predict's scores (n, n_items). Where the scores do not depend on the
        padding (see `_padding_free`), queries of similar length (up to twice as long) run
        together, padded only to their longest: a short history costs a short forward pass."""
        if not self.padding_free:
            return self._predict(queries, self.max_length)
        groups = {}
        for row, query in enumerate(queries):
            groups.setdefault(min(len(query.items), self.max_length).bit_length(), []).append(row)
        scores = torch.empty(len(queries), len(self.items), device=self.device)
        for rows in groups.values():
            group = [queries[row] for row in rows]
            scores[rows] = self._predict(group, max(len(q.items) for q in group))
        return scores

    def _predict(self, queries, length):
        """full_sort_predict (n, n_items), sequences padded to min(length, MAX_ITEM_LIST_LENGTH)."""
        interaction = self._interaction(queries, min(length, self.max_length))
        return self.model.full_sort_predict(interaction).view(len(queries), -1)

    def _interaction(self, queries, length):
        """ITEM_SEQ (n, length) of the last `length` items padded on the right, ITEM_SEQ_LEN
        (n,), USER_ID (n,)."""
        item_seq = torch.zeros(len(queries), length, dtype=torch.long)
        for row, query in enumerate(queries):
            recent = query.items[-length:]
            item_seq[row, :len(recent)] = torch.tensor(recent)
        lengths = torch.tensor([min(len(q.items), length) for q in queries])
        fields = {self.model.ITEM_SEQ: item_seq, self.model.ITEM_SEQ_LEN: lengths,
                  self.model.USER_ID: torch.tensor([q.user_id for q in queries])}
        return Interaction(fields).to(self.device)

    @torch.no_grad()
    def _scores_without_user(self):
        """Whether the model scores a sequence without a user id (most do; Caser, HGN, ...
        read the user's embedding): probed once with a one-item sequence."""
        probe = self._interaction([Query(None, 0, [1], [])], self.max_length)
        probe.interaction.pop(self.model.USER_ID)
        try:
            self.model.full_sort_predict(probe)
        except KeyError as error:
            if error.args != (self.model.USER_ID,):
                raise
            return False
        return True

    @torch.no_grad()
    def _padding_free(self):
        """Whether padding a sequence only to its own length leaves its scores as they are
        (to 1e-5): true of models that read the last real position through causal layers
        (SASRec, GRU4Rec, MaTrRec, ...), not of NextItNet (reads the last padded position),
        MLSA4Rec or LightSANs (pool over all positions), HRM (pools a fixed window), Caser
        (convolutions as long as the padded sequence). Probed with random sequences."""
        generator = torch.Generator().manual_seed(0)
        random_items = [torch.randint(1, len(self.items), (n,), generator=generator).tolist()
                        for n in (1, 2, 3, max(1, self.max_length // 2))]
        queries = [Query(None, 1, items, []) for items in random_items]
        full = self._predict(queries, self.max_length)
        try:
            alone = torch.cat([self._predict([q], len(q.items)) for q in queries])
        except (RuntimeError, IndexError, ValueError):  # e.g. Caser: a kernel longer than the input
            return False
        return torch.allclose(full, alone, rtol=1e-5, atol=1e-5)


def _usable_device(name):
    """`name` as a torch.device that exists here, else a UserError."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device {name!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                        "devices; use cpu (or another cuda:N)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r}: only cpu and cuda devices are supported")
    return device


def _read_checkpoint(path, device, data_path, trust):
    """(model, config, users, items, histories) from a RecBole checkpoint and its dataset."""
    from recbole_hybrid.data.atomic_files import check_dataset, create_dataset
    from recbole_hybrid.quick_start.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(path, or_bundle=True, trust=trust)
    config, state_dict = checkpoint["config"], checkpoint["state_dict"]
    model_class = get_model(config["model"])
    if model_class.type != ModelType.SEQUENTIAL:
        raise UserError(f"recommending works with sequential models; {config['model']} is "
                        f"a {model_class.type.name.lower()} model")
    if data_path:
        config.final_config_dict["data_path"] = os.path.join(data_path, config["dataset"])
    if config["benchmark_filename"]:
        raise UserError("checkpoints trained on pre-split files (benchmark_filename) are not "
                        "supported: histories are rebuilt from one interaction file")
    config["device"] = torch.device(device)
    check_dataset(config)
    dataset = create_dataset(config)
    users = dataset.field2id_token[dataset.uid_field].tolist()
    items = dataset.field2id_token[dataset.iid_field].tolist()
    model = bundle.build_model(model_class, config, len(users), len(items), state_dict, device)
    return model, config, users, items, _histories(dataset)


def _histories(dataset):
    """Each user's whole item sequence (internal ids) in the order RecBole's sequential
    augmentation gives it: a stable sort by user, then time (ties keep the file order)."""
    uid, iid = dataset.uid_field, dataset.iid_field
    inter = dataset.inter_feat.sort_values([uid, dataset.time_field], kind="stable")
    histories = [[] for _ in range(dataset.user_num)]
    for user, item in zip(inter[uid].tolist(), inter[iid].tolist()):
        histories[user].append(item)
    return histories
