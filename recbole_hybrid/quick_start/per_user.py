"""Per-user test metrics: for every test user, the value of every top-k metric, i.e. the
numbers RecBole averages into its test result, so that two models can be compared user by
user (`stats.paired_tests`).

`recording(trainer, uid_field)` captures them during one `trainer.evaluate(test_data)`;
`save` writes them as `per_user_test.npz` in the run folder (`per_user_test-2.npz` for a
resumed run, beside its `results-2.json`): an array `users` (the users' tokens, in
evaluation order) and one float64 array per metric ("ndcg@10", ...), each of the users'
length; `load` reads one back.
"""

import contextlib
from unittest import mock

import numpy as np
from recbole.evaluator.base_metric import TopkMetric

from recbole_hybrid.utils.files import next_free, replaced_atomically

FILE = "per_user_test.npz"


@contextlib.contextmanager
def recording(trainer, uid_field):
    """Yields (values, users): filled during the evaluation inside the block with
    {metric@k: per-user array} and the evaluated users' internal ids, batch by batch."""
    values, users = {}, []
    topk_result = TopkMetric.topk_result
    collect = trainer.eval_collector.eval_batch_collect

    def recording_topk_result(metric, name, per_user):  # per_user: (users, max k)
        for k in metric.topk:
            values[f"{name}@{k}"] = np.asarray(per_user[:, k - 1], dtype=np.float64)
        return topk_result(metric, name, per_user)

    def recording_collect(scores, interaction, positive_u, positive_i):
        users.append(interaction[uid_field].cpu().numpy())
        return collect(scores, interaction, positive_u, positive_i)

    with mock.patch.object(TopkMetric, "topk_result", recording_topk_result), \
            mock.patch.object(trainer.eval_collector, "eval_batch_collect", recording_collect):
        yield values, users


def save(run_dir, dataset, uid_field, values, users):
    """Write the recorded values with the users' tokens; returns the file's path, or None
    when there is nothing per user (no top-k metric)."""
    if not values:
        return None
    ids = np.concatenate(users) if users else np.zeros(0, dtype=np.int64)
    tokens = np.asarray(dataset.id2token(uid_field, ids), dtype=str)
    for name, array in values.items():
        if len(array) != len(tokens):
            raise ValueError(f"{name}: {len(array)} per-user values for {len(tokens)} users")
    path = next_free(run_dir, FILE)  # a resumed run's file goes beside the first run's
    with replaced_atomically(path, suffix=".npz") as partial:
        np.savez_compressed(partial, users=tokens, **values)
    return path


def load(path):
    """(users, {metric: values}) of a per-user file."""
    with np.load(path, allow_pickle=False) as data:
        return data["users"], {name: data[name] for name in data.files if name != "users"}
