"""A built wheel carries the package's properties: installed outside the repository and run
from a folder without properties/, ml-1m still gets its dataset defaults (length 200, 5-core),
and a properties/dataset/ml-1m.yaml in the working directory replaces them."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW = """
import json, sys
import recbole_hybrid
from recbole_hybrid.config.builder import build_config
assert recbole_hybrid.__file__.startswith(sys.argv[1]), recbole_hybrid.__file__
from recbole_hybrid.config.files import resolve
config = build_config("MaTrRec", "ml-1m")
shown = {key: config[key] for key in
         ("MAX_ITEM_LIST_LENGTH", "user_inter_num_interval", "item_inter_num_interval")}
# the paths the README's commands name resolve to the shipped files
shown["grid"] = resolve("properties/grids/office-products.yaml").startswith(sys.argv[1])
print(json.dumps(shown))
"""


def _show(site, cwd):
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", SHOW, str(site)], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_wheel_install_keeps_the_dataset_defaults(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("recbole_hybrid-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    for shipped in ("properties/dataset/ml-1m.yaml", "properties/published.yaml",
                    "properties/hyper/MaTrRec.hyper", "properties/grids/office-products.yaml",
                    "ops/csrc/mamba_cpu.cpp"):
        assert f"recbole_hybrid/{shipped}" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    shown = _show(site, elsewhere)
    assert shown["MAX_ITEM_LIST_LENGTH"] == 200
    assert shown["user_inter_num_interval"] == shown["item_inter_num_interval"] == "[5,inf)"
    assert shown["grid"]

    ours = elsewhere / "properties" / "dataset"
    ours.mkdir(parents=True)
    (ours / "ml-1m.yaml").write_text("MAX_ITEM_LIST_LENGTH: 50\n")
    shown = _show(site, elsewhere)
    assert shown["MAX_ITEM_LIST_LENGTH"] == 50
    assert shown["user_inter_num_interval"] == "[0,inf)"  # RecBole's own: the shipped file no longer applies
