"""What the fault campaigns share: a command run in this process, and what counts as one
paragraph (exit 2, a single `error: ...` line, no traceback)."""

import contextlib
import io
import sys
import time

from recbole_hybrid import cli


def run(argv):
    """(exit code, stderr) of `recbole-hybrid argv` in this process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit:  # argparse's errors
            code = exit.code
    return code, err.getvalue()


def one_paragraph(code, err):
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def print_table(rows, columns, started, versions):
    """The campaign's markdown table: {case class: counts per column}, and how long it took."""
    print(f"{sum(row[0] for row in rows.values())} cases in {time.time() - started:.0f} s "
          f"({versions}, Python {sys.version.split()[0]})\n")
    print("| case class | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for kind, row in rows.items():
        print("| " + " | ".join([kind, *map(str, row)]) + " |")
