"""Raw interaction files -> RecBole atomic files (`<data_path>/<name>/<name>.inter`).

Formats (FORMATS):
- `movielens`: MovieLens-1M `ratings.dat`, `UserID::MovieID::Rating::Timestamp`;
- `amazon-csv`: Amazon 2014 ratings-only CSV, `user,item,rating,timestamp`, no header;
- `amazon-json`: Amazon 5-core reviews, JSON lines with `reviewerID`, `asin`,
  `unixReviewTime` (plain or gzipped);
- `sequences`: one user per line, `user item_1 item_2 ...` in time order (the position
  becomes the timestamp), as in the SASRec authors' preprocessed Amazon files.

The output has the columns `user_id:token  item_id:token  timestamp:float`. Malformed rows
are reported with their line numbers (all of them, up to MAX_REPORTED) and nothing is
written; an existing dataset is replaced only with `force`, and the new file is written next
to it and renamed into place, so a failed conversion leaves the old one intact.
"""

import gzip
import json
import math
import os
import re
import zlib

from recbole_hybrid.errors import MalformedInputError, OutputError, UserError, shown
from recbole_hybrid.utils.files import describe_os_error, replaced_atomically, writable_folder

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
MAX_REPORTED = 10


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


ID = re.compile(r"[\w.:@/+-]+")  # what a user or item id of a sequences file may hold


def _sequences():
    """A parser of `user item_1 item_2 ...` lines (ids of letters, digits and _.:@/+-); a
    user on several lines continues the positions of their earlier lines, so their history
    keeps the file's order."""
    next_position = {}

    def parse(line):
        fields = line.split()
        odd = next((f for f in fields if not ID.fullmatch(f)), None)
        if odd is not None:
            guess = ("; it looks like JSON: --format=amazon-json?" if line.startswith("{") else
                     "; it looks like CSV: --format=amazon-csv?" if "," in line else "")
            raise ValueError(f"{shown(odd)!r} is not an id (ids are letters, digits and "
                             f"_.:@/+-, separated by spaces){guess}")
        if len(fields) < 2:
            raise ValueError("expected a user followed by at least one item")
        user, items = fields[0], fields[1:]
        first = next_position.get(user, 0)
        next_position[user] = first + len(items)
        return [(user, item, float(first + k)) for k, item in enumerate(items)]

    return parse


# format -> a function making a fresh parser of one line into (user, item, timestamp) rows
FORMATS = {
    "movielens": lambda: _ratings("::", "UserID::MovieID::Rating::Timestamp"),
    "amazon-csv": lambda: _ratings(",", "user,item,rating,timestamp"),
    "amazon-json": lambda: _amazon_json,
    "sequences": _sequences,
}


def convert(source, name, fmt, data_path="dataset", force=False):
    """Convert `source` (in format `fmt`) into `data_path/name/name.inter`; return its path
    and the number of interactions written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if not os.path.isfile(source):
        raise UserError(f"source file not found: {source}")
    if not name or name in (".", "..") or any(c in name for c in "/\\") or name.startswith("."):
        raise UserError(f"--name={name!r}: a dataset name is one folder name, e.g. "
                        "amazon-office-products (no slashes, not empty, not starting with '.')")
    folder = os.path.join(data_path, name)
    target = os.path.join(folder, f"{name}.inter")
    if os.path.exists(target) and os.path.samefile(source, target):
        raise UserError(f"{source} is the dataset file {target} itself; converting it would "
                        "overwrite the source: pass another --name or --data_path")
    if os.path.exists(target) and not force:
        raise UserError(f"{target} exists already; pass --force (force=True) to replace it")
    writable_folder(folder, "dataset folder")
    created = not os.path.isdir(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        with replaced_atomically(target) as partial:
            rows = _write(source, FORMATS[fmt](), partial)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise MalformedInputError(f"{source} is not a complete gzip file ({error}); download it "
                                  "again, or pass the uncompressed file") from None
    except UnicodeDecodeError as error:
        raise MalformedInputError(f"{source} is not utf-8 text (byte {error.object[error.start]:#x} "
                                  "cannot be read): pass the raw text file of the format") from None
    except OSError as error:
        if error.filename and os.path.abspath(error.filename) == os.path.abspath(source):
            raise UserError(f"{source} cannot be read ({error.strerror or error})") from None
        raise OutputError(describe_os_error(error, target)) from None
    finally:
        if created and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)  # a failed conversion leaves nothing behind
    return target, rows


def _write(source, parse, path):
    problems, rows = [], 0
    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rt", encoding="utf-8-sig") as lines, \
            open(path, "w", encoding="utf-8") as out:
        out.write(HEADER)
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            if number == 1 and ":token" in line:
                raise MalformedInputError(f"{source} starts with an atomic-file header ({line[:60]!r}): "
                                          "it is in RecBole's format already and needs no conversion")
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
        listed = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise MalformedInputError(f"{source}: {len(problems)} malformed rows, nothing written: {listed}{more}")
    if rows == 0:
        raise MalformedInputError(f"{source}: no interactions found")
    return rows


def _number(text, field):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{field} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{field} {text!r} is not a finite number")
    return value


def _timestamp_text(timestamp):
    """Whole numbers without a fraction (Unix times stay exact), others as Python writes them."""
    return str(int(timestamp)) if timestamp.is_integer() else repr(timestamp)
