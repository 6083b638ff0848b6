"""Train models on Amazon Office Products under the MaTrRec paper's protocol and print test
Recall@5/10/20 and NDCG@10 next to the published values (MaTrRec paper, Table 2).

    python benchmarks/office_products.py [--models MaTrRec,Mamba4Rec,MLSA4Rec,SASRec]
        [--output runs/office] [--source Office_Products.txt] [--key=value ...]

Protocol: ../shared/datasets/Office_Products.txt converted (position as timestamp), 5-core,
leave-one-out, full ranking over all items, length 50, batch 2048, Adam 1e-3, early stopping
on NDCG@10 after 10 epochs without gain, dropout 0.4; SASRec with 2 layers, 2 heads, hidden
64. Each model is one `recbole_hybrid.run` (one process here, one after the other, so timings
are comparable); a finished model's results.json lies under --output.
"""

import argparse
import os
import sys
import tempfile

from recbole_hybrid.cli import parse_overrides
from recbole_hybrid.convert import convert
from recbole_hybrid.runner import run

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPOSITORY, "..", "shared", "datasets", "Office_Products.txt")
DATASET = "amazon-office-products"
PROTOCOL = {
    "MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 2048, "eval_batch_size": 4096,
    "learning_rate": 0.001, "stopping_step": 10, "epochs": 300, "valid_metric": "NDCG@10",
    "metrics": "['Recall', 'NDCG']", "topk": "[5, 10, 20]", "show_progress": False,
}
PER_MODEL = {
    "MaTrRec": {"dropout_prob": 0.4, "hidden_dropout_prob": 0.4, "attn_dropout_prob": 0.4},
    "Mamba4Rec": {"dropout_prob": 0.4},
    "MLSA4Rec": {"dropout_prob": 0.4, "attn_dropout_prob": 0.4},
    "SASRec": {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256,
               "hidden_dropout_prob": 0.4, "attn_dropout_prob": 0.4},
}
# MaTrRec paper, Table 2 and the text: Recall@5, Recall@10, Recall@20, NDCG@10 on Office.
PUBLISHED = {
    "MaTrRec": (0.0677, 0.1019, 0.1598, 0.0519),
    "Mamba4Rec": (0.0538, 0.0864, 0.1348, 0.0469),
    "SASRec": (0.0624, 0.0977, 0.1509, 0.0482),
}
COLUMNS = ("recall@5", "recall@10", "recall@20", "ndcg@10")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="MaTrRec,Mamba4Rec,MLSA4Rec,SASRec")
    parser.add_argument("--output", default="runs/office")
    parser.add_argument("--source", default=SOURCE, help="the sequence-per-line file")
    args, extra = parser.parse_known_args()
    overrides = parse_overrides(extra)
    data_path = tempfile.mkdtemp(prefix="office-")
    convert(args.source, DATASET, "sequences", data_path)
    rows = []
    for model in args.models.split(","):
        settings = {**PROTOCOL, **PER_MODEL.get(model, {}), "data_path": data_path, **overrides}
        result = run(model, DATASET, overrides=settings, output_dir=args.output)
        rows.append((model, result))
        print(f"{model}: {result['test_result']} ({result['seconds']:.0f} s, {result['results_file']})",
              flush=True)
    print("\n| model | " + " | ".join(f"{c} (paper)" for c in COLUMNS)
          + " | epochs | s/epoch | peak MiB | seconds |")
    print("| --- |" + " --- |" * (len(COLUMNS) + 4))
    for model, result in rows:
        published = PUBLISHED.get(model)
        cells = [
            f"{result['test_result'][c]:.4f}" + (f" ({published[i]:.4f})" if published else " (n/a)")
            for i, c in enumerate(COLUMNS)
        ]
        print(f"| {model} | " + " | ".join(cells) + f" | {result['epochs_run']} | "
              f"{result['train_seconds_per_epoch']:.1f} | {result['peak_memory_mb']:.0f} | "
              f"{result['seconds']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
