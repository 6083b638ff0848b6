"""Loading a dataset through RecBole, with the atomic files checked first.

`check_dataset(config)` runs before any work starts and raises one clear DataError for:
missing files (with what the folder holds instead), files that are not tab-separated text,
a header whose columns lack `:type` or have a type RecBole does not know, a missing column
(the timestamp, above all), rows with too many or too few fields, empty values, values of a
float column that are not numbers, a file without interactions, and rows that repeat an
earlier row exactly (in a leave-one-out split a repeated last interaction puts the test
item into the history, and test recall rises towards 1 without a word). The file is read
once, with pandas' C parser; the verdict is cached per file version.
"""

import difflib
import os
import urllib.error

import pandas as pd
import yaml
from recbole.data import create_dataset as recbole_create_dataset
from recbole.utils import FeatureType

from recbole_hybrid.errors import DatasetNotFoundError, InvalidDatasetError
from recbole_hybrid.utils.paths import recbole_properties
TYPES = [t.value for t in FeatureType]
MAX_SHOWN = 5
_checked = set()  # (path, size, mtime, settings) of files found valid in this process


def check_dataset(config):
    """Raise a clear DataError now if RecBole could not load the dataset `config` names.

    Missing files pass only when RecBole can try to download them (a folder-less dataset
    whose name it knows); `create_dataset` then reports a failed download.
    """
    name, folder = config["dataset"], config["data_path"]
    root = os.path.dirname(os.path.normpath(folder))
    if os.path.isfile(root):
        raise DatasetNotFoundError(f"data_path {root} is a file; pass the folder that holds "
                                   f"{name}/{name}.inter")
    inter_files = _inter_files(config)
    for path in inter_files:
        if os.path.isdir(path):
            raise DatasetNotFoundError(f"{path} is a folder; RecBole reads the interactions from "
                                       "a file of that name")
        if os.path.islink(path) and not os.path.exists(path):
            raise DatasetNotFoundError(f"{path} is a broken link (to {os.readlink(path)}); point "
                                       "it at the interaction file")
    missing = [path for path in inter_files if not os.path.isfile(path)]
    if missing and (os.path.isdir(folder) or download_url(name) is None):
        raise DatasetNotFoundError(_missing_message(name, folder, missing, None))
    for path in inter_files:
        if path not in missing:
            check_atomic_file(path, config)


def create_dataset(config):
    """RecBole's `create_dataset(config)`; a failed download raises DatasetNotFoundError."""
    try:
        return recbole_create_dataset(config)
    except urllib.error.URLError as error:
        missing = [path for path in _inter_files(config) if not os.path.isfile(path)]
        raise DatasetNotFoundError(
            _missing_message(config["dataset"], config["data_path"], missing, error)
        ) from None


def _inter_files(config):
    name, folder = config["dataset"], config["data_path"]
    parts = config["benchmark_filename"] or []
    return [os.path.join(folder, f"{name}.{part}.inter") for part in parts] or [
        os.path.join(folder, f"{name}.inter")
    ]


def download_url(name):
    """RecBole's download address for a dataset name, or None."""
    with open(recbole_properties("dataset", "url.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f).get(name)


def _missing_message(name, folder, missing, download_error):
    present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if download_error is not None:
        why = f"and downloading it failed ({download_error}; no network?)"
    elif present and all(f.endswith((".zip", ".part", ".tmp")) for f in present):
        why = (f"and the folder holds only {', '.join(present)} (an interrupted download "
               "leaves that: remove the folder to download again)")
    elif present:
        shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
        why = (f"but the folder holds {shown}: if one of them is the interaction file, "
               f"rename it to {os.path.basename(missing[0])}")
    elif os.path.isdir(folder):
        why = "and the folder is empty"
    else:
        root = os.path.dirname(os.path.normpath(folder))
        others = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))) \
            if os.path.isdir(root) else []
        close = difflib.get_close_matches(name, others, n=1, cutoff=0.6)
        why = ("and RecBole knows no download address for this name"
               + (f" (did you mean '{close[0]}'? {root} holds it)" if close else ""))
    return (
        f"Dataset '{name}' not found: RecBole reads {', '.join(missing)}, which does not "
        f"exist, {why}. Put the dataset's atomic files into {os.path.abspath(folder)}/ or pass "
        f"--data_path=DIR where DIR/{name}/{name}.inter exists. {name}.inter is a "
        "tab-separated text file whose first line names typed columns, e.g. "
        "'user_id:token<TAB>item_id:token<TAB>timestamp:float', followed by one interaction "
        "per line; sequential models need the timestamp column to order each user's history. "
        "Raw data (MovieLens ratings.dat, Amazon rating CSVs or review JSON, sequence-per-line "
        f"text) is written in that layout by `recbole-hybrid convert --format=... --source FILE "
        f"--name {name} --data_path DIR`."
    )


def check_atomic_file(path, config):
    """Raise InvalidDatasetError for the first kind of problem found in an atomic file."""
    separator, encoding = config["field_separator"], config["encoding"] or "utf-8"
    wanted = list((config["load_col"] or {}).get("inter", []) or [])
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns, separator, encoding, tuple(wanted),
           bool(config["rm_dup_inter"]), config["TIME_FIELD"])
    if key in _checked:
        return
    columns, types = _header(path, separator, encoding)
    _check_columns(config, path, columns, types, wanted)
    _check_rows(config, path, separator, encoding, columns, types, wanted or columns)
    _checked.add(key)


def _header(path, separator, encoding):
    """(names, types) of the header's `name:type` columns."""
    try:
        with open(path, encoding=encoding) as f:
            header = f.readline().rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise InvalidDatasetError(_not_text(path, encoding, error)) from None
    if not header.strip():
        raise InvalidDatasetError(f"{path} is empty or starts with an empty line; its first line "
                                  "must name the columns, e.g. 'user_id:token<TAB>item_id:token"
                                  "<TAB>timestamp:float'")
    if header.startswith("\ufeff"):
        raise InvalidDatasetError(f"{path} starts with a byte-order mark (BOM): set `encoding: "
                                  "utf-8-sig`, or save the file as UTF-8 without it")
    fields = header.split(separator)
    if len(fields) == 1 and any(c in header for c in ",; "):
        found = next(c for c in ",; " if c in header)
        raise InvalidDatasetError(
            f"{path} is not separated by {separator!r} (field_separator): its first line "
            f"{header[:80]!r} has {found!r} between the columns. RecBole reads tab-separated "
            "atomic files: convert the file (e.g. `recbole-hybrid convert --format=amazon-csv` "
            "for user,item,rating,timestamp rows) or set field_separator"
        )
    names, types = [], []
    for field in fields:
        name, colon, kind = field.partition(":")
        if not colon or kind not in TYPES or not name:
            raise InvalidDatasetError(
                f"{path}: the header column {field!r} must be written name:type with a type "
                f"among {', '.join(TYPES)} (e.g. user_id:token, timestamp:float); the header "
                f"is {header[:120]!r}"
            )
        if name in names:
            raise InvalidDatasetError(f"{path}: the header names the column {name!r} twice; "
                                      "give every column its own name")
        names.append(name)
        types.append(kind)
    return names, types


def _check_columns(config, path, columns, types, wanted):
    absent = [field for field in wanted if field not in columns]
    if absent:
        time_hint = (
            " Sequential models order each user's history by the timestamp: add that column "
            "(a user's interaction index works as a timestamp)."
            if config["TIME_FIELD"] in absent
            else ""
        )
        raise InvalidDatasetError(
            f"{path} has no column {', '.join(repr(a) for a in absent)} (its columns: "
            f"{', '.join(columns)}), but load_col asks for {wanted}.{time_hint} Or set "
            "load_col (and USER_ID_FIELD / ITEM_ID_FIELD / TIME_FIELD) to the columns your "
            "file has."
        )
    for field in (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]):
        if field in columns and field in (wanted or columns) and types[columns.index(field)] != "token":
            raise InvalidDatasetError(
                f"{path}: the id column must be declared {field}:token (one id per row), not "
                f"{field}:{types[columns.index(field)]}")
    time_field = config["TIME_FIELD"]
    if time_field in columns and time_field in wanted and types[columns.index(time_field)] != "float":
        raise InvalidDatasetError(
            f"{path}: the time column must be declared {time_field}:float (RecBole orders "
            f"histories by its numeric value), not {time_field}:{types[columns.index(time_field)]}"
        )


def _check_rows(config, path, separator, encoding, columns, types, loaded):
    try:
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, engine="c",
                            skip_blank_lines=False, encoding=encoding, header=None, skiprows=1)
    except pd.errors.EmptyDataError:
        raise InvalidDatasetError(f"{path} has no interactions: only its header line") from None
    except UnicodeDecodeError as error:
        raise InvalidDatasetError(_not_text(path, encoding, error)) from None
    except pd.errors.ParserError as error:
        detail = str(error).split("C error: ")[-1].strip()
        raise InvalidDatasetError(
            f"{path} has rows with different numbers of fields ({detail}; the header is line 1, "
            f"with {len(columns)} columns): every row needs one value per header column, "
            f"separated by {separator!r}") from None
    if table.shape[1] != len(columns):
        raise InvalidDatasetError(
            f"{path}: its rows have {table.shape[1]} fields but its header names {len(columns)} "
            f"columns (a {separator!r} at the end of every row, or two in a row?): every row "
            f"needs one value per header column")
    table.columns = columns
    table = table[~(table == "").all(axis=1)]  # blank lines: RecBole skips them too
    lines = table.index + 2  # the header is line 1
    if table.empty:
        raise InvalidDatasetError(f"{path} has no interactions: only its header line")
    problems = []
    for column in loaded:
        values = table[column]
        empty = values == ""
        if empty.any():
            problems.append(f"column {column} is empty on line(s) {_lines(lines[empty.to_numpy()])} "
                            "(an empty value, or a row with fewer fields than the header)")
        if types[columns.index(column)] == "float":
            numbers = pd.to_numeric(values.where(~empty), errors="coerce")
            bad = (numbers.isna() | ~numbers.abs().lt(float("inf"))) & ~empty
            if bad.any():
                first = values[bad].iloc[0]
                problems.append(f"column {column} is declared float but holds {first!r} on line(s) "
                                f"{_lines(lines[bad.to_numpy()])}")
    if problems:
        raise InvalidDatasetError(
            f"{path}: {'; '.join(problems)}. Fix or remove those rows (RecBole would fill "
            "empty or non-numeric values with a column mean, silently)")
    if not config["rm_dup_inter"]:
        repeated = table.duplicated(subset=list(loaded), keep="first").to_numpy()
        if repeated.any():
            raise InvalidDatasetError(
                f"{path}: {int(repeated.sum())} row(s) repeat an earlier row exactly (line(s) "
                f"{_lines(lines[repeated])}). In a leave-one-out split a repeated interaction "
                "puts the test item into the history. Remove the repeated rows, or set "
                "rm_dup_inter: first (RecBole then keeps the first of each user-item pair)")


def _lines(numbers):
    numbers = list(numbers)
    shown = ", ".join(str(n) for n in numbers[:MAX_SHOWN])
    return shown + (f" and {len(numbers) - MAX_SHOWN} more" if len(numbers) > MAX_SHOWN else "")


def _not_text(path, encoding, error):
    return (f"{path} is not a text file in the {encoding} encoding (byte {error.object[error.start]:#x} "
            f"at offset {error.start} cannot be read): atomic files are tab-separated text; "
            "convert the raw data with `recbole-hybrid convert`, or set `encoding`")
