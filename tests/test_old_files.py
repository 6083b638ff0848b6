"""Files written before the package was split into subpackages (main at 83c32b7) keep working:
its pickled checkpoint names `recbole_hybrid.models.matrrec.MaTrRec`, and its bundle the same.

tests/data/main-83c32b7/ holds a 1-epoch MaTrRec checkpoint on the tiny dataset
(MAX_ITEM_LIST_LENGTH=10, hidden_size=8, inner_size=16, d_state=4), its `export`ed bundle, and
what `recommend --users 1,2,3,10 --k 5 --format json` printed with it at that commit."""

import json
import os
import shutil

import pytest

from recbole_hybrid import cli
from recbole_hybrid.quick_start.runner import run

OLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "main-83c32b7")
USERS = ["--users", "1,2,3,10", "--k", "5", "--format", "json"]


@pytest.fixture
def old(tmp_path, monkeypatch):
    """A copy of the old files (nothing writes into tests/data), run from a fresh folder."""
    folder = tmp_path / "old"
    shutil.copytree(OLD, folder)
    monkeypatch.chdir(tmp_path)
    return folder


def _recommendations(capsys, *argv):
    assert cli.main(["recommend", *argv, *USERS]) == 0
    return json.loads(capsys.readouterr().out)


def _same(got, expected):
    assert [r["user"] for r in got] == [r["user"] for r in expected]
    for ours, theirs in zip(got, expected):
        assert ours["items"] == theirs["items"]
        assert ours["scores"] == pytest.approx(theirs["scores"], rel=1e-5, abs=1e-7)


def test_an_old_checkpoint_recommends_what_it_did(old, capsys):
    expected = json.loads((old / "recommend.json").read_text())
    got = _recommendations(capsys, "--model_file", str(old / "MaTrRec.pth"), "--data_path", str(old))
    _same(got, expected)


def test_an_old_bundle_recommends_what_it_did(old, capsys):
    expected = json.loads((old / "recommend.json").read_text())
    _same(_recommendations(capsys, "--model_file", str(old / "MaTrRec.bundle")), expected)


def test_an_old_checkpoint_exports_and_resumes(old, capsys):
    bundle = old / "again.bundle"
    assert cli.main(["export", "--checkpoint", str(old / "MaTrRec.pth"), "--output", str(bundle),
                     "--data_path", str(old)]) == 0
    capsys.readouterr()
    expected = json.loads((old / "recommend.json").read_text())
    _same(_recommendations(capsys, "--model_file", str(bundle)), expected)

    result = run(resume=str(old / "MaTrRec.pth"), overrides={"epochs": 2, "data_path": str(old)},
                 output_dir=str(old / "runs"))
    assert result["resumed_from"] == str(old / "MaTrRec.pth")
    assert result["test_result"] and os.path.isfile(result["results_file"])
