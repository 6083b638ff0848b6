"""A tuned grid's searches (`compare.searches`): per (model, dataset) the chosen setting and
the budget its search spent (trials, epochs trained, seconds of its trials): as a table in
table.md (`markdown_lines`) and in tuning.csv (`write_csv`)."""

import csv

from recbole_hybrid.utils.files import replaced_atomically

HEADER = ["dataset", "model", "chosen setting", "best valid score", "trials", "epochs",
          "search seconds"]


def tuned(grid):
    return bool(grid.tune)


def markdown_lines(grid):
    """The budget sentence and the table of table.md."""
    section = grid.tune
    cap = f" of at most {section['epochs']} epochs" if section["epochs"] else ""
    lines = [f"Every model was tuned first, with the same budget: a {section['tool']} "
             f"{section['algo']} search of {section['max_evals']} trials{cap} per dataset, "
             "chosen on the validation split; every seed above ran the chosen setting.", "",
             "| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for row in _rows(grid):
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in row) + " |")
    return lines


def write_csv(path, grid, records, rows):
    with replaced_atomically(path) as partial, open(partial, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([h.replace(" ", "_") for h in HEADER] + ["search_folder"])
        for row, record in zip(_rows(grid), _records(grid)):
            writer.writerow(row + [record and record["folder"]])


def _records(grid):
    return [grid.searches.get((model, dataset))
            for dataset in grid.datasets for model in grid.models]


def _rows(grid):
    rows = []
    for (dataset, model), record in zip(
            [(d, m) for d in grid.datasets for m in grid.models], _records(grid)):
        if record is None:
            rows.append([dataset, model, "(not searched yet)", None, None, None, None])
            continue
        setting = ", ".join(f"{k}={_value(v)}" for k, v in sorted(record["params"].items()))
        rows.append([dataset, model, setting, f"{record['best_valid_score']:.4f}",
                     record["trials"], record["epochs"], f"{record['seconds']:.0f}"])
    return rows


def _value(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)
