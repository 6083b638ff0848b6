"""Plugin models resolve by name in every RecBole entry point; unknown names get a clear error."""

import glob
import os

import pytest
import recbole.config.configurator
import recbole.quick_start.quick_start
import recbole.utils
import recbole.utils.utils
from recbole.config import Config
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.quick_start import load_data_and_model, objective_function, run_recbole

from plugin_model import TinySeqRec
from recbole_hybrid import compat, register_model, registry
from recbole_hybrid.errors import UnknownModelError

TINY_RUN = {
    "epochs": 1,
    "show_progress": False,
    "dataset": "tiny",
    "model": "TinySeqRec",
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
}


@pytest.mark.parametrize(
    "module", [recbole.utils, recbole.utils.utils, recbole.config.configurator, recbole.quick_start.quick_start]
)
def test_every_get_model_resolves_the_plugin_model(module):
    assert module.get_model("TinySeqRec") is TinySeqRec
    assert module.get_model("SASRec").__name__ == "SASRec"


def test_config_reads_the_plugin_yaml_where_recbole_reads_its_own():
    config = Config(model="TinySeqRec", dataset="ml-100k")
    assert config["tiny_marker"] == 7
    assert config["learning_rate"] == 0.005  # the model yaml beats overall.yaml ...
    assert config["MAX_ITEM_LIST_LENGTH"] == 50  # ... and RecBole's ml-100k.yaml beats it
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}  # sequential protocol
    assert Config("TinySeqRec", "ml-100k", config_dict={"tiny_marker": 9})["tiny_marker"] == 9


def test_without_the_config_hook_the_plugin_defaults_are_lost():
    with compat.reverted("plugin_model_defaults"):  # no loss_type: RecBole refuses the model
        with pytest.raises(ValueError, match="loss_type"):
            Config(model="TinySeqRec", dataset="ml-100k")
    assert Config(model="TinySeqRec", dataset="ml-100k")["tiny_marker"] == 7


def test_recbole_quick_start_entry_points_run_the_plugin_model(data_path, workdir):
    settings = dict(TINY_RUN, data_path=data_path, checkpoint_dir=str(workdir / "ckpt"))
    result = run_recbole(model="TinySeqRec", dataset="tiny", config_dict=dict(settings))
    assert set(result["test_result"]) >= {"recall@10", "ndcg@10"}

    (checkpoint,) = glob.glob(str(workdir / "ckpt" / "TinySeqRec-*.pth"))
    config, model, *_ = load_data_and_model(checkpoint)
    assert isinstance(model, TinySeqRec) and config["tiny_marker"] == 7

    trial = objective_function(config_dict=dict(settings), saved=False)
    assert trial["model"] == "TinySeqRec" and 0.0 <= trial["best_valid_score"] <= 1.0


def test_unknown_model_names_the_valid_models():
    with pytest.raises(UnknownModelError) as error:
        recbole.utils.get_model("NoSuchModel")
    message = str(error.value)
    assert "Unknown model 'NoSuchModel'" in message
    assert "TinySeqRec" in message and "SASRec" in message and "LightSANs" in message
    assert "xgboost" not in message


def test_unknown_model_used_to_surface_as_missing_xgboost():
    with compat.reverted("model_lookup"):
        with pytest.raises(ModuleNotFoundError, match="xgboost|lightgbm"):
            recbole.utils.get_model("NoSuchModel")


def test_wrong_case_suggests_the_right_name():
    with pytest.raises(UnknownModelError, match="Did you mean 'SASRec'"):
        Config(model="sasrec", dataset="ml-100k")


def test_registering_a_recbole_name_is_refused():
    class SASRec(SequentialRecommender):
        pass

    with pytest.raises(ValueError, match="already has a model module"):
        register_model(SASRec)


def test_registering_is_idempotent_and_listed():
    register_model(TinySeqRec, os.path.join(os.path.dirname(__file__), "tinyseqrec.yaml"))
    assert "TinySeqRec" in registry.plugin_models()
    assert "SASRec" in registry.recbole_models() and "BPR" not in registry.recbole_models()
