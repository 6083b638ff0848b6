"""table.tex: the metric table as a LaTeX tabular (\\textbf best, \\underline second, the
marks of the paired tests as superscripts)."""

from recbole_hybrid.compare import stats
from recbole_hybrid.compare.rows import multi_seed, percent, ranks
from recbole_hybrid.utils.files import write_text_atomically


def write(path, grid, records, rows):
    write_text_atomically(path, text(grid, records, rows))


def text(grid, records, rows):
    """The file's text."""
    several = multi_seed(grid)
    heads = [f"vs {b}" for b, *_ in rows[0].improvements] if rows else []
    columns = "ll" + "r" * (len(grid.models) + len(heads))
    lines = [f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
             "Dataset & Metric & " + " & ".join(_tex(m) for m in grid.models + heads) + " \\\\",
             "\\midrule"]
    for row in rows:
        rank = ranks(row.means())
        cells = []
        for model in grid.models:
            s = row.summaries[model]
            cell = "--" if s is None else (f"{s.mean:.4f} $\\pm$ {s.std:.4f}" if several
                                           else f"{s.mean:.4f}")
            cell = {1: f"\\textbf{{{cell}}}", 2: f"\\underline{{{cell}}}"}.get(rank.get(model), cell)
            cells.append(cell)
        for _, gain, _, holm_p in row.improvements:
            mark = stats.stars(holm_p)
            cells.append(_tex(percent(gain)) + (f"$^{{{mark}}}$" if mark else ""))
        lines.append(f"{_tex(row.dataset)} & {_tex(row.metric)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex(text):
    return str(text).replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
