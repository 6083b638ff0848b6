"""A fault campaign on what `compare` and `tune` read: grid files, --seeds, damaged grid.json
for --report, and params files for both search engines.

Every case is a command run in this process (`recbole_hybrid.cli.main`) on a tiny dataset
written here; nothing trains (the cells and the engines are replaced by stand-ins that
return at once, after every check has run). A case is "one paragraph" when the command exits
2 with a single `error: ...` line and no traceback, "accepted" when it exits 0 (the input is
valid after all), "internal error" otherwise. Prints a markdown table of the case classes,
then every case that was not one paragraph. About 10 s on 2 cores.

    python benchmarks/faults_grid_and_params.py
"""

import json
import os
import tempfile
import time

import yaml

from fault_common import one_paragraph, print_table, run
from recbole_hybrid.compare import driver
from recbole_hybrid.tune import hyperopt_engine, ray_engine

D = "tiny"
GRIDS = {
    "model settings not a mapping": {"model_settings": {"SASRec": 5}},
    "model settings a list": {"model_settings": {"SASRec": [1]}},
    "model settings empty": {"model_settings": {"SASRec": None}},
    "dataset settings a list": {"dataset_settings": {D: [1]}},
    "dataset settings empty": {"dataset_settings": {D: None}},
    "dataset settings of a dataset not in the grid": {"dataset_settings": {"other": {"epochs": 1}}},
    "a model a number": {"models": [1]},
    "a model null": {"models": [None]},
    "a model twice": {"models": ["SASRec", "SASRec"]},
    "models a string": {"models": "SASRec"},
    "a dataset a number": {"datasets": [1]},
    "a dataset null": {"datasets": [None]},
    "a dataset a mapping": {"datasets": [{"a": 1}]},
    "a dataset twice": {"datasets": [D, D]},
    "a dataset name of 300 characters": {"datasets": ["d" * 300]},
    "a seed negative": {"seeds": [1, -5]},
    "a seed of 2**40": {"seeds": [1, 2**40]},
    "a seed a float": {"seeds": [1.5]},
    "seeds repeated": {"seeds": [1, 1]},
    "settings a list": {"settings": [1]},
    "a settings key a number": {"settings": {1: 2}},
    "a model settings key a number": {"model_settings": {1: {}}},
    "config files numbers": {"config_files": [1]},
    "a config file missing": {"config_files": ["nope.yaml"]},
    "metrics numbers": {"metrics": [1]},
    "ours a number": {"ours": 5},
    "baselines numbers": {"baselines": [1]},
    "an unknown key": {"modles": ["SASRec"]},
    "a list": [1, 2],
    "a string": "hello",
    "empty": None,
}
SEEDS = {"--seeds 3000000000": ["--seeds", "3000000000"], "--seeds 0": ["--seeds", "0"],
         "--jobs 0": ["--jobs", "0"], "--seeds -1": ["--seeds", "-1"]}
GRID_JSON = {
    "not JSON": b"{", "a list": b"[1]", "binary": bytes(range(200, 250)),
    "models a number": json.dumps({"models": 5, "datasets": [D]}).encode(),
    "metrics a number": json.dumps({"models": ["SASRec"], "datasets": [D], "metrics": 5}).encode(),
    "an unknown field": json.dumps({"models": ["SASRec"], "datasets": [D], "x": 1}).encode(),
    "a seed out of range": json.dumps({"models": ["SASRec"], "datasets": [D], "seeds": [-1]}).encode(),
}
PARAMS = {
    "a trailing comment": "learning_rate choice [0.01,0.001]  # two rates\n",
    "a comment line": "# the space\nlearning_rate choice [0.01,0.001]\n",
    "tabs": "learning_rate\tchoice\t[0.01,0.001]\n",
    "two spaces": "learning_rate  choice  [0.01, 0.001]\n",
    "string choices": "learner choice [adam,sgd]\n",
    "boolean choices": "reproducibility choice [true,false]\n",
    "Windows line ends": "learning_rate choice [0.01,0.001]\r\nn_layers choice [1,2]\r\n",
    "a byte-order mark": "\ufefflearning_rate choice [0.01,0.001]\n",
    "seed searched": "seed choice [1,2]\n",
    "model searched": "model choice [SASRec,GRU4Rec]\n",
    "dataset searched": "dataset choice [tiny]\n",
    "loguniform 700,800": "learning_rate loguniform 700,800\n",
    "uniform nan,1": "hidden_dropout_prob uniform nan,1\n",
    "uniform 0,inf": "hidden_dropout_prob uniform 0,inf\n",
    "quniform q nan": "n_layers quniform 1,3,nan\n",
    "choice .nan": "learning_rate choice [.nan]\n",
    "choice null": "learning_rate choice [null]\n",
    "choice of lists": "learning_rate choice [[1,2]]\n",
    "choice of mappings": "learning_rate choice [{a: 1}]\n",
    "a value the settings refuse": "learning_rate choice [-1]\n",
    "a word for an integer": "n_layers choice [two]\n",
    "a typo": "learnin_rate choice [0.1]\n",
    "another model's setting": "d_state choice [16]\n",
    "a float range for an integer": "n_layers uniform 1,3\n",
    "empty": "",
    "comments only": "# nothing\n",
    "latin-1": "caf\xe9 choice [1]\n".encode("latin-1"),
    "an unknown kind": "learning_rate normal 0,1\n",
    "quniform without q": "n_layers quniform 1,3\n",
    "low = high": "hidden_dropout_prob uniform 0.2,0.2\n",
    "a parameter twice": "learning_rate choice [0.1]\nlearning_rate choice [0.2]\n",
    "a value 5000 times": "learning_rate choice [" + ",".join(["0.1"] * 5000) + "]\n",
    "a name of 5000 characters": "x" * 5000 + " choice [1]\n",
    "a YAML alias loop": "learning_rate choice &a [1, *a]\n",
}


def main():
    driver.run_cells = lambda *args, **kwargs: None  # every cell checked, none trained
    hyperopt_engine.run = ray_engine.run = lambda *args, **kwargs: ([], False)
    started, rows, failures = time.time(), {}, []
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        os.makedirs(D)
        with open(os.path.join(D, f"{D}.inter"), "w") as f:
            f.write("user_id:token\titem_id:token\ttimestamp:float\n")
            f.writelines(f"{u}\t{(u + t) % 20 + 1}\t{t}\n" for u in range(1, 41) for t in range(10))
        data = [f"--data_path={folder}"]

        def count(kind, name, argv):
            code, err = run(argv)
            lines = err.strip().splitlines()
            paragraph = one_paragraph(code, err)
            row = rows.setdefault(kind, [0, 0, 0, 0])
            for column, counted in enumerate((True, paragraph, code == 0,
                                              not paragraph and code != 0)):
                row[column] += counted
            if not paragraph:
                failures.append(f"{kind} | {name} | exit {code} | {lines[-1][:160] if lines else '-'}")

        for n, (name, change) in enumerate(GRIDS.items()):
            grid = {"models": ["SASRec"], "datasets": [D], **change} \
                if isinstance(change, dict) else change
            with open(f"grid-{n}.yaml", "w") as f:
                yaml.safe_dump(grid, f)
            count("grid files", name, ["compare", "--grid", f"grid-{n}.yaml",
                                       "--output", f"out-{n}", *data])
        for name, extra in SEEDS.items():
            count("compare flags", name, ["compare", "--models=SASRec", f"--datasets={D}",
                                          "--output", "flags", *extra, *data])
        for n, (name, content) in enumerate(GRID_JSON.items()):
            os.makedirs(f"report-{n}")
            with open(f"report-{n}/grid.json", "wb") as f:
                f.write(content)
            count("grid.json for --report", name, ["compare", "--report", f"report-{n}"])
        for n, (name, content) in enumerate(PARAMS.items()):
            with open(f"space-{n}.hyper", "wb") as f:
                f.write(content if isinstance(content, bytes) else content.encode())
            for tool, algo in (("hyperopt", "exhaustive"), ("ray", "random")):
                count(f"params files ({tool})", name,
                      ["tune", "--model=SASRec", f"--dataset={D}", f"--params_file=space-{n}.hyper",
                       f"--tool={tool}", f"--algo={algo}", f"--output=search-{n}-{tool}", *data])
    print_table(rows, ["cases", "one paragraph", "accepted", "internal error"], started,
                "nothing trained")
    print("\nnot one paragraph (accepted, or worse):")
    for failure in failures:
        print("-", failure)


if __name__ == "__main__":
    main()
