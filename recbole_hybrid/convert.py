"""Raw interaction files -> RecBole atomic files (`<data_path>/<name>/<name>.inter`).

Formats (FORMATS):
- `movielens`: MovieLens-1M `ratings.dat`, `UserID::MovieID::Rating::Timestamp`;
- `amazon-csv`: Amazon 2014 ratings-only CSV, `user,item,rating,timestamp`, no header;
- `amazon-json`: Amazon 5-core reviews, JSON lines with `reviewerID`, `asin`,
  `unixReviewTime` (plain or gzipped);
- `sequences`: one user per line, `user item_1 item_2 ...` in time order (the position
  becomes the timestamp), as in `../shared/datasets/`.

The output has the columns `user_id:token  item_id:token  timestamp:float`. Malformed rows
are reported with their line numbers (all of them, up to MAX_REPORTED) and nothing is
written; an existing dataset is replaced only with `force`, and the new file is written next
to it and renamed into place, so a failed conversion leaves the old one intact.
"""

import gzip
import json
import os

from recbole_hybrid.errors import UserError

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
MAX_REPORTED = 10


class MalformedInputError(UserError, ValueError):
    """Rows that do not fit the declared format."""


def _ratings(separator, layout):
    """A parser of `user<sep>item<sep>rating<sep>timestamp` lines."""

    def parse(line):
        fields = line.split(separator)
        if len(fields) != 4:
            raise ValueError(f"expected 4 fields separated by {separator!r} ({layout}), got {len(fields)}")
        user, item, rating, timestamp = fields
        _number(rating, "rating")
        return [(user, item, _number(timestamp, "timestamp"))]

    return parse


def _amazon_json(line):
    try:
        review = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a JSON object ({error.msg})") from None
    if not isinstance(review, dict):
        raise ValueError("not a JSON object")
    missing = [key for key in ("reviewerID", "asin", "unixReviewTime") if key not in review]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return [(str(review["reviewerID"]), str(review["asin"]),
             _number(str(review["unixReviewTime"]), "unixReviewTime"))]


def _sequences(line):
    fields = line.split()
    if len(fields) < 2:
        raise ValueError("expected a user followed by at least one item")
    user, items = fields[0], fields[1:]
    return [(user, item, float(position)) for position, item in enumerate(items)]


FORMATS = {
    "movielens": _ratings("::", "UserID::MovieID::Rating::Timestamp"),
    "amazon-csv": _ratings(",", "user,item,rating,timestamp"),
    "amazon-json": _amazon_json,
    "sequences": _sequences,
}


def convert(source, name, fmt, data_path="dataset", force=False):
    """Convert `source` (in format `fmt`) into `data_path/name/name.inter`; return its path
    and the number of interactions written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not os.path.isfile(source):
        raise UserError(f"source file not found: {source}")
    folder = os.path.join(data_path, name)
    target = os.path.join(folder, f"{name}.inter")
    if os.path.exists(target) and not force:
        raise UserError(f"{target} exists already; pass --force (force=True) to replace it")
    os.makedirs(folder, exist_ok=True)
    partial = f"{target}.partial"
    try:
        rows = _write(source, FORMATS[fmt], partial)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return target, rows


def _write(source, parse, path):
    problems, rows = [], 0
    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rt", encoding="utf-8") as lines, open(path, "w", encoding="utf-8") as out:
        out.write(HEADER)
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                parsed = parse(line)
            except ValueError as error:
                problems.append(f"line {number}: {error}")
                continue
            for user, item, timestamp in parsed:
                if not user or not item or any(c in user + item for c in "\t"):
                    problems.append(f"line {number}: empty user or item, or a tab inside one")
                    break
                out.write(f"{user}\t{item}\t{_timestamp_text(timestamp)}\n")
                rows += 1
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise MalformedInputError(f"{source}: {len(problems)} malformed rows, nothing written: {shown}{more}")
    if rows == 0:
        raise MalformedInputError(f"{source}: no interactions found")
    return rows


def _number(text, field):
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a number") from None


def _timestamp_text(timestamp):
    """Whole numbers without a fraction (Unix times stay exact), others as Python writes them."""
    return str(int(timestamp)) if timestamp.is_integer() else repr(timestamp)
