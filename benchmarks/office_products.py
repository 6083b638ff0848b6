"""Train models on Amazon Office Products under the MaTrRec paper's protocol and print test
Recall@5/10/20 and NDCG@10 next to the published values (MaTrRec paper, Table 2).

    python benchmarks/office_products.py [--models MaTrRec,Mamba4Rec,MLSA4Rec,SASRec]
        [--output runs/office] [--source Office_Products.txt] [--key=value ...]

Protocol: Office_Products.txt (5-core sequences, one user per line) converted (position as
timestamp), 5-core,
leave-one-out, full ranking over all items, with the settings of
properties/grids/office-products.yaml (length 50, batch 2048, Adam 1e-3, early stopping on
NDCG@10 after 10 epochs without gain, dropout 0.4; SASRec with 2 layers, 2 heads, hidden 64).
`recbole-hybrid compare --grid properties/grids/office-products.yaml` runs the same grid with
tables and figures; this script keeps the temporary data path. Each model is one
`recbole_hybrid.run` (one process here, one after the other, so timings
are comparable); a finished model's results.json lies under --output.
"""

import argparse
import os
import sys
import tempfile

from recbole_hybrid.cli import parse_overrides
from recbole_hybrid.compare import load_grid
from recbole_hybrid.data.convert import convert
from recbole_hybrid.compare.published import published
from recbole_hybrid.quick_start.runner import run

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(REPOSITORY, "..", "shared", "datasets", "Office_Products.txt")
DATASET = "amazon-office-products"
GRID = os.path.join(REPOSITORY, "properties", "grids", "office-products.yaml")
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
    grid = load_grid(GRID, models=args.models.split(","))
    rows = []
    for model in grid.models:
        settings = {**grid.settings, **grid.model_settings.get(model, {}), "show_progress": False,
                    "data_path": data_path, **overrides}
        result = run(model, DATASET, overrides=settings, output_dir=args.output)
        rows.append((model, result))
        print(f"{model}: {result['test_result']} ({result['seconds']:.0f} s, {result['results_file']})",
              flush=True)
    print("\n| model | " + " | ".join(f"{c} (paper)" for c in COLUMNS)
          + " | epochs | s/epoch | peak MiB | seconds |")
    print("| --- |" + " --- |" * (len(COLUMNS) + 4))
    for model, result in rows:
        cells = []
        for column in COLUMNS:
            paper = published(DATASET, model, column)
            cells.append(f"{result['test_result'][column]:.4f} "
                         + (f"({paper:.4f})" if paper is not None else "(n/a)"))
        print(f"| {model} | " + " | ".join(cells) + f" | {result['epochs_run']} | "
              f"{result['train_seconds_per_epoch']:.1f} | {result['peak_memory_mb']:.0f} | "
              f"{result['seconds']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
