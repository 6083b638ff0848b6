"""A fault campaign on the model-using commands (`recommend`, `export`, `serve`, `run --resume`):
model files from strangers and malformed ones, served with odd options and user files.

Every case is a command run in this process (`recbole_hybrid.cli.main`) on a file made here
from the MaTrRec bundle and checkpoint in tests/data. A case counts as "one paragraph" when
the command exits 2 with a single `error: ...` line on stderr and no traceback; "accepted"
when it exits 0 (a value that is valid after all: `serve` is stopped just before it would
listen); "internal error" otherwise; "code ran" counts payloads whose unpickling created their
marker file (must be 0). Prints a markdown table of the case classes, then every case that was
neither one paragraph nor accepted.

    python benchmarks/faults_model_files.py
"""

import io
import itertools
import json
import os
import pathlib
import pickle
import socket
import struct
import subprocess
import tempfile
import time
import zipfile

import torch

from fault_common import one_paragraph, print_table, run

OLD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tests", "data", "main-83c32b7")
COMMANDS = {
    "recommend": lambda path: ["recommend", f"--model_file={path}", "--users=1"],
    "serve": lambda path: ["serve", f"--model_file={path}", "--port=0"],
    "export": lambda path: ["export", f"--checkpoint={path}", "--output=out.bundle"],
    "run --resume": lambda path: ["run", f"--resume={path}"],
}


class Payload:
    """Unpickled, it calls `function` so that the file `marker` is created."""

    def __init__(self, function, marker):
        self.function, self.marker = function, marker

    def __reduce__(self):
        if self.function == "open":
            return open, (self.marker, "w")
        if self.function == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.function == "subprocess":
            return subprocess.call, (["touch", self.marker],)
        if self.function == "exec":
            return exec, (f"open({self.marker!r}, 'w').close()",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


def saved(content, how):
    """`content` pickled the way `how` says: torch's zip, torch's legacy format, a plain pickle."""
    buffer = io.BytesIO()
    if how == "pickle":
        pickle.dump(content, buffer)
    else:
        torch.save(content, buffer, _use_new_zipfile_serialization=how == "torch zip")
    return buffer.getvalue()


def payload_cases(folder):
    """(class, name, file bytes, marker): a payload wherever a checkpoint or a bundle has a part."""
    with open(os.path.join(OLD, "MaTrRec.pth"), "rb") as f:
        checkpoint = torch.load(f, weights_only=False)
    with zipfile.ZipFile(os.path.join(OLD, "MaTrRec.bundle")) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    functions = ["open", "os.system", "subprocess", "exec", "eval"]
    places = ["whole file", "config", "state_dict", "optimizer", "other_parameter",
              "inside a list in a setting"]
    for n, (function, place, how) in enumerate(itertools.product(
            functions, places, ["torch zip", "torch legacy", "pickle"])):
        marker = str(folder / f"ran-{n}")
        payload = Payload(function, marker)
        content = dict(checkpoint)
        if place == "whole file":
            content = payload
        elif place == "inside a list in a setting":
            content["config"] = pickle.loads(pickle.dumps(checkpoint["config"]))
            content["config"].final_config_dict["topk"] = [10, payload]
        elif place == "state_dict":
            content["state_dict"] = {**checkpoint["state_dict"], "x": payload}
        else:
            content[place] = payload
        yield "payload in a checkpoint", f"{function} / {place} / {how}", saved(content, how), marker
    for n, (function, member) in enumerate(itertools.product(functions, sorted(members))):
        marker = str(folder / f"bundle-ran-{n}")
        changed = {**members, member: saved(Payload(function, marker), "torch zip")}
        yield "payload in a bundle's member", f"{function} / {member}", zipped(changed), marker


def zipped(members, compression=zipfile.ZIP_DEFLATED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def bundle_cases():
    """(class, name, file bytes): bundles damaged or of the wrong shape, part by part."""
    with zipfile.ZipFile(os.path.join(OLD, "MaTrRec.bundle")) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest, vocabulary = (json.loads(members[m]) for m in ("manifest.json", "vocabulary.json"))
    whole = zipped(members)

    def edited(member, edit):
        content = json.loads(members[member])
        edit(content)
        return zipped({**members, member: json.dumps(content).encode()})

    for key in ("format", "format_version", "model", "dataset", "versions", "config"):
        for value in (None, 7, "x", [], {}, -1):
            yield "manifest fields", f"{key}={value!r}", edited(
                "manifest.json", lambda m, k=key, v=value: m.__setitem__(k, v))
        yield "manifest fields", f"without {key}", edited(
            "manifest.json", lambda m, k=key: m.pop(k, None))
    for key in ("MAX_ITEM_LIST_LENGTH", "hidden_size", "d_state", "num_layers", "dropout_prob",
                "inner_size", "d_conv", "expand", "n_heads"):
        for value in ("8", 0, -3, None, 1.5, [8], True, 10**12):
            yield "config settings", f"{key}={value!r}", edited(
                "manifest.json", lambda m, k=key, v=value: m["config"].__setitem__(k, v))
    histories = vocabulary["histories"]
    for field, value in (("users", [1, 2]), ("users", "abc"), ("items", None), ("items", []),
                         ("histories", []), ("histories", {"1": [1]}),
                         ("histories", [[], [-1]] + histories[2:]),
                         ("histories", [[], [10**9]] + histories[2:]),
                         ("histories", [[], "12"] + histories[2:]),
                         ("histories", [[], [1.5]] + histories[2:]),
                         ("histories", histories[:3]), ("users", vocabulary["users"][:2]),
                         ("users", ["[PAD]", "1", "1"] + vocabulary["users"][3:]),
                         ("items", ["[PAD]", "28", "28"] + vocabulary["items"][3:])):
        yield "vocabulary", f"{field}={str(value)[:30]}", edited(
            "vocabulary.json", lambda v, f=field, x=value: v.__setitem__(f, x))
    state = torch.load(io.BytesIO(members["weights.pt"]), weights_only=True)
    first = next(iter(state))
    for name, weights in (
            ("a list", [1, 2]), ("empty", {}), ("a key missing", dict(list(state.items())[1:])),
            ("a key more", {**state, "extra": torch.zeros(1)}),
            ("a wrong shape", {**state, first: torch.zeros(3, 3)}),
            ("int tensors", {k: v.long() for k, v in state.items()}),
            ("a non-tensor value", {**state, first: 1.0})):
        yield "weights", name, zipped({**members, "weights.pt": saved(weights, "torch zip")})
    for member in sorted(members):
        yield "members missing or not what they say", f"without {member}", zipped(
            {k: v for k, v in members.items() if k != member})
        yield "members missing or not what they say", f"{member} of random bytes", zipped(
            {**members, member: os.urandom(300)})
    for fraction in (0, 0.01, 0.1, 0.5, 0.9, 0.99):
        yield "damaged files", f"truncated to {fraction:.0%}", whole[:int(len(whole) * fraction)]
    yield "damaged files", "random bytes", os.urandom(4096)
    yield "damaged files", "a bit flipped in the weights", flipped(whole)
    yield "damaged files", "a JSON file", json.dumps(manifest).encode()
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        yield "damaged files", f"manifest larger than the directory says ({compression})", lying(
            zipped({**members, "manifest.json": b"{" + b" " * 2**20 + b"}"}, compression))


def flipped(data):
    data = bytearray(data)
    data[len(data) * 3 // 4] ^= 0xFF
    return bytes(data)


def lying(data):
    """The zip `data` whose headers say manifest.json unpacks to 100 bytes."""
    data = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        local = archive.getinfo("manifest.json").header_offset
    central = data.rfind(b"manifest.json") - 46
    struct.pack_into("<I", data, local + 22, 100)
    struct.pack_into("<I", data, central + 24, 100)
    return bytes(data)


def checkpoint_cases():
    """(class, name, file bytes): checkpoints of the wrong shape."""
    with open(os.path.join(OLD, "MaTrRec.pth"), "rb") as f:
        whole = f.read()
    checkpoint = torch.load(io.BytesIO(whole), weights_only=False)
    for name, content in (("an int", 7), ("a list", [1]), ("a tensor", torch.zeros(2)),
                          ("config an int", {**checkpoint, "config": 7}),
                          ("config a plain dict", {**checkpoint, "config": {"model": "MaTrRec"}}),
                          ("without config", {k: v for k, v in checkpoint.items() if k != "config"}),
                          ("state_dict a list", {**checkpoint, "state_dict": [1]}),
                          ("without state_dict",
                           {k: v for k, v in checkpoint.items() if k != "state_dict"}),
                          ("a wrong shape", {**checkpoint, "state_dict": {
                              k: torch.zeros(2) for k in checkpoint["state_dict"]}})):
        yield "checkpoints of the wrong shape", name, saved(content, "torch zip")
    for fraction in (0, 0.1, 0.5, 0.99):
        yield "checkpoints of the wrong shape", f"truncated to {fraction:.0%}", \
            whole[:int(len(whole) * fraction)]


def option_cases(folder):
    """(class, name, argv): serve's options and recommend's --users_file."""
    bundle = os.path.join(OLD, "MaTrRec.bundle")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    for option in ("--port=70000", "--port=-1", "--port=65536", f"--port={busy.getsockname()[1]}",
                   "--host=nosuch.invalid", "--host=999.1.1.1", "--host=", "--max_batch=0",
                   "--threads=0", "--max_wait_ms=-1", "--port=abc"):
        yield "serve options", option, ["serve", f"--model_file={bundle}", option]
    for name, content in (("binary", os.urandom(200)), ("latin-1", "caf\xe9\n".encode("latin-1")),
                          ("UTF-16", "1\n2\n".encode("utf-16")), ("empty", b""),
                          ("unknown users", b"nobody\n"), ("NUL bytes", b"1\x002\n")):
        path = folder / f"users-{len(name)}-{name}.txt"
        path.write_bytes(content)
        yield "--users_file", name, ["recommend", f"--model_file={bundle}", f"--users_file={path}"]
    yield "--users_file", "a folder", ["recommend", f"--model_file={bundle}", f"--users_file={folder}"]
    yield "--users_file", "missing", ["recommend", f"--model_file={bundle}",
                                      f"--users_file={folder / 'none.txt'}"]
    for name, path in (("a folder", folder), ("missing", folder / "none.bundle"),
                       ("/dev/null", "/dev/null")):
        for command in ("recommend", "serve", "export"):
            yield "model files that are not files", f"{name} / {command}", COMMANDS[command](path)


def main():
    from recbole_hybrid.serving import http

    http.serve = lambda *args, **kwargs: None  # everything checked, the model loaded: stop there
    torch.set_num_threads(1)
    started = time.time()
    rows, failures, accepted = {}, [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        os.chdir(folder)

        def count(kind, name, argv, marker=None):
            code, err = run(argv)
            row = rows.setdefault(kind, [0, 0, 0, 0, 0])
            ran = marker is not None and os.path.exists(marker)
            paragraph = one_paragraph(code, err)
            for column, counted in enumerate(
                    (True, paragraph, code == 0, not paragraph and code != 0, ran)):
                row[column] += counted
            if ran:
                os.remove(marker)
            if code == 0:
                accepted.append(f"{kind}: {name} ({argv[0]})")
            if (not paragraph and code != 0) or ran:
                failures.append(f"{kind} | {name} | {' '.join(argv[:1])} | exit {code} | "
                                f"{err.strip().splitlines()[-1] if err.strip() else '-'}")
            if os.path.exists("out.bundle"):
                failures.append(f"{kind} | {name}: export wrote out.bundle")
                os.remove("out.bundle")

        for n, (kind, name, content, marker) in enumerate(payload_cases(folder)):
            commands = COMMANDS if kind == "payload in a checkpoint" else [
                "recommend", "serve", "export"]
            for suffix, command in itertools.product((".pth", ".bundle", ""), commands):
                path = folder / f"payload-{n}{suffix}"
                path.write_bytes(content)
                count(kind, f"{name} / {suffix or 'no suffix'}", COMMANDS[command](path), marker)
        for n, (kind, name, content) in enumerate(itertools.chain(bundle_cases(),
                                                                  checkpoint_cases())):
            path = folder / f"file-{n}.bundle"
            path.write_bytes(content)
            commands = ["recommend", "serve"] + (["export", "run --resume"]
                                                 if kind.startswith("checkpoints") else [])
            for command in commands:
                count(kind, name, COMMANDS[command](path))
        for kind, name, argv in option_cases(folder):
            count(kind, name, argv)
    print_table(rows, ["cases tried", "one paragraph", "accepted", "internal error", "code ran"],
                started, f"torch {torch.__version__}")
    print("\nneither one paragraph nor accepted, or code ran:" if failures else
          "\nevery case one paragraph or accepted, no code ran")
    for failure in failures:
        print("-", failure)
    print("\naccepted (valid after all):", "; ".join(accepted) or "none")


if __name__ == "__main__":
    main()
