"""Shared fixtures: a tiny synthetic dataset and small-model settings that train in seconds."""

import contextlib
import os
import random
import socket
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import recbole_hybrid  # noqa: E402,F401  (applies the RecBole fixes)

N_USERS, N_ITEMS = 60, 30
SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "run_recbole_hybrid.py")  # the repository's script
INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"  # an .inter file's first line

# SASRec shrunk so that one epoch on the tiny dataset takes well under a second.
TINY_SASREC = {
    "MAX_ITEM_LIST_LENGTH": 10,
    "hidden_size": 16,
    "inner_size": 32,
    "n_layers": 1,
    "n_heads": 1,
    "train_batch_size": 128,
    "eval_batch_size": 256,
    "epochs": 2,
    "show_progress": False,
    "metrics": ["Hit", "NDCG", "MRR"],
    "valid_metric": "NDCG@10",
}
# a compare cell: one epoch of TINY_SASREC's sizes, with the table's metrics (recall, ndcg @10)
TINY_CELL = {**TINY_SASREC, "epochs": 1, "embedding_size": 16, "metrics": ["Recall", "NDCG"],
             "topk": [5, 10]}


def write_tiny_dataset(folder, name="tiny", with_timestamp=True, seed=0):
    """`folder/name/name.inter`: each user walks items 1..N_ITEMS in order from a random
    start (next item = current % N_ITEMS + 1), one step per timestamp."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    path = os.path.join(folder, name, f"{name}.inter")
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token" + ("\ttimestamp:float" if with_timestamp else "") + "\n")
        for user in range(1, N_USERS + 1):
            item = rng.randint(1, N_ITEMS)
            for t in range(rng.randint(8, 12)):
                f.write(f"{user}\t{item}" + (f"\t{t}" if with_timestamp else "") + "\n")
                item = item % N_ITEMS + 1
    return path


@pytest.fixture(scope="session")
def data_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_tiny_dataset(str(folder))
    return str(folder)


@pytest.fixture
def tiny(data_path):
    """Settings for a small SASRec run on the tiny dataset."""
    return dict(TINY_SASREC, data_path=data_path)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in a fresh folder: RecBole writes log/, log_tensorboard/ and saved/ there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def one_torch_thread():
    """The cores are shared: torch's default threads only fight over them in a
    module that asks for this (usefixtures)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flags(settings):
    """{key: value} as the command line's --key=value arguments."""
    return [f"--{key}={value}" for key, value in settings.items()]


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_run(capsys, *argv):
    """`recbole-hybrid run ...` in this process: (exit code, stderr)."""
    from recbole_hybrid import cli

    code = cli.main(["run", *argv])
    return code, capsys.readouterr().err


def assert_one_paragraph(code, err, *fragments):
    """A user error: exit code 2 and one `error: ...` line holding every fragment."""
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: "), err
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def sasrec(tiny, workdir):
    """Flags of a one-epoch SASRec run on the tiny dataset."""
    return ["--model=SASRec", "--dataset=tiny", *flags(dict(tiny, epochs=1))]


@contextlib.contextmanager
def read_only(folder):
    """`folder` made read-only for this process: chmod for a user, the immutable flag for root."""
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root and no immutable flag here: nothing is read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
