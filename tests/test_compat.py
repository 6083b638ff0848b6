"""Each fix in recbole_hybrid.compat: the breakage it repairs comes back when it is reverted."""

import glob
import logging
import os
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest
import ray
import torch
from ray import tune
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.quick_start import load_data_and_model
from recbole.trainer import HyperTuning, Trainer
import recbole.utils
import recbole.utils.logger

from conftest import TINY_SASREC, write_tiny_dataset
from recbole_hybrid import compat

NUMPY_1 = int(np.__version__.split(".")[0]) < 2
RAY_2_6 = not hasattr(tune, "RunConfig")  # Ray 2.6's tune.report takes keywords


def tiny_setup(settings, model="SASRec"):
    config = Config(model, "tiny", config_dict=dict(settings, train_neg_sample_args=None))
    recbole.utils.init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    net = recbole.utils.get_model(model)(config, train._dataset)
    return config, Trainer(config, net), (train, valid, test)


@pytest.fixture
def settings(tiny, workdir):
    return dict(tiny, epochs=1, load_col={"inter": ["user_id", "item_id", "timestamp"]},
                checkpoint_dir=str(workdir / "saved"))


@pytest.fixture
def trained(settings):
    config, trainer, (train, valid, test) = tiny_setup(settings)
    trainer.fit(train, valid, saved=True, show_progress=False)
    return config, trainer, test


def test_checkpoints_reload_under_torch_2_6_and_later(trained, settings):
    config, trainer, test = trained
    checkpoint = trainer.saved_model_file
    result = trainer.evaluate(test, load_best_model=True)
    assert 0.0 <= result["ndcg@10"] <= 1.0

    _, resumed, (train, valid, _) = tiny_setup(settings)
    resumed.resume_checkpoint(checkpoint)
    assert resumed.start_epoch == 1

    loaded_config, model, _, _, _, loaded_test = load_data_and_model(checkpoint)
    assert loaded_config["model"] == "SASRec"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name])

    # Scoped to RecBole's own calls: anyone else's torch.load keeps torch's safe default.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(checkpoint)


def test_without_the_fix_checkpoints_do_not_reload(trained):
    _, trainer, test = trained
    with compat.reverted("checkpoint_loading"):
        with pytest.raises(pickle.UnpicklingError, match="weights_only"):
            trainer.evaluate(test, load_best_model=True)


def _exhaustive_search(points):
    seen = []

    def objective(config_dict, config_file_list):
        seen.append((config_dict["a"], config_dict["b"]))
        score = config_dict["a"] * 10 + config_dict["b"]
        return {"model": "M", "best_valid_score": score, "valid_score_bigger": True,
                "best_valid_result": {"s": score}, "test_result": {"s": score}}

    tuning = HyperTuning(objective, params_dict={"choice": {"a": [1, 2], "b": [3, 4]}},
                         algo="exhaustive", max_evals=points)
    tuning.run()
    return seen, tuning


def test_exhaustive_search_visits_every_point_once():
    seen, tuning = _exhaustive_search(4)
    assert sorted(seen) == [(1, 3), (1, 4), (2, 3), (2, 4)]
    assert tuning.best_score == 24


def test_without_the_fix_exhaustive_search_crashes_on_hyperopt_0_2_7_and_later():
    with compat.reverted("exhaustive_search"):
        with pytest.raises(AttributeError, match="integers"):
            _exhaustive_search(4)


def _two_runs_log_files(settings):
    """Log one line in each of two runs; return what each run's own log file holds."""
    for model in ("SASRec", "GRU4Rec"):
        config = Config(model, "tiny", config_dict=dict(settings, train_neg_sample_args=None))
        recbole.utils.init_logger(config)  # looked up now: reverted() swaps it
        logging.getLogger().info(f"message of the {model} run")
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [open(*glob.glob(f"log/{model}/*.log")).read() for model in ("SASRec", "GRU4Rec")]


def test_each_run_in_one_process_logs_into_its_own_file(settings):
    first, second = _two_runs_log_files(settings)
    assert "message of the SASRec run" in first and "GRU4Rec" not in first
    assert "message of the GRU4Rec run" in second


def test_without_the_fix_the_second_run_logs_into_the_first_file(settings):
    with compat.reverted("per_run_logging"):
        logging.getLogger().handlers.clear()
        first, second = _two_runs_log_files(settings)
    assert "message of the GRU4Rec run" in first and second == ""


def test_trainers_started_in_the_same_second_get_their_own_checkpoint(settings, monkeypatch):
    monkeypatch.setattr("recbole.trainer.trainer.get_local_time", lambda: "Jan-01-2026_00-00-00")
    files = {tiny_setup(settings)[1].saved_model_file for _ in range(2)}
    assert len(files) == 2
    with compat.reverted("checkpoint_files"):
        files = {tiny_setup(settings)[1].saved_model_file for _ in range(2)}
    assert len(files) == 1


def test_a_crash_while_saving_keeps_the_previous_checkpoint(trained, monkeypatch):
    _, trainer, _ = trained
    checkpoint = trainer.saved_model_file
    before = open(checkpoint, "rb").read()

    def crash(obj, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr("recbole.trainer.trainer.torch.save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer._save_checkpoint(1)
    assert open(checkpoint, "rb").read() == before
    with compat.reverted("checkpoint_files"):
        with pytest.raises(KeyboardInterrupt):
            trainer._save_checkpoint(1, saved_model_file=checkpoint)
    assert open(checkpoint, "rb").read() == b"half a checkpoint"


@pytest.fixture
def downloadable(tmp_path, monkeypatch, settings):
    """A dataset RecBole downloads from a local zip, so the download path runs offline."""
    source = tmp_path / "source"
    write_tiny_dataset(str(source), name="remote")
    archive = tmp_path / "remote.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(source / "remote" / "remote.inter", "remote.inter")
    monkeypatch.setattr("recbole.data.dataset.dataset.Dataset._get_download_url",
                        lambda self, url_file, allow_none=False: archive.as_uri())
    return dict(settings, data_path=str(tmp_path / "data"))


def test_first_automatic_download_loads_the_dataset(downloadable):
    config = Config("SASRec", "remote", config_dict=dict(downloadable, train_neg_sample_args=None))
    assert not torch.distributed.is_initialized()
    dataset = create_dataset(config)
    assert dataset.inter_num > 0
    assert os.path.isfile(os.path.join(downloadable["data_path"], "remote", "remote.inter"))


def test_without_the_fix_the_first_download_crashes(downloadable):
    config = Config("SASRec", "remote", config_dict=dict(downloadable, train_neg_sample_args=None))
    with compat.reverted("download_barrier"):
        with pytest.raises((ValueError, RuntimeError), match="process group"):
            create_dataset(config)


def test_apply_is_idempotent():
    load, init = torch.load, Trainer.__init__
    compat.apply()
    compat.apply()
    assert torch.load is load and Trainer.__init__ is init


def _ndcg_of_one_hit():
    from recbole.evaluator.metrics import NDCG

    config = {"topk": [1], "metric_decimal_place": 4}
    return NDCG(config).metric_info(np.array([[True]]), np.array([1]))


def test_metrics_work_without_constructing_a_config():
    assert float(_ndcg_of_one_hit()[0, 0]) == 1.0


def test_without_the_fix_metrics_need_a_config_first():
    with compat.reverted("numpy_aliases"):
        with pytest.raises(AttributeError, match="float"):
            _ndcg_of_one_hit()


def _create_after_another_process(tmp_path, monkeypatch):
    """The race: the folder does not exist when checked, and exists when created."""
    folder = tmp_path / "log"
    folder.mkdir()
    monkeypatch.setattr("os.path.exists", lambda path: False if str(path) == str(folder) else True)
    recbole.utils.logger.ensure_dir(str(folder))  # looked up now: reverted() swaps it


def test_folders_created_by_another_process_meanwhile_are_fine(tmp_path, monkeypatch):
    _create_after_another_process(tmp_path, monkeypatch)


def test_without_the_fix_a_concurrent_start_fails(tmp_path, monkeypatch):
    with compat.reverted("concurrent_dirs"):
        with pytest.raises(FileExistsError):
            _create_after_another_process(tmp_path, monkeypatch)


@pytest.mark.skipif(NUMPY_1, reason="numpy 1 still has np.float_: nothing to repair")
def test_without_the_fix_no_config_can_be_built_on_numpy_2(settings):
    Config("SASRec", "tiny", config_dict=dict(settings, train_neg_sample_args=None))
    with compat.reverted("config_on_numpy_2"):
        with pytest.raises(AttributeError, match="float_"):
            Config("SASRec", "tiny", config_dict=dict(settings, train_neg_sample_args=None))


@pytest.fixture
def with_gaps(tmp_path, settings):
    """A dataset with a missing rating and an item without genres: RecBole fills both."""
    folder = tmp_path / "gaps"
    folder.mkdir()
    rows = [f"{user}\t{(user + t) % 5 + 1}\t{'' if (user, t) == (1, 0) else 4}\t{t}"
            for user in range(1, 11) for t in range(6)]
    (folder / "gaps.inter").write_text(
        "\n".join(["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + rows) + "\n")
    items = [f"{item}\t{'' if item == 1 else 'a b'}" for item in range(1, 6)]
    (folder / "gaps.item").write_text("\n".join(["item_id:token\tgenre:token_seq"] + items) + "\n")
    load_col = {"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", "genre"]}
    return Config("SASRec", "gaps", config_dict=dict(settings, data_path=str(tmp_path),
                                                     load_col=load_col, train_neg_sample_args=None))


def test_missing_values_and_sequences_load_without_pandas_warnings(with_gaps, recwarn):
    dataset = create_dataset(with_gaps)
    assert (dataset.inter_feat["rating"] == 4).all()
    genres = sorted(len(genre) for genre in dataset.item_feat["genre"])
    assert genres == [0, 0, 2, 2, 2, 2]  # [PAD], the item without, 4 x 'a b'
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


@pytest.mark.skipif(tuple(map(int, pd.__version__.split(".")[:2])) < (2, 2),
                    reason="pandas warns about these from 2.2 on")
def test_without_the_fix_every_dataset_load_warns(with_gaps):
    with compat.reverted("pandas_warnings"):
        with pytest.warns(FutureWarning) as warned:
            create_dataset(with_gaps)
    messages = [str(w.message) for w in warned]
    assert any("chained assignment" in m for m in messages)
    assert any("Series.agg" in m for m in messages)
    assert {os.path.basename(w.filename) for w in warned} == {"dataset.py"}


@pytest.fixture(scope="module")
def recbole_objective_in_ray_trials(data_path, tmp_path_factory):
    """RecBole's own objective_function in two Ray trials, with the ray_report fix and without."""
    settings = dict(TINY_SASREC, model="SASRec", dataset="tiny", data_path=data_path, epochs=1,
                    train_neg_sample_args=None,
                    load_col={"inter": ["user_id", "item_id", "timestamp"]})

    def trial(config):
        import recbole_hybrid  # noqa: F401  (the fixes, in this worker)
        from recbole.quick_start import objective_function

        if not config["fixed"]:
            compat.revert("ray_report")
        objective_function(config_dict=config["settings"], saved=False)

    api = compat.ray_tune_api()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = tune.Tuner(
            trial, param_space={"settings": settings, "fixed": tune.grid_search([True, False])},
            run_config=api.RunConfig(name="objective", storage_path=str(tmp_path_factory.mktemp("ray")),
                                     failure_config=api.FailureConfig(max_failures=0)),
        ).fit()
    finally:
        ray.shutdown()
    return {result.config["fixed"]: result for result in results}


@pytest.mark.slow
def test_recbole_objective_function_reports_its_test_result_from_a_ray_trial(
        recbole_objective_in_ray_trials):
    result = recbole_objective_in_ray_trials[True]
    assert result.error is None
    assert 0 < result.metrics["ndcg@10"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(RAY_2_6, reason="Ray 2.6's tune.report takes keywords: nothing to repair")
def test_without_the_fix_recbole_objective_function_fails_in_a_ray_trial(
        recbole_objective_in_ray_trials):
    error = recbole_objective_in_ray_trials[False].error
    assert error is not None and "unexpected keyword argument" in str(error)
