"""Using a trained model: top-k recommendations in the dataset's tokens, bundles, the CLI.

The tiny dataset follows a rule (next item = current % N_ITEMS + 1), so a trained model's
top-1 is known; scores are checked against RecBole's own `full_sort_predict` on its test
loader, for the plugin models and RecBole's sequential baselines.
"""

import csv
import json
import os
import subprocess
import sys
import zipfile
from io import StringIO
from unittest import mock

import pytest
import torch
from conftest import N_ITEMS, N_USERS, write_tiny_dataset
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.quick_start import load_data_and_model
from recbole.utils import get_model, init_seed

import recbole_hybrid
from recbole_hybrid import cli
from recbole_hybrid.errors import BundleError
from recbole_hybrid.data.atomic_files import create_dataset
from recbole_hybrid.errors import CheckpointError, UserError
from recbole_hybrid.errors import InvalidQueryError
from recbole_hybrid.serving.recommender import Query, Recommender
from recbole_hybrid.quick_start.runner import run
from recbole_hybrid.config.builder import build_config

# Tiny models that learn the rule in a few epochs (no dropout, lr 0.01, no validation).
LEARN = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "inner_size": 32, "n_layers": 1,
         "n_heads": 1, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0,
         "learning_rate": 0.01, "epochs": 8, "eval_step": 0, "train_batch_size": 64,
         "train_neg_sample_args": None, "metrics": ["Hit"], "topk": [1],
         "valid_metric": "Hit@1", "show_progress": False}
PER_MODEL = {"MaTrRec": {"d_state": 8, "dropout_prob": 0.0}, "SASRec": {}}
# Sequential baselines that score from the item sequence (and the user, for the second row).
BASELINES = ["GRU4Rec", "NARM", "STAMP", "NextItNet", "BERT4Rec", "SINE", "CORE", "LightSANs",
             "SRGNN", "GCSAN", "RepeatNet", "Mamba4Rec", "MLSA4Rec",
             "Caser", "FPMC", "HGN", "HRM", "NPE", "SHAN", "TransRec"]
USER_MODELS = {"Caser", "FPMC", "HGN", "HRM", "NPE", "SHAN", "TransRec"}
# Scores that change when the padding is shortened (see Recommender._padding_free).
PADDING_BOUND = {"NextItNet", "SINE", "LightSANs", "RepeatNet", "MLSA4Rec", "Caser", "HGN",
                 "HRM", "NPE", "SHAN"}


def rule(item):
    return str(int(item) % N_ITEMS + 1)


def file_histories(data_path):
    """{user token: item tokens in time order} from the tiny .inter file."""
    histories = {}
    with open(os.path.join(data_path, "tiny", "tiny.inter"), encoding="utf-8") as f:
        next(f)
        for line in f:
            user, item, _ = line.split("\t")
            histories.setdefault(user, []).append(item)
    return histories


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("recommend-data"))
    write_tiny_dataset(folder)
    return folder


@pytest.fixture(scope="module", params=["MaTrRec", "SASRec"])
def trained(request, tiny_data, tmp_path_factory):
    """(checkpoint, its Recommender) of a model trained on the tiny dataset."""
    folder = tmp_path_factory.mktemp(request.param)
    cwd = os.getcwd()
    os.chdir(folder)  # RecBole writes log/ and log_tensorboard/ into the working directory
    try:
        settings = dict(LEARN, data_path=tiny_data, **PER_MODEL[request.param])
        result = run(request.param, "tiny", overrides=settings, output_dir=str(folder))
    finally:
        os.chdir(cwd)
    return result["checkpoint"], Recommender.load(result["checkpoint"], device="cpu")


def cli_run(*args, cwd):
    """`python -m recbole_hybrid ARGS` in a fresh process, one torch thread."""
    return subprocess.run([sys.executable, "-m", "recbole_hybrid", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_exported_from_the_package():
    assert recbole_hybrid.Recommender is Recommender


def test_top1_is_the_rule_for_held_out_sequences_and_for_users(trained, tiny_data):
    _, recommender = trained
    # every start, several lengths, including sequences wrapping from N_ITEMS to 1
    sequences = [[str((start + j) % N_ITEMS + 1) for j in range(length)]
                 for start in range(N_ITEMS) for length in (1, 4, 12)]
    top1 = recommender.recommend(sequences=sequences, k=1)
    assert [r["items"][0] for r in top1] == [rule(s[-1]) for s in sequences]
    histories = file_histories(tiny_data)
    top1 = recommender.recommend(users=list(histories), k=1)
    assert [r["items"][0] for r in top1] == [rule(h[-1]) for h in histories.values()]
    assert [r["user"] for r in top1] == list(histories)


def test_histories_are_the_whole_file_sequences(trained, tiny_data):
    _, recommender = trained
    for user, items in file_histories(tiny_data).items():
        query = recommender.user_query(user)
        assert [recommender.items[i] for i in query.items] == items


def test_scores_equal_recbole_on_its_test_loader(trained, workdir):
    checkpoint, recommender = trained  # (workdir: RecBole's loader logs into ./log/)
    config, model, _, _, _, test_data = load_data_and_model(checkpoint)
    assert_same_scores(recommender, model.eval(), next(iter(test_data))[0])


def assert_same_scores(recommender, model, interaction):
    """The recommender's scores equal full_sort_predict's for the test loader's own inputs,
    and again with the sequences cut to every length from 1 (RecBole pads them to the full
    length; the recommender may pad less, see Recommender._padding_free)."""
    width = interaction[model.ITEM_SEQ].shape[1]
    lengths = torch.arange(len(interaction)) % width + 1
    cut = Interaction({
        model.ITEM_SEQ: interaction[model.ITEM_SEQ] * (torch.arange(width) < lengths[:, None]),
        model.ITEM_SEQ_LEN: torch.minimum(lengths, interaction[model.ITEM_SEQ_LEN]),
        model.USER_ID: interaction[model.USER_ID]})
    for batch in (interaction, cut):
        with torch.no_grad():
            expected = model.full_sort_predict(batch).view(len(batch), -1)
        queries = [Query(recommender.users[user], user, sequence[:length].tolist(), [])
                   for sequence, length, user in zip(batch[model.ITEM_SEQ],
                                                     batch[model.ITEM_SEQ_LEN],
                                                     batch[model.USER_ID].tolist())]
        results = recommender.top_k(queries, len(recommender.items) - 1, exclude_seen=False)
        for row, result in enumerate(results):
            assert sorted(result["items"], key=int) == [str(i) for i in range(1, N_ITEMS + 1)]
            got = torch.tensor([result["scores"][result["items"].index(token)]
                                for token in recommender.items[1:]])
            torch.testing.assert_close(got, expected[row, 1:], rtol=0, atol=1e-5)


def test_seen_items_are_excluded_unless_asked(trained):
    _, recommender = trained
    users = [str(u) for u in range(1, N_USERS + 1)]
    for user, result in zip(users, recommender.recommend(users=users, k=N_ITEMS)):
        history = {recommender.items[i] for i in recommender.user_query(user).items}
        assert not history & set(result["items"])
        assert len(result["items"]) == N_ITEMS - len(history)
        assert result["scores"] == sorted(result["scores"], reverse=True)
    kept = recommender.recommend(sequences=[["3", "4", "5"]], k=N_ITEMS, exclude_seen=False)[0]
    assert sorted(kept["items"], key=int) == [str(i) for i in range(1, N_ITEMS + 1)]
    assert "[PAD]" not in kept["items"]


def test_thousands_of_queries_in_one_call_equal_one_by_one(trained):
    _, recommender = trained
    users = [str(u % N_USERS + 1) for u in range(3000)]
    batched = recommender.recommend(users=users, k=5, batch_size=700)
    assert len(batched) == 3000
    for user in ("1", "17", str(N_USERS)):
        alone = recommender.recommend(users=[user], k=5)[0]
        for result in (r for r, u in zip(batched, users) if u == user):
            assert result["items"] == alone["items"]
            assert result["scores"] == pytest.approx(alone["scores"], abs=1e-5)


def test_bad_queries_are_clear_errors(trained):
    _, recommender = trained
    cases = [
        (dict(users=["nobody"]), "unknown user 'nobody'"),
        (dict(sequences=[[]]), "sequence is empty"),
        (dict(sequences=[["x", "y"]]), "none of the items 'x', 'y' is known"),
        (dict(users=["1"], k=0), "k must be an integer from 1 to 30"),
        (dict(users=["1"], k=N_ITEMS + 1), "got 31"),
        (dict(users=["1"], k=True), "k must be an integer"),
        (dict(users=["1"], sequences=[["1"]]), "either users or sequences"),
        (dict(users=["[PAD]"]), "unknown user"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidQueryError, match=message.replace("[", r"\[")):
            recommender.recommend(**kwargs)
    partly = recommender.recommend(sequences=[["x", "5", "[PAD]"]], k=1)[0]
    assert partly["ignored"] == ["x", "[PAD]"] and partly["items"] == ["6"]


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["MaTrRec"], indirect=True)  # one fresh process is enough
def test_bundle_loads_in_a_fresh_process_without_the_dataset(trained, tiny_data, tmp_path):
    checkpoint, recommender = trained
    bundle = str(tmp_path / "model.bundle")
    code, out, err = call_main(["export", f"--checkpoint={checkpoint}", f"--output={bundle}"])
    assert code == 0 and f"wrote {bundle}" in out, err
    names = zipfile.ZipFile(bundle).namelist()
    assert sorted(names) == ["manifest.json", "vocabulary.json", "weights.pt"]

    hidden = tiny_data + "-hidden"
    os.rename(tiny_data, hidden)
    try:
        by_user = cli_run("recommend", f"--model_file={bundle}", "--users=1,7,60", "--k=10",
                          "--format=json", cwd=tmp_path)
        by_items = call_main(["recommend", f"--model_file={bundle}", "--sequence=4 5 6",
                              "--sequence=30", "--k=3", "--format=csv"])
        with pytest.raises(UserError, match="not found"):  # the checkpoint needs the dataset
            Recommender.load(checkpoint, device="cpu")
    finally:
        os.rename(hidden, tiny_data)
    assert by_user.returncode == 0, by_user.stderr[-3000:]
    expected = recommender.recommend(users=["1", "7", "60"], k=10)
    for got, want in zip(json.loads(by_user.stdout), expected):
        assert got["user"] == want["user"] and got["items"] == want["items"]
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
    assert by_items[0] == 0, by_items[2]
    rows = list(csv.DictReader(by_items[1].splitlines()))
    expected = recommender.recommend(sequences=[["4", "5", "6"], ["30"]], k=3)
    assert [(r["query"], r["rank"], r["item"]) for r in rows] == [
        (query, str(rank), item) for query, result in zip(["4 5 6", "30"], expected)
        for rank, item in enumerate(result["items"], 1)]
    assert rows[0]["item"] == "7" and rows[3]["item"] == "1"  # the rule's next items


def test_table_output(trained, tmp_path):
    checkpoint, recommender = trained
    code, out, _ = call_main(["recommend", f"--model_file={checkpoint}", "--users=1", "--k=3"])
    assert code == 0
    history = [recommender.items[i] for i in recommender.histories[recommender.user_ids["1"]]]
    assert f"user 1, history of {len(history)} items" in out
    assert " ".join(history[-8:]) in out
    top = recommender.recommend(users=["1"], k=3)[0]
    for rank, (item, score) in enumerate(zip(top["items"], top["scores"]), 1):
        assert f"{rank}   {item}" in out and f"{score:.4f}" in out


@pytest.fixture(scope="module")
def baseline_data(tiny_data):
    """RecBole's loaders of the tiny dataset with sequences of length 10."""
    config = build_config("SASRec", "tiny", overrides=dict(
        MAX_ITEM_LIST_LENGTH=10, data_path=tiny_data, train_neg_sample_args=None))
    train, _, test = data_preparation(config, create_dataset(config))
    return train._dataset, next(iter(test))[0]


@pytest.mark.parametrize("name", BASELINES)
def test_every_sequential_model_from_checkpoint_and_bundle(name, baseline_data, tiny_data,
                                                          tmp_path):
    dataset, test_batch = baseline_data
    settings = dict(MAX_ITEM_LIST_LENGTH=10, data_path=tiny_data, train_neg_sample_args=None)
    if name == "MLSA4Rec":
        settings["k_interests"] = 4
    config = build_config(name, "tiny", overrides=settings)
    init_seed(0, True)
    model = get_model(name)(config, dataset).eval()  # untrained: the scores still must agree
    checkpoint = str(tmp_path / "model.pth")
    torch.save({"config": config, "state_dict": model.state_dict()}, checkpoint)  # RecBole's keys

    recommender = Recommender.load(checkpoint, device="cpu")
    assert recommender.padding_free is (name not in PADDING_BOUND)
    assert_same_scores(recommender, model, test_batch)
    recommender.save(str(tmp_path / "model.bundle"))
    bundled = Recommender.load(str(tmp_path / "model.bundle"), device="cpu")
    assert_same_scores(bundled, model, test_batch)
    users = [str(u) for u in range(1, N_USERS + 1)]
    assert bundled.recommend(users=users) == recommender.recommend(users=users)
    if name in USER_MODELS:
        with pytest.raises(InvalidQueryError, match="user embedding"):
            bundled.recommend(sequences=[["1", "2"]])


def test_models_needing_more_of_the_dataset_are_a_clear_error(baseline_data, tiny_data, tmp_path):
    dataset, _ = baseline_data
    config = build_config("FEARec", "tiny", overrides=dict(
        MAX_ITEM_LIST_LENGTH=10, data_path=tiny_data, train_neg_sample_args=None))
    checkpoint = str(tmp_path / "model.pth")
    torch.save({"config": config, "state_dict": get_model("FEARec")(config, dataset).state_dict()},
               checkpoint)
    with pytest.raises(UserError, match="FEARec cannot be rebuilt.*training interactions"):
        Recommender.load(checkpoint, device="cpu")


@pytest.fixture
def bundle_file(trained, tmp_path):
    path = str(tmp_path / "model.bundle")
    trained[1].save(path)
    return path


def rewrite_manifest(path, **changes):
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = dict(json.loads(members["manifest.json"]), **changes)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in dict(members, **{"manifest.json": json.dumps(manifest)}).items():
            archive.writestr(name, content)


def test_other_versions_and_damaged_files_are_clear_errors(bundle_file, tmp_path):
    rewrite_manifest(bundle_file, format_version=2)
    with pytest.raises(BundleError, match="format version 2, but this recbole-hybrid reads "
                                          "version 1 only: export the checkpoint again"):
        Recommender.load(bundle_file)

    rewrite_manifest(bundle_file, format_version=1)
    Recommender.load(bundle_file, device="cpu")  # restored: loads again
    content = open(bundle_file, "rb").read()
    damaged = tmp_path / "damaged.bundle"
    middle = len(content) // 2  # inside the weights: the zip's CRC check fails
    damaged.write_bytes(content[:middle] + bytes(b ^ 0xFF for b in content[middle:middle + 64])
                        + content[middle + 64:])
    with pytest.raises(BundleError, match="not a readable bundle.*export it again"):
        Recommender.load(str(damaged))
    truncated = tmp_path / "truncated.bundle"
    truncated.write_bytes(content[: len(content) - 100])
    with pytest.raises(CheckpointError, match="neither a bundle nor a readable RecBole checkpoint"
                                              ".*truncated or corrupted"):
        Recommender.load(str(truncated))
    with pytest.raises(CheckpointError, match="model file not found"):
        Recommender.load(str(tmp_path / "missing.bundle"))


def test_a_bundle_never_unpickles(bundle_file, monkeypatch):
    loads = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or original(*a, **kw))
    Recommender.load(bundle_file, device="cpu")
    assert loads and all(kw.get("weights_only") is True for kw in loads)


def call_main(argv):
    """cli.main in this process: (exit code, stdout, stderr)."""
    out, err = StringIO(), StringIO()
    with mock.patch.object(sys, "stdout", out), mock.patch.object(sys, "stderr", err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_bad_input_is_exit_2_and_one_paragraph(bundle_file, tmp_path):
    damaged = tmp_path / "damaged.bundle"
    damaged.write_bytes(open(bundle_file, "rb").read()[:200])
    (tmp_path / "users.txt").write_text("1\nnobody\n")
    model, unreadable = f"--model_file={bundle_file}", "neither a bundle nor a readable RecBole"
    cases = [
        (["recommend", model, "--users=nobody"], "unknown user 'nobody'"),
        (["recommend", model, f"--users_file={tmp_path / 'users.txt'}"], "unknown user 'nobody'"),
        (["recommend", model, f"--users_file={tmp_path / 'none.txt'}"], "cannot read --users_file"),
        (["recommend", model, "--sequence=x y"], "none of the items"),
        (["recommend", model, "--sequence="], "sequence is empty"),
        (["recommend", model, "--users=1", "--k=0"], "k must be an integer from 1 to 30"),
        (["recommend", model, "--users=1", "--k=99"], "got 99"),
        (["recommend", model, "--users=1", "--k=ten"], "--k must be a whole number"),
        (["recommend", model], "exactly one of --users, --users_file and --sequence"),
        (["recommend", model, "--users=1", "--sequence=2"], "exactly one of"),
        (["recommend", f"--model_file={damaged}", "--users=1"], unreadable),
        (["recommend", f"--model_file={tmp_path / 'no.bundle'}", "--users=1"], "not found"),
        (["recommend", model, "--users=1", "--epochs=3"], "takes no --key=value settings"),
        (["export", f"--checkpoint={bundle_file}", f"--output={bundle_file}"],
         "exists: pass --force"),
        (["serve", f"--model_file={damaged}", "--port=0"], unreadable),
        (["serve", model, "--max_batch=0"], "--max_batch and --threads must be at least 1"),
        (["serve", model, "--port=70000"], "--port=70000 must be a port number from 0 to 65535"),
        (["serve", model, "--port=-1"], "--port=-1 must be a port number from 0 to 65535"),
    ]
    for argv, message in cases:
        code, out, err = call_main(argv)
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (argv, err)


@pytest.mark.slow
def test_cli_exit_code_in_a_real_process(tmp_path):
    done = cli_run("recommend", "--model_file=missing.bundle", "--users=1", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: model file not found: missing.bundle"
