"""Converters: the shared Office Products file through RecBole's 5-core filter, every
format, and clear errors for malformed input."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from recbole_hybrid.data.convert import convert
from recbole_hybrid.errors import MalformedInputError
from recbole_hybrid.data.atomic_files import create_dataset
from recbole_hybrid.errors import UserError
from recbole_hybrid.config.builder import build_config

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "datasets")
OFFICE = os.path.join(SHARED, "Office_Products.txt")


@pytest.mark.skipif(not os.path.isfile(OFFICE), reason=f"no Amazon Office Products file at {OFFICE}")
def test_office_products_through_recbole_5_core(tmp_path):
    path, rows = convert(OFFICE, "amazon-office-products", "sequences", str(tmp_path))
    assert rows == 53258
    config = build_config("SASRec", "amazon-office-products", overrides={"data_path": str(tmp_path)})
    dataset = create_dataset(config)
    # RecBole counts the padding id as a user and an item.
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (4905, 2420, 53258)


def write(path, text, compress=False):
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("fmt,text,compress", [
    ("movielens", "1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n", False),
    ("amazon-csv", "A1,B1,5.0,1400000000\nA1,B2,4.0,1400000100\nA2,B1,3.0,1400000200\n", False),
    ("amazon-json", "".join(json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t, "overall": 5.0}) + "\n"
                            for u, i, t in [("A1", "B1", 1400000000), ("A1", "B2", 1400000100),
                                            ("A2", "B1", 1400000200)]), True),
    ("sequences", "1 10 20\n2 10\n", False),
])
def test_each_format_writes_typed_atomic_files(fmt, text, compress, tmp_path):
    source = write(tmp_path / ("raw.gz" if compress else "raw"), text, compress)
    path, rows = convert(source, "demo", fmt, str(tmp_path / "data"))
    lines = open(path).read().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert rows == len(lines) - 1 == 3
    timestamps = [line.split("\t")[2] for line in lines[1:]]
    assert all("e" not in t for t in timestamps)  # Unix times stay exact
    if fmt == "movielens":
        assert lines[1] == "1\t10\t978300760"
    if fmt == "sequences":
        assert lines[1:] == ["1\t10\t0", "1\t20\t1", "2\t10\t0"]


def test_sequences_take_ids_of_letters_digits_and_common_marks(tmp_path):
    source = write(tmp_path / "raw", "A1B2 B00X.Y-1 item_7 dé:3@x/y+z\n")
    path, rows = convert(source, "demo", "sequences", str(tmp_path / "data"))
    assert rows == 3


@pytest.mark.parametrize("fmt,text,message", [
    ("movielens", "1::10::5::978300760\n1::20::5\n", r"line 2: expected 4 fields separated by '::'"),
    ("movielens", "1::10::five::978300760\n", r"line 1: rating 'five' is not a number"),
    ("amazon-csv", "A1,B1,5.0,yesterday\n", r"line 1: timestamp 'yesterday' is not a number"),
    ("amazon-json", '{"reviewerID": "A1", "asin": "B1"}\n', r"line 1: missing unixReviewTime"),
    ("amazon-json", "not json\n", r"line 1: not a JSON object"),
    ("sequences", "1 10 20\n2\n", r"line 2: expected a user followed by at least one item"),
    ("sequences", '{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1}\n',
     r"""line 1: '\{"reviewerID":' is not an id .* it looks like JSON: --format=amazon-json\?"""),
    ("sequences", "A1,B1,5.0,1\n", r"line 1: 'A1,B1,5.0,1' is not an id .* looks like CSV"),
    ("sequences", "u1 i1 i2\nu2 i1 'i3'\n", r"line 2: \"'i3'\" is not an id"),
])
def test_malformed_rows_are_reported_by_line(fmt, text, message, tmp_path):
    source = write(tmp_path / "raw", text)
    with pytest.raises(MalformedInputError, match=message):
        convert(source, "demo", fmt, str(tmp_path / "data"))
    assert not os.path.exists(tmp_path / "data" / "demo" / "demo.inter")


def test_an_existing_dataset_is_kept_without_force(tmp_path):
    data = str(tmp_path / "data")
    first = write(tmp_path / "first", "1 10 20\n")
    path, _ = convert(first, "demo", "sequences", data)
    before = open(path).read()
    with pytest.raises(UserError, match="exists already; pass --force"):
        convert(write(tmp_path / "second", "2 30 40\n"), "demo", "sequences", data)
    assert open(path).read() == before
    with pytest.raises(MalformedInputError):  # a failed forced conversion keeps the old file too
        convert(write(tmp_path / "bad", "3\n"), "demo", "sequences", data, force=True)
    assert open(path).read() == before
    convert(str(tmp_path / "second"), "demo", "sequences", data, force=True)
    assert open(path).read() != before


def test_convert_command(tmp_path):
    source = write(tmp_path / "raw", "1 10 20\n2 10\nbroken\n")
    command = [sys.executable, "-m", "recbole_hybrid", "convert", "--format=sequences",
               f"--source={source}", "--name=demo", f"--data_path={tmp_path}"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "line 3: expected a user followed by at least one item" in done.stderr
    write(tmp_path / "raw", "1 10 20\n2 10\n")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and "wrote 3 interactions" in done.stdout
