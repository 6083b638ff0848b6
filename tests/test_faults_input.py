"""Faults of what a researcher types and feeds in: settings (unknown keys, impossible
values, broken yaml, process counts) and data files. Each ends in one clear paragraph and
exit code 2, before any training starts."""

import glob
import gzip
import os

import pytest
from conftest import INTER_HEADER as HEADER, assert_one_paragraph, cli_run, flags

from recbole_hybrid import cli

# ---- settings: unknown keys, wrong types and ranges, broken yaml -------------------------

@pytest.mark.parametrize("flag, fragments", [
    ("--epoch=1", ["'epoch' is not a setting", "did you mean 'epochs'"]),
    ("--learnig_rate=0.1", ["did you mean 'learning_rate'"]),
    ("--num_layers=2", ["'num_layers' is a setting of", "not of SASRec", "did you mean 'n_layers'"]),
    ("--MAX_ITEM_LIST_LEN=5", ["did you mean 'MAX_ITEM_LIST_LENGTH'"]),
])
def test_unknown_keys_get_a_did_you_mean(capsys, sasrec, workdir, flag, fragments):
    code, err = cli_run(capsys, *sasrec, flag)
    assert_one_paragraph(code, err, *fragments)
    assert not os.path.exists(workdir / "runs")


def test_a_config_file_naming_another_model_or_dataset_than_the_command(capsys, sasrec, workdir):
    for key, value in (("model", "GRU4Rec"), ("dataset", "ml-100k")):
        (workdir / "other.yaml").write_text(f"{key}: {value}\n")
        code, err = cli_run(capsys, *sasrec, "--config_files", str(workdir / "other.yaml"))
        assert_one_paragraph(code, err, f"but the config files set {key}: {value}")


def test_config_files_may_hold_other_models_keys_but_no_typos(capsys, sasrec, workdir):
    shared = workdir / "shared.yaml"
    shared.write_text("num_layers: 2\nk_interests: 10\n")  # Mamba4Rec's and MLSA4Rec's keys
    code, err = cli_run(capsys, *sasrec, "--config_files", str(shared))
    assert code == 0, err
    typo = workdir / "typo.yaml"
    typo.write_text("stoping_step: 3\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(typo))
    assert_one_paragraph(code, err, "config files", "did you mean 'stopping_step'")


@pytest.mark.parametrize("flag, fragment", [
    ("--epochs=ten", "epochs must be a positive integer"),
    ("--epochs=0", "epochs must be a positive integer"),
    ("--epochs=-3", "epochs must be a positive integer"),
    ("--learning_rate=abc", "learning_rate must be a positive number"),
    ("--learning_rate=-0.1", "learning_rate must be a positive number"),
    ("--learning_rate=1/0", "ZeroDivisionError"),
    ("--MAX_ITEM_LIST_LENGTH=0", "MAX_ITEM_LIST_LENGTH must be a positive integer"),
    ("--train_batch_size=0", "train_batch_size must be a positive integer"),
    ("--topk=[0]", "topk must be"),
    ("--show_progress=maybe", "show_progress must be True or False"),
    ("--learner=nadam", "learner must be one of"),
    ("--valid_metric=NDCG@50", "valid_metric NDCG@50 is not among the metrics"),
    ("--loss_type=Hinge", "loss_type must be CE or BPR"),
    ("--seed=-1", "seed must be an integer from 0"),
    ("--state=LOUD", "state must be one of"),
    ("--hidden_dropout_prob=1", "hidden_dropout_prob must be a probability in [0, 1)"),
    ("--clip_grad_norm=abc", "clip_grad_norm must be empty or a mapping"),
    ("--load_col=inter", "load_col must be empty"),
    ("--metrics=['Recal','NDCG']", "did you mean 'recall'"),
    ("--n_layers=0", "n_layers must be a positive integer"),
    ("--gpu_id=abc", "gpu_id must be a GPU index"),
    ("--n_heads=3", "SASRec cannot be built"),  # hidden 16 does not split into 3 heads
])
def test_impossible_values_fail_before_training_with_one_paragraph(capsys, sasrec, workdir,
                                                                   flag, fragment):
    code, err = cli_run(capsys, *sasrec, flag)
    assert_one_paragraph(code, err, fragment)
    assert "The number of users" not in err  # before RecBole loaded (and logged) the data
    assert not glob.glob(str(workdir / "runs" / "*" / "*"))  # no checkpoint, no results


def test_a_value_from_a_file_names_the_file_and_empty_files_are_fine(capsys, sasrec, workdir):
    (workdir / "bad.yaml").write_text("stopping_step: two\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(workdir / "bad.yaml"))
    assert_one_paragraph(code, err, "stopping_step must be a positive integer", "bad.yaml")
    (workdir / "empty.yaml").write_text("# nothing set here yet\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(workdir / "empty.yaml"))
    assert code == 0, err


def test_broken_yaml_names_the_file_and_line(capsys, sasrec, workdir):
    broken = workdir / "broken.yaml"
    broken.write_text("epochs: 2\nlearning_rate: [0.1\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(broken))
    assert_one_paragraph(code, err, "broken.yaml:3", "not valid yaml")
    twice = workdir / "twice.yaml"
    twice.write_text("epochs: 2\nlearning_rate: 0.1\nepochs: 3\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(twice))
    assert_one_paragraph(code, err, "twice.yaml:3", "`epochs` is set twice")
    listed = workdir / "list.yaml"
    listed.write_text("- epochs\n- 2\n")
    code, err = cli_run(capsys, *sasrec, "--config_files", str(listed))
    assert_one_paragraph(code, err, "must hold `key: value` settings")
    grid = workdir / "grid.yaml"
    grid.write_text("models: [SASRec\n")
    assert cli.main(["compare", "--grid", str(grid)]) == 2
    assert "not valid yaml" in capsys.readouterr().err
    grid.write_text("models: SASRec\ndatasets: [tiny]\n")
    assert cli.main(["compare", "--grid", str(grid)]) == 2
    assert "`models` must be a list" in capsys.readouterr().err


GRID_FAULTS = {
    "model settings a number": ("model_settings: {SASRec: 5}",
                                "`model_settings` of SASRec must map settings to values"),
    "dataset settings a list": ("dataset_settings: {tiny: [1]}", "`dataset_settings` of tiny"),
    "dataset settings empty": ("dataset_settings: {tiny: }", "got None"),
    "a model a number": ("models: [SASRec, 1]", "`models` must list names, got 1"),
    "a dataset null": ("datasets: [tiny, null]", "`datasets` must list names, got None"),
    "a metric a number": ("metrics: [1]", "`metrics` must list names"),
    "a settings key a number": ("settings: {1: 2}", "the keys of `settings` must be names"),
    "a model twice": ("models: [SASRec, GRU4Rec, SASRec]", "`models` lists SASRec twice"),
    "a dataset twice": ("datasets: [tiny, tiny]", "`datasets` lists tiny twice"),
    "a second seed out of range": ("seeds: [1, -5]", "from 0 to 2**32 - 1"),
    "a seed too large": ("seeds: [1, 4294967296]", "got [1, 4294967296]"),
    "a name too long for a file": ("datasets: [" + "d" * 240 + "]", "longer than file systems take"),
}


@pytest.mark.parametrize("case", GRID_FAULTS)
def test_every_grid_value_is_checked_before_the_first_cell(case, capsys, tiny, workdir):
    line, fragment = GRID_FAULTS[case]
    defaults = {"models": "models: [SASRec]", "datasets": "datasets: [tiny]"}
    defaults.pop(line.split(":")[0], None)
    grid = workdir / "grid.yaml"
    grid.write_text("\n".join([*defaults.values(), line]) + "\n")
    code = cli.main(["compare", "--grid", str(grid), "--output", "out",
                     f"--data_path={tiny['data_path']}"])
    assert_one_paragraph(code, capsys.readouterr().err, fragment)
    assert not os.path.exists(workdir / "out" / "runs")


def test_a_seed_count_in_the_billions_and_a_damaged_grid_json(capsys, tiny, workdir):
    code = cli.main(["compare", "--models=SASRec", "--datasets=tiny", "--seeds", "3000000000"])
    assert_one_paragraph(code, capsys.readouterr().err, "at most 1000 seeds")
    for content, fragment in (('{"models": 5, "datasets": ["tiny"]}', "`models` must be a list"),
                              ('{"models": ["SASRec"], "datasets": ["tiny"], "seeds": [-1]}',
                               "`seeds` must be"), ("[1]", "damaged")):
        os.makedirs("done", exist_ok=True)
        (workdir / "done" / "grid.json").write_text(content)
        code = cli.main(["compare", "--report", "done"])
        assert_one_paragraph(code, capsys.readouterr().err, "grid.json is damaged", fragment)


@pytest.mark.parametrize("flags_, fragment", [
    (["--nproc=0"], "--nproc=0"),
    (["--world_size=0"], "--world_size=0"),
    (["--nproc=2", "--port=70000"], "--port=70000 must be a port number"),
    (["--nproc=2", "--port=abc"], "--port=abc must be a port number"),
    (["--nproc=2", "--world_size=4", "--group_offset=3"], "--group_offset=3"),
    (["--nproc=2", "--world_size=2", "--group_offset=-1"], "--group_offset=-1"),
])
def test_process_counts_ranks_and_ports_are_checked(capsys, sasrec, workdir, flags_, fragment):
    code, err = cli_run(capsys, *sasrec, *flags_)
    assert_one_paragraph(code, err, fragment)
    assert not os.path.exists(workdir / "runs")


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--nproc=two"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1


# ---- data files -----------------------------------------------------------------------------

ROWS = "".join(f"{u}\t{i}\t{t}\n" for u in range(1, 7) for t, i in enumerate(range(u, u + 6)))


@pytest.mark.parametrize("content, fragments", [
    (HEADER.replace("float", "int") + ROWS, ["timestamp:int", "name:type"]),
    ("user_id\titem_id\ttimestamp\n" + ROWS, ["'user_id'", "name:type"]),
    (HEADER + ROWS + "7\t3\tyesterday\n", ["declared float but holds 'yesterday'", "line(s) 38"]),
    (HEADER + ROWS + "7\t3\tnan\n", ["declared float but holds 'nan'"]),
    (HEADER + ROWS + "7\t3\t\n", ["column timestamp is empty on line(s) 38"]),
    (HEADER + ROWS + "7\t3\n", ["column timestamp is empty on line(s) 38"]),
    (HEADER + ROWS + "7\t3\t4\t5\n", ["different numbers of fields", "line 38"]),
    (HEADER + ROWS.replace("\n", "\t\n"), ["rows have 4 fields but its header names 3"]),
    (HEADER.replace("\n", "\ttimestamp:float\n") + ROWS.replace("\n", "\t1\n"),
     ["names the column 'timestamp' twice"]),
    ("\ufeff" + HEADER + ROWS, ["byte-order mark", "utf-8-sig"]),
    (HEADER.replace("item_id:token", "item_id:token_seq") + ROWS, ["item_id:token (one id per row)"]),
    (HEADER, ["no interactions"]),
    ("", ["is empty"]),
    (HEADER.replace("\t", ",") + ROWS.replace("\t", ","), ["not separated by", "','"]),
    (HEADER.replace("timestamp:float", "timestamp:token") + ROWS, ["timestamp:float"]),
    (HEADER + ROWS + "1\t6\t5\n", ["1 row(s) repeat an earlier row exactly (line(s) 38)",
                                   "rm_dup_inter"]),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", ["not a text file"]),
])
def test_unusable_data_files_are_explained(capsys, tiny, workdir, content, fragments):
    os.makedirs(workdir / "data" / "bad")
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(workdir / "data" / "bad" / "bad.inter", mode) as f:
        f.write(content)
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=bad",
                        *flags(dict(tiny, data_path=workdir / "data")))
    assert_one_paragraph(code, err, *fragments)
    assert not os.path.exists(workdir / "runs")


def test_repeated_rows_pass_when_rm_dup_inter_removes_them(capsys, tiny, workdir):
    os.makedirs(workdir / "data" / "dup")
    (workdir / "data" / "dup" / "dup.inter").write_text(HEADER + ROWS + "1\t6\t5\n")
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=dup", "--rm_dup_inter=first",
                        *flags(dict(tiny, data_path=workdir / "data", epochs=1)))
    assert code == 0, err


def test_a_folder_or_a_broken_link_in_place_of_the_file(capsys, tiny, workdir):
    os.makedirs(workdir / "data" / "dir" / "dir.inter")
    os.makedirs(workdir / "data" / "link")
    os.symlink("/nonexistent/file", workdir / "data" / "link" / "link.inter")
    for name, fragment in (("dir", "is a folder"), ("link", "is a broken link")):
        code, err = cli_run(capsys, "--model=SASRec", f"--dataset={name}",
                            *flags(dict(tiny, data_path=workdir / "data")))
        assert_one_paragraph(code, err, fragment)
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=dri",
                        *flags(dict(tiny, data_path=workdir / "data")))
    assert_one_paragraph(code, err, "did you mean 'dir'?")


def test_a_misnamed_file_is_named_and_nobody_is_told_to_delete_their_data(capsys, tiny, workdir):
    os.makedirs(workdir / "data" / "shop")
    (workdir / "data" / "shop" / "interactions.tsv").write_text(HEADER + ROWS)
    code, err = cli_run(capsys, "--model=SASRec", "--dataset=shop",
                        *flags(dict(tiny, data_path=workdir / "data")))
    assert_one_paragraph(code, err, "interactions.tsv", "rename it to shop.inter",
                         "recbole-hybrid convert")
    assert "remove" not in err and "not in this version" not in err


def test_a_truncated_or_binary_source_in_convert(capsys, workdir):
    whole = gzip.compress(b"u1 i1 i2 i3\nu2 i2 i3 i4\n" * 50)
    (workdir / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    assert cli.main(["convert", "--format=sequences", "--source", str(workdir / "cut.txt.gz"),
                     "--name", "cut", "--data_path", str(workdir / "d")]) == 2
    assert "not a complete gzip file" in capsys.readouterr().err
    (workdir / "bin.txt").write_bytes(b"u1 \xff\xfe i1\n")
    assert cli.main(["convert", "--format=sequences", "--source", str(workdir / "bin.txt"),
                     "--name", "bin", "--data_path", str(workdir / "d")]) == 2
    assert "not utf-8 text" in capsys.readouterr().err
    assert not glob.glob(str(workdir / "d" / "*" / "*"))  # nothing half-written
