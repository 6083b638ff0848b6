"""Model files from strangers: a pickle whose unpickling would run code, given to `recommend`,
`serve`, `export` or `--resume` under any name, is refused in one paragraph before anything
in it runs; our own checkpoints still load without being trusted."""

import os
import shutil

import pytest
import torch
from conftest import assert_one_paragraph

from recbole_hybrid import cli
from recbole_hybrid.quick_start.checkpoints import load_checkpoint

OLD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "main-83c32b7")


class Payload:
    """Unpickled, it creates `marker` (any code could run in its place)."""

    def __init__(self, marker, through=open):
        self.marker, self.through = str(marker), through

    def __reduce__(self):
        if self.through is os.system:
            return os.system, (f"touch {self.marker}",)
        return open, (self.marker, "w")


def payload_files(folder):
    """{description: (path, marker)}: payloads where a checkpoint's parts would be, saved by
    torch.save (a zip, as RecBole's checkpoints are) under .pth and .bundle names."""
    files = {}
    for where in ("whole file", "config", "state_dict", "optimizer"):
        for suffix, through in ((".pth", open), (".bundle", os.system)):
            name = f"{where.replace(' ', '_')}{suffix}"
            marker = folder / f"{name}.ran"
            payload = Payload(marker, through)
            content = payload if where == "whole file" else {
                "config": payload if where == "config" else None, "epoch": 0, "cur_step": 0,
                "state_dict": {"w": payload} if where == "state_dict" else {},
                "optimizer": payload if where == "optimizer" else {}, "other_parameter": None}
            torch.save(content, folder / name)
            files[name] = (folder / name, marker)
    return files


@pytest.fixture
def payloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return payload_files(tmp_path)


COMMANDS = {
    "recommend": lambda path: ["recommend", f"--model_file={path}", "--users=1"],
    "serve": lambda path: ["serve", f"--model_file={path}", "--port=0"],
    "export": lambda path: ["export", f"--checkpoint={path}", "--output=out.bundle"],
    "run --resume": lambda path: ["run", f"--resume={path}"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_no_payload_runs_under_any_name_or_command(command, payloads, capsys):
    for name, (path, marker) in payloads.items():
        code = cli.main(COMMANDS[command](path))
        err = capsys.readouterr().err
        assert_one_paragraph(code, err, "which a RecBole checkpoint never holds", "was not read")
        assert ("--trust_checkpoint" in err) == (command != "run --resume"), err
        assert not marker.exists(), (command, name)
    assert not os.path.exists("out.bundle")


def test_trust_checkpoint_reads_the_file_as_it_is(payloads, capsys):
    """The flag does what it says: the file is unpickled, and its code runs."""
    path, marker = payloads["whole_file.pth"]
    code = cli.main(["recommend", f"--model_file={path}", "--users=1", "--trust_checkpoint"])
    assert_one_paragraph(code, capsys.readouterr().err, "not the dict RecBole's trainer saves")
    assert marker.exists()


def test_our_own_checkpoint_needs_no_trust(tmp_path):
    """A checkpoint a run wrote (here one of main at 83c32b7) holds only allowed names."""
    path = tmp_path / "MaTrRec.pth"
    shutil.copy(os.path.join(OLD, "MaTrRec.pth"), path)
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["config"]["model"] == "MaTrRec" and checkpoint["state_dict"]
