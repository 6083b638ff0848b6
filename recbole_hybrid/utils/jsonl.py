"""Append-only JSON-lines files (compare's results.jsonl, tune's trials.jsonl).

Each record is one line, flushed to disk before the call returns. A crash can leave a torn
last line: the next append first ends it, so the new record stays readable, and readers
skip lines that are not records.
"""

import json
import os


def append(path, record):
    """Append `record` as one line; a torn last line left by a crash is ended first."""
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        torn = False
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + (json.dumps(record, default=str) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def read(path, required=(), valid=None):
    """(records, skipped): every line that is a JSON object holding the `required` keys
    (and passing `valid(record)`, if given), in order, and the numbers of the lines that
    are not (torn or foreign lines)."""
    records, skipped = [], []
    if not os.path.isfile(path):
        return records, skipped
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and all(key in record for key in required) \
                    and (valid is None or valid(record)):
                records.append(record)
            else:
                skipped.append(number)
    return records, skipped
