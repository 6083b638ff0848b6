"""Loading a dataset through RecBole, with clear errors for missing or unusable files."""

import importlib.util
import os
import urllib.error

import yaml
from recbole.data import create_dataset as recbole_create_dataset

from recbole_hybrid.errors import DatasetNotFoundError, InvalidDatasetError

_URL_FILE = os.path.join(
    os.path.dirname(importlib.util.find_spec("recbole").origin), "properties", "dataset", "url.yaml"
)


def check_dataset(config):
    """Raise a clear error now if RecBole could not load the dataset `config` names.

    Missing files pass only when RecBole can try to download them (a folder-less dataset
    whose name it knows); `create_dataset` then reports a failed download.
    """
    name, folder = config["dataset"], config["data_path"]
    inter_files = _inter_files(config)
    missing = [path for path in inter_files if not os.path.isfile(path)]
    if missing and (os.path.isdir(folder) or download_url(name) is None):
        raise DatasetNotFoundError(_missing_message(name, folder, missing, None))
    for path in inter_files:
        if path not in missing:
            _check_columns(config, path)


def create_dataset(config):
    """RecBole's `create_dataset(config)`; a failed download raises DatasetNotFoundError."""
    check_dataset(config)
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
    with open(_URL_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f).get(name)


def _missing_message(name, folder, missing, download_error):
    if download_error is not None:
        why = f"and downloading it failed ({download_error}; no network?)"
    elif os.path.isdir(folder):
        why = "although the folder exists (an interrupted download leaves it: remove it to retry)"
    else:
        why = "and RecBole knows no download address for this name"
    return (
        f"Dataset '{name}' not found: RecBole reads {', '.join(missing)}, which does not "
        f"exist, {why}. Put the dataset's atomic files into {os.path.abspath(folder)}/ or pass "
        f"--data_path=DIR where DIR/{name}/{name}.inter exists. {name}.inter is a "
        "tab-separated text file whose first line names typed columns, e.g. "
        "'user_id:token<TAB>item_id:token<TAB>timestamp:float', followed by one interaction "
        "per line; sequential models need the timestamp column to order each user's history. "
        "To use raw data (MovieLens ratings.dat, Amazon rating CSVs or review JSON, "
        "sequence-per-line text), write its user, item and time (or position) into that "
        "layout; a `recbole-hybrid convert` command for this is not in this version yet."
    )


def _check_columns(config, path):
    load_col = config["load_col"] or {}
    wanted = list(load_col.get("inter", []))
    with open(path, encoding=config["encoding"] or "utf-8") as f:
        header = f.readline().rstrip("\r\n").split(config["field_separator"])
    columns = [field.split(":")[0] for field in header]
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
