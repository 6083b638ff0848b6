"""One MaTrRec training epoch on a synthetic ML-1M-sized dataset, per Mamba implementation.

    python benchmarks/matrrec_epoch_gpu.py [--impls triton,kernel,torch] [--epochs 2]
                                           [--scale 1.0] [--device cuda]

The dataset has ML-1M's size: 6,040 users, 3,416 items, 1,000,209 interactions (every user
at least 20, the rest spread with a long tail; items drawn with Zipf-like popularity; one
timestamp per step), written once to ~/.cache/recbole_hybrid_bench/; `--scale` shrinks the
users and interactions (e.g. 0.01 for a quick run on CPU). RecBole's sequential protocol as
in properties/dataset/ml-1m.yaml: histories up to MAX_ITEM_LIST_LENGTH 200, leave-one-out
split. MaTrRec with its package defaults (hidden 64, d_state 32, d_conv 4, expand 2, batch
2048, CE over all items). The dataset and its DataLoader are built once; for each
`mamba_impl`, a model with the same initial weights and the same batch order trains `--epochs`
epochs through RecBole's Trainer (data loading included, no evaluation); the table gives the
seconds of each epoch (the first includes Triton's compilation) and the mean training loss of
the first, which must agree across implementations to float rounding. An implementation that
cannot run here (no mamba_ssm, no CUDA) gets a row saying why.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

USERS, ITEMS, INTERACTIONS = 6040, 3416, 1_000_209
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "recbole_hybrid_bench")


def write_dataset(scale):
    """data_path holding the synthetic dataset `ml1m-synthetic` at `scale`; returns it."""
    name = "ml1m-synthetic"
    users, interactions = round(USERS * scale), round(INTERACTIONS * scale)
    data_path = os.path.join(CACHE, f"{name}-{scale}")
    path = os.path.join(data_path, name, f"{name}.inter")
    if os.path.isfile(path):
        return data_path
    rng = np.random.default_rng(0)
    extra = rng.exponential(1.0, users)
    lengths = 20 + np.floor(extra / extra.sum() * (interactions - 20 * users)).astype(int)
    lengths[: interactions - lengths.sum()] += 1  # exactly `interactions` in all
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.8
    items = rng.choice(np.arange(1, ITEMS + 1), size=interactions, p=popularity / popularity.sum())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        start = 0
        for user, length in enumerate(lengths, 1):
            for step, item in enumerate(items[start:start + length]):
                f.write(f"{user}\t{item}\t{step}\n")
            start += length
    os.replace(path + ".part", path)
    return data_path


def prepare(data_path, epochs, device):
    """RecBole's Config and training DataLoader for MaTrRec on the synthetic dataset, built
    once and shared by every implementation (mamba_impl only changes the model)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    import recbole_hybrid

    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line
    model_file = os.path.join(os.path.dirname(recbole_hybrid.__file__), "properties", "model",
                              "MaTrRec.yaml")
    config = Config(model="MaTrRec", dataset="ml1m-synthetic", config_file_list=[model_file],
                    config_dict={
                        "data_path": data_path, "MAX_ITEM_LIST_LENGTH": 200,
                        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
                        "train_neg_sample_args": None, "use_gpu": device == "cuda",
                        "show_progress": False, "epochs": epochs,
                    })
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    return config, train_data


def train(impl, config, train_data, epochs, device):
    """Seconds of each training epoch and the first epoch's mean loss, with `mamba_impl`."""
    from recbole.utils import get_model, get_trainer, init_seed

    config["mamba_impl"] = impl
    init_seed(config["seed"], config["reproducibility"])
    train_data.generator.manual_seed(config["seed"])  # the same shuffles for every impl
    model = get_model("MaTrRec")(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], "MaTrRec")(config, model)
    seconds, first_loss = [], None
    for epoch in range(epochs):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        if first_loss is None:
            first_loss = loss / len(train_data)
    return seconds, first_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default="triton,kernel,torch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    data_path = write_dataset(args.scale)
    print(f"torch {torch.__version__} on {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
          + f"; dataset {data_path}; MaTrRec, MAX_ITEM_LIST_LENGTH 200")
    print("| mamba_impl | batches | " + " | ".join(f"epoch {e + 1} s" for e in range(args.epochs))
          + " | mean loss, epoch 1 |")
    print("| --- | --- | " + " --- |" * args.epochs + " --- |")
    from recbole_hybrid.errors import ConfigError
    from recbole_hybrid.ops import backend

    config, train_data = None, None
    for impl in args.impls.split(","):
        try:
            backend.check(impl, args.device)
        except ConfigError as error:
            print(f"| {impl} | not run: {error} |")
            continue
        if config is None:
            config, train_data = prepare(data_path, args.epochs, args.device)
        seconds, loss = train(impl, config, train_data, args.epochs, args.device)
        print(f"| {impl} | {len(train_data)} | " + " | ".join(f"{s:.1f}" for s in seconds)
              + f" | {loss:.6f} |", flush=True)


if __name__ == "__main__":
    main()
