"""Model files from strangers: a pickle whose unpickling would run code, given to `recommend`,
`serve`, `export` or `--resume` under any name, is refused in one paragraph before anything
in it runs; our own checkpoints still load without being trusted."""

import itertools
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
    torch.save (a zip, as RecBole's checkpoints are; torch's legacy format) and by pickle
    (read by torch.load too), under .pth and .bundle names."""
    import pickle

    files = {}
    for where, how in itertools.product(("whole file", "config", "state_dict", "optimizer"),
                                        ("zip", "legacy", "pickle")):
        for suffix, through in ((".pth", open), (".bundle", os.system)):
            name = f"{where.replace(' ', '_')}-{how}{suffix}"
            marker = folder / f"{name}.ran"
            payload = Payload(marker, through)
            content = payload if where == "whole file" else {
                "config": payload if where == "config" else None, "epoch": 0, "cur_step": 0,
                "state_dict": {"w": payload} if where == "state_dict" else {},
                "optimizer": payload if where == "optimizer" else {}, "other_parameter": None}
            if how == "pickle":
                (folder / name).write_bytes(pickle.dumps(content))
            else:
                torch.save(content, folder / name, _use_new_zipfile_serialization=how == "zip")
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
    path, marker = payloads["whole_file-zip.pth"]
    code = cli.main(["recommend", f"--model_file={path}", "--users=1", "--trust_checkpoint"])
    assert_one_paragraph(code, capsys.readouterr().err, "not the dict RecBole's trainer saves")
    assert marker.exists()


@pytest.mark.parametrize("name", ["config-zip.pth", "whole_file-pickle.pth",
                                  "state_dict-legacy.bundle"])
def test_recbole_s_own_loads_refuse_a_payload_too(name, payloads):
    """compat gives RecBole's torch.load calls (load_data_and_model, a trainer's resume and
    best-model reload) the same unpickler."""
    from recbole.quick_start import load_data_and_model

    from recbole_hybrid.errors import CheckpointError

    path, marker = payloads[name]
    with pytest.raises(CheckpointError, match="which a RecBole checkpoint never holds"):
        load_data_and_model(str(path))
    assert not marker.exists()


def test_our_own_checkpoint_needs_no_trust(tmp_path):
    """A checkpoint a run wrote (here one of main at 83c32b7) holds only allowed names."""
    path = tmp_path / "MaTrRec.pth"
    shutil.copy(os.path.join(OLD, "MaTrRec.pth"), path)
    checkpoint = load_checkpoint(str(path))
    assert checkpoint["config"]["model"] == "MaTrRec" and checkpoint["state_dict"]


# ---- bundles with missing, ill-typed or oversized parts ---------------------------------------

def rewritten(bundle, folder, name, change, compression=0):
    """A copy of `bundle` named `name` whose members are {member: bytes} after `change`
    (stored: compression 0; deflated: 8)."""
    import zipfile

    with zipfile.ZipFile(bundle) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    members = change(members)
    path = folder / name
    with zipfile.ZipFile(path, "w", compression) as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    return path


def _json(member, edit):
    import json

    def change(members):
        content = json.loads(members[member])
        edit(content)
        return {**members, member: json.dumps(content).encode()}
    return change


def _delete(key):
    return lambda content: content.pop(key)


def _set(key, value, inner=None):
    def edit(content):
        (content[inner] if inner else content)[key] = value
    return edit


def _history(user, items):
    def edit(content):
        content["histories"][user] = items
    return edit


def _weights(edit):
    def change(members):
        import io

        weights = torch.load(io.BytesIO(members["weights.pt"]), weights_only=True)
        edit(weights)
        return {**members, "weights.pt": _saved(weights)}
    return change


def _saved(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


BUNDLE_CASES = {
    "manifest without model": (_json("manifest.json", _delete("model")), "`model` must be a str"),
    "manifest without config": (_json("manifest.json", _delete("config")), "`config` must be a dict"),
    "model not a name": (_json("manifest.json", _set("model", 7)), "`model` must be a str"),
    "unknown model": (_json("manifest.json", _set("model", "NoSuchRec")), "NoSuchRec"),
    "empty config": (_json("manifest.json", _set("config", {})), "MAX_ITEM_LIST_LENGTH must be"),
    "length a string": (_json("manifest.json", _set("MAX_ITEM_LIST_LENGTH", "50", "config")),
                        "MAX_ITEM_LIST_LENGTH must be a positive integer up to 2**20, got '50'"),
    "length 0": (_json("manifest.json", _set("MAX_ITEM_LIST_LENGTH", 0, "config")),
                 "MAX_ITEM_LIST_LENGTH must be a positive integer up to 2**20, got 0"),
    "length 10**12": (_json("manifest.json", _set("MAX_ITEM_LIST_LENGTH", 10**12, "config")),
                      "up to 2**20, got 1000000000000"),  # was 8 TB asked of the allocator
    "hidden size a string": (_json("manifest.json", _set("hidden_size", "8", "config")),
                             "hidden_size must be a positive integer"),
    "negative item id": (_json("vocabulary.json", _history(1, [-3])), "history of user"),
    "item id too large": (_json("vocabulary.json", _history(2, [10**6])), "from 1 to"),
    "item id a string": (_json("vocabulary.json", _history(1, ["5"])), "history of user"),
    "no histories": (_json("vocabulary.json", _delete("histories")), "`histories` must hold"),
    "users not tokens": (_json("vocabulary.json", _set("users", [1, 2, 3])), "`users` must be"),
    "a user token twice": (_json("vocabulary.json", _set("users", ["[PAD]"] + ["1"] * 60)),
                           "`users` holds the token '1' more than once"),
    "no weights": (lambda m: {k: v for k, v in m.items() if k != "weights.pt"},
                   "without weights.pt"),
    "weights not a state dict": (lambda m: {**m, "weights.pt": _saved([1, 2])}, "state dict"),
    "weights naming a function": (lambda m: {**m, "weights.pt": _saved({"w": Payload("x")})},
                                  "weights.pt is not a plain state dict of tensors (torch's "
                                  "weights-only reader: Unsupported global: GLOBAL io.open"),
    "weights not a pickle": (lambda m: {**m, "weights.pt": b"\x80\x02garbage" * 10},
                             "weights.pt is not a plain state dict of tensors (torch's "
                             "weights-only reader: Unsupported operand 103)"),
    "a weight missing": (_weights(lambda w: w.pop("item_embedding.weight")),
                         "do not fit MaTrRec as configured: item_embedding.weight is missing"),
    "a weight more": (_weights(lambda w: w.__setitem__("extra", torch.zeros(1))),
                      "extra is not one of MaTrRec's"),
    "a weight of the wrong shape": (
        _weights(lambda w: w.__setitem__("item_embedding.weight", torch.zeros(3, 3))),
        "item_embedding.weight has the shape [3, 3], where the settings make [31, 8]"),
    "hidden size far too large": (_json("manifest.json", _set("hidden_size", 2**20, "config")),
                                  "weights.pt): the saved weights do not fit MaTrRec as "
                                  "configured: item_embedding.weight has the shape [31, 8], "
                                  "where the settings make [31, 1048576]"),  # built on meta
}


@pytest.mark.parametrize("case", BUNDLE_CASES)
def test_a_malformed_bundle_is_one_paragraph_naming_the_member(case, tmp_path, capsys):
    change, message = BUNDLE_CASES[case]
    path = rewritten(os.path.join(OLD, "MaTrRec.bundle"), tmp_path, "x.bundle", change)
    code = cli.main(["recommend", f"--model_file={path}", "--users=1"])
    assert_one_paragraph(code, capsys.readouterr().err, str(path), message)


def test_an_oversized_member_is_refused_before_it_is_read(tmp_path, capsys, monkeypatch):
    from recbole_hybrid.serving import bundle

    monkeypatch.setitem(bundle.SIZE_CAPS, bundle.MANIFEST, 1000)  # the real one: 16 MiB
    path = rewritten(os.path.join(OLD, "MaTrRec.bundle"), tmp_path, "x.bundle", lambda m: m)
    read = []
    monkeypatch.setattr(bundle.zipfile.ZipFile, "open",
                        lambda self, *a, **k: read.append(a) or pytest.fail("a member was read"))
    code = cli.main(["recommend", f"--model_file={path}", "--users=1"])
    assert_one_paragraph(code, capsys.readouterr().err, "manifest.json holds", "was not read")


@pytest.mark.parametrize("compression", [0, 8], ids=["stored", "deflated"])
def test_a_member_larger_than_its_zip_directory_says_is_read_no_further(
        compression, tmp_path, capsys):
    """A directory that says 100 bytes for a 50 MB manifest: 100 bytes are read, then the CRC
    fails; one paragraph, and the 50 MB are never in memory."""
    import struct
    import tracemalloc
    import zipfile

    huge = {"manifest.json": b"{" + b" " * 50 * 2**20 + b"}"}
    path = rewritten(os.path.join(OLD, "MaTrRec.bundle"), tmp_path, "x.bundle",
                     lambda members: {**members, **huge}, compression)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo("manifest.json").header_offset
    central = data.rfind(b"manifest.json") - 46  # the directory's entry: the name's last copy
    assert data[local:local + 4] == b"PK\x03\x04" and data[central:central + 4] == b"PK\x01\x02"
    struct.pack_into("<I", data, local + 22, 100)  # the uncompressed size, in both headers
    struct.pack_into("<I", data, central + 24, 100)
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        code = cli.main(["recommend", f"--model_file={path}", "--users=1"])
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert_one_paragraph(code, capsys.readouterr().err, str(path), "Bad CRC-32")
    assert peak_mb < 10, f"{peak_mb:.0f} MB were allocated"


def test_the_untouched_old_bundle_still_loads(tmp_path, capsys):
    path = rewritten(os.path.join(OLD, "MaTrRec.bundle"), tmp_path, "x.bundle", lambda m: m)
    assert cli.main(["recommend", f"--model_file={path}", "--users=1"]) == 0


def test_a_bundle_given_to_export_and_a_binary_users_file(tmp_path, capsys):
    path = rewritten(os.path.join(OLD, "MaTrRec.bundle"), tmp_path, "x.bundle", lambda m: m)
    code = cli.main(["export", f"--checkpoint={path}", f"--output={tmp_path / 'y.bundle'}"])
    assert_one_paragraph(code, capsys.readouterr().err, "is a bundle already")
    users = tmp_path / "users.txt"
    users.write_bytes(b"1\n2\n\xfd\xfe binary\n")
    code = cli.main(["recommend", f"--model_file={path}", f"--users_file={users}"])
    assert_one_paragraph(code, capsys.readouterr().err, "is not UTF-8 text (line 3")


@pytest.mark.parametrize("content", [
    {"config": 5, "state_dict": {}}, {"config": {"model": "MaTrRec"}, "state_dict": {}},
    {"state_dict": {}}, [1, 2, 3], {"config": None, "state_dict": None},
])
def test_a_checkpoint_of_the_wrong_shape_is_one_paragraph(content, tmp_path, capsys):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    for argv in (["recommend", f"--model_file={path}", "--users=1"],
                 ["export", f"--checkpoint={path}", f"--output={tmp_path / 'out.bundle'}"],
                 ["run", f"--resume={path}"]):
        code = cli.main(argv)
        assert_one_paragraph(code, capsys.readouterr().err, "RecBole checkpoint", str(path))


def test_only_recbole_s_own_names_are_resolved():
    from recbole_hybrid.quick_start.checkpoint_pickle import _allowed

    assert _allowed("recbole.utils.enum_type", "ModelType") is not None
    assert _allowed("recbole.utils.enum_type", "Enum") is None  # imported there, not RecBole's
    assert _allowed("recbole.model.sequential_recommender.sasrec", "SASRec") is not None
    assert _allowed("recbole.model.sequential_recommender.sasrec", "torch") is None
    assert _allowed("os", "system") is None and _allowed("builtins", "eval") is None
