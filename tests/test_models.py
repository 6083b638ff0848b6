"""Mamba4Rec, MaTrRec, MLSA4Rec: shapes, scoring, causality, padding, learning, checkpoints."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from conftest import SCRIPT
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import get_model, init_seed

from recbole_hybrid.data.atomic_files import create_dataset
from recbole_hybrid.errors import ConfigError
from recbole_hybrid.modules import Mamba
from recbole_hybrid.quick_start.runner import run
from recbole_hybrid.config.builder import build_config

MODELS = ["Mamba4Rec", "MaTrRec", "MLSA4Rec"]
CAUSAL = ["Mamba4Rec", "MaTrRec"]
SMALL = {"hidden_size": 16, "d_state": 8, "n_heads": 2, "k_interests": 4, "inner_size": 32,
         "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 128, "eval_batch_size": 256,
         "show_progress": False, "epochs": 1}


def build(model, data_path, **overrides):
    # SMALL holds settings of all three models: scope="any" accepts another model's key
    config = build_config(model, "tiny", overrides=dict(SMALL, data_path=data_path, **overrides),
                          scope="any")
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    net = get_model(model)(config, train._dataset)
    return net.eval(), train, test


def random_sequences(net, batch=4, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, net.n_items, (batch, length), generator=g)
    lengths = torch.tensor([length, length - 3, 5, 1])[:batch]
    items[torch.arange(length)[None, :] >= lengths[:, None]] = 0  # right padding
    return items, lengths


@pytest.mark.parametrize("model", MODELS)
def test_scores_all_items_and_predict_agrees(model, data_path):
    net, _, test = build(model, data_path)
    interaction = next(iter(test))[0]
    with torch.no_grad():
        scores = net.full_sort_predict(interaction)
        h = net.forward(interaction[net.ITEM_SEQ], interaction[net.ITEM_SEQ_LEN])
    batch = interaction[net.ITEM_SEQ].shape[0]
    assert scores.shape == (batch, net.n_items) and scores.dtype == torch.float32
    assert h.shape == (batch, 16)
    for item in (1, 7, net.n_items - 1):
        interaction.update(Interaction({net.ITEM_ID: torch.full((batch,), item)}))
        with torch.no_grad():
            assert torch.allclose(net.predict(interaction), scores[:, item], atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_loss_is_finite_and_trains_every_parameter(model, loss_type, data_path):
    neg = {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}} if loss_type == "BPR" else {}
    net, train, _ = build(model, data_path, loss_type=loss_type, **neg)
    net.train()
    loss = net.calculate_loss(next(iter(train)))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    silent = [name for name, p in net.named_parameters() if p.grad is None]
    assert silent == [], silent


@pytest.mark.parametrize("model", CAUSAL)
def test_position_t_ignores_items_after_t(model, data_path):
    net, _, _ = build(model, data_path)
    items, _ = random_sequences(net, batch=1)
    changed = items.clone()
    changed[0, 6:] = torch.randint(1, net.n_items, (4,))
    with torch.no_grad():
        for t in range(1, 7):
            at_t = torch.tensor([t])
            assert torch.allclose(net(items, at_t), net(changed, at_t), atol=1e-6), t


def test_mlsa4rec_sees_the_whole_window(data_path):
    """By design (the LSA pools over all positions) MLSA4Rec's representation at t also
    depends on later items and on the padding length: documented, not a bug."""
    net, _, _ = build("MLSA4Rec", data_path)
    items, _ = random_sequences(net, batch=1)
    changed = items.clone()
    changed[0, 6:] = (changed[0, 6:] % (net.n_items - 1)) + 1
    at_5 = torch.tensor([5])
    with torch.no_grad():
        assert not torch.allclose(net(items, at_5), net(changed, at_5), atol=1e-6)


@pytest.mark.parametrize("model", CAUSAL)
def test_right_padding_does_not_change_the_representation(model, data_path):
    net, _, _ = build(model, data_path)
    items, lengths = random_sequences(net)
    padded = torch.cat([items, torch.zeros(4, 7, dtype=items.dtype)], dim=1)
    with torch.no_grad():
        assert torch.allclose(net(items, lengths), net(padded, lengths), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_learns_a_deterministic_next_item_rule(model, data_path, workdir):
    """Each user walks items in order (next = current % 30 + 1): Hit@10 must exceed 0.9."""
    result = run(model, "tiny", overrides=dict(
        SMALL, data_path=data_path, hidden_size=32, epochs=15, learning_rate=0.01,
        dropout_prob=0.1, hidden_dropout_prob=0.1, attn_dropout_prob=0.1, stopping_step=15,
        metrics="['Hit', 'NDCG']", topk="[10]", valid_metric="Hit@10",
    ), output_dir=str(workdir / "runs"), scope="any")
    assert result["test_result"]["hit@10"] > 0.9, result["test_result"]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_checkpoint_reloads_in_a_fresh_process(model, data_path, workdir):
    result = run(model, "tiny", overrides=dict(SMALL, data_path=data_path),
                 output_dir=str(workdir / "runs"), scope="any")
    script = (
        "import json, sys, torch, recbole_hybrid\n"
        "from recbole.quick_start import load_data_and_model\n"
        "config, model, _, _, _, test = load_data_and_model(sys.argv[1])\n"
        "model.eval()\n"
        "with torch.no_grad():\n"
        "    scores = model.full_sort_predict(next(iter(test))[0])\n"
        "print(json.dumps(scores[:3, :20].tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, result["checkpoint"]], cwd=workdir,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    fresh = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))

    checkpoint = torch.load(result["checkpoint"], weights_only=False)
    net, _, test = build(model, data_path)
    net.load_state_dict(checkpoint["state_dict"])
    with torch.no_grad():
        here = net.full_sort_predict(next(iter(test))[0])[:3, :20]
    assert torch.allclose(fresh, here, atol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_state_dict_moves_between_mamba_paths(model, data_path, monkeypatch):
    """Models built on the C++ scan and on the PyTorch chunked scan share parameters; where
    mamba_ssm imports (CUDA), its Mamba takes each block's state dict too."""
    net, _, test = build(model, data_path)
    interaction = next(iter(test))[0]
    with torch.no_grad():
        expected = net.full_sort_predict(interaction)
    monkeypatch.setenv("RECBOLE_HYBRID_CPU_KERNEL", "0")
    other, _, _ = build(model, data_path, mamba_impl="torch")
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(other.full_sort_predict(interaction), expected, atol=1e-5)
    blocks = [m for m in net.modules() if isinstance(m, Mamba)]
    assert blocks and all(
        sorted(dict(b.named_parameters())) == sorted(
            ["A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
             "dt_proj.weight", "dt_proj.bias", "out_proj.weight"])
        for b in blocks
    )
    if torch.cuda.is_available():
        mamba_ssm = pytest.importorskip("mamba_ssm")
        for block in blocks:
            theirs = mamba_ssm.Mamba(d_model=block.d_model, d_state=block.d_state,
                                     d_conv=block.d_conv, expand=block.expand).cuda()
            theirs.load_state_dict(block.state_dict())
            ours = copy.deepcopy(block).cuda()
            ours.impl = "torch"  # this package's own scan, against their kernels
            x = torch.randn(3, 10, block.d_model, device="cuda")
            with torch.no_grad():
                assert torch.allclose(theirs(x), ours(x), rtol=1e-4, atol=1e-5)


def test_authors_and_native_mamba_initialisation(data_path):
    authors, _, _ = build("Mamba4Rec", data_path)
    native, _, _ = build("Mamba4Rec", data_path, mamba_init="native")
    block_a = next(m for m in authors.modules() if isinstance(m, Mamba))
    block_n = next(m for m in native.modules() if isinstance(m, Mamba))
    assert torch.equal(block_a.dt_proj.bias, torch.zeros_like(block_a.dt_proj.bias))  # dt starts at 0.69
    dt = torch.nn.functional.softplus(block_n.dt_proj.bias)
    assert dt.min() >= 0.00099 and dt.max() <= 0.1001
    assert abs(block_a.in_proj.weight.std().item() - 0.02) < 0.005


def all_positions(net, items, lengths):
    """The model's representation computed at every position, then read out (the layers
    called one after another, as their definitions say)."""
    x = net.item_embedding(items)
    if isinstance(net, get_model("Mamba4Rec")):
        x = net.layer_norm(net.dropout(x))
        for layer in net.layers:
            x = layer(x)
    else:
        x = net.dropout(net.layer_norm(x))
        mask = net.get_attention_mask(items)
        for mamba, transformer in zip(net.mamba_layers, net.transformer_layers):
            x = transformer(mamba(x), mask)
    return net.gather_indexes(x, lengths - 1)


@pytest.mark.parametrize("model,overrides", [
    ("Mamba4Rec", {}), ("Mamba4Rec", {"num_layers": 2}), ("MaTrRec", {}),
    ("MaTrRec", {"n_layers": 2}), ("MaTrRec", {"use_ffn": False}),
    ("MaTrRec", {"use_residual": False}),
])
def test_the_last_feed_forward_runs_only_where_the_output_is_read(model, overrides, data_path):
    """Forward runs the last (position-wise) feed-forward network on the read-out positions
    only; the result is the one computed at every position, in float64 to rounding."""
    net, _, _ = build(model, data_path, **overrides)
    net = net.double()
    items, lengths = random_sequences(net)
    rows = []
    last = net.layers[-1][1] if model == "Mamba4Rec" else net.transformer_layers[-1]
    ffn = getattr(last, "feed_forward", None if model == "MaTrRec" else last)
    if ffn is not None:
        ffn.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape))
    with torch.no_grad():
        fast = net(items, lengths)
        rows_fast = list(rows)
        reference = all_positions(net, items, lengths)
    assert torch.allclose(fast, reference, rtol=0, atol=1e-12)
    if ffn is not None:
        assert rows_fast == [(4, 16)] and rows[-1] == (4, 10, 16)


def test_matrrec_ablation_switches(data_path):
    default, _, test = build("MaTrRec", data_path)
    interaction = next(iter(test))[0]
    names = dict(default.named_parameters())
    with_pe, _, _ = build("MaTrRec", data_path, use_position_embedding=True)
    assert "position_embedding.weight" in dict(with_pe.named_parameters())
    assert "position_embedding.weight" not in names
    no_ffn, _, _ = build("MaTrRec", data_path, use_ffn=False)
    assert not any("feed_forward" in n for n, _ in no_ffn.named_parameters())
    no_dropout, _, _ = build("MaTrRec", data_path, use_dropout=False)
    assert all(m.p == 0 for m in no_dropout.modules() if isinstance(m, torch.nn.Dropout))
    two, _, _ = build("MaTrRec", data_path, n_layers=2, n_heads=4)
    assert len(two.mamba_layers) == 2 and two.transformer_layers[0].multi_head_attention.num_attention_heads == 4
    with torch.no_grad():
        for net in (with_pe, no_ffn, no_dropout, two):
            assert torch.isfinite(net.full_sort_predict(interaction)).all()

    # Without residuals, the same weights give another function.
    no_residual, _, _ = build("MaTrRec", data_path, use_residual=False)
    renamed = {}
    for key, value in default.state_dict().items():
        for sublayer in ("multi_head_attention", "feed_forward"):
            if f".{sublayer}." in key:
                key = key.replace(f"{sublayer}.LayerNorm.", f"{sublayer}.layer_norm.")
                if f"{sublayer}.layer_norm." not in key:
                    key = key.replace(f"{sublayer}.", f"{sublayer}.sublayer.")
        renamed[key] = value
    no_residual.load_state_dict(renamed)  # strict: every parameter has its counterpart
    with torch.no_grad():
        assert not torch.allclose(no_residual.full_sort_predict(interaction),
                                  default.full_sort_predict(interaction), atol=1e-4)


@pytest.mark.parametrize("model,overrides,message", [
    ("MaTrRec", {"n_heads": 3}, r"hidden_size \(16\) must be divisible by n_heads \(3\)"),
    ("MLSA4Rec", {"k_interests": 11}, r"k_interests \(11\) must not exceed MAX_ITEM_LIST_LENGTH \(10\)"),
    ("Mamba4Rec", {"dropout_prob": 1.0}, r"dropout_prob must be a probability in \[0, 1\)"),
    ("MaTrRec", {"attn_dropout_prob": -0.1}, r"attn_dropout_prob must be a probability"),
    ("Mamba4Rec", {"hidden_size": 0}, r"hidden_size must be a positive integer"),
    ("MLSA4Rec", {"d_state": 0}, r"d_state must be a positive integer"),
    ("Mamba4Rec", {"mamba_init": "xavier"}, r"mamba_init must be 'authors' or 'native'"),
    ("MaTrRec", {"mamba_impl": "fastest"}, r"mamba_impl='fastest': choose one of auto, kernel, torch"),
])
def test_impossible_hyperparameters_are_explained(model, overrides, message, data_path):
    with pytest.raises(ConfigError, match=message):
        build(model, data_path, **overrides)


@pytest.mark.slow
def test_the_run_script_reports_impossible_hyperparameters(data_path, workdir):
    done = subprocess.run(
        [sys.executable, SCRIPT, "--model=MaTrRec", "--dataset=tiny", f"--data_path={data_path}", "--n_heads=3"],
        cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "must be divisible by n_heads" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_one_epoch_with_enable_amp_and_enable_scaler(model, data_path, workdir):
    """RecBole's mixed precision (autocast: bfloat16 on a CPU, float16 on CUDA) and its
    GradScaler: the run ends (a NaN loss would stop it with "training diverged") with the
    metrics of float32 within noise."""
    results = [run(model, "tiny", overrides=dict(SMALL, data_path=data_path, epochs=2,
                                                 enable_amp=amp, enable_scaler=amp),
                   output_dir=str(workdir / "runs"), scope="any") for amp in (False, True)]
    full, mixed = (r["test_result"] for r in results)
    for metric, value in full.items():
        assert abs(mixed[metric] - value) <= 0.02, (metric, value, mixed[metric])


@pytest.mark.parametrize("model", MODELS)
def test_every_dropout_is_the_fast_one(model, data_path):
    """RecBole's layers inside MaTrRec included; the ablation's p=0 kept."""
    from recbole_hybrid.modules import Dropout

    for overrides in ({}, {"use_dropout": False}) if model == "MaTrRec" else ({},):
        net, _, _ = build(model, data_path, **overrides)
        dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts and all(type(m) is Dropout for m in dropouts)
        if overrides:
            assert all(m.p == 0 for m in dropouts)
