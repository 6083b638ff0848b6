"""One run of a model on a dataset, RecBole's way: `run` (in `runner`) checks the settings,
trains, tests and writes a run folder (`run_folder`), on one process or several
(`distributed`), keeping the per-user test metrics (`per_user`); `checkpoints` reads
RecBole's checkpoints and the settings to resume one with."""

from recbole_hybrid.utils.lazy import lazy_attributes

__all__ = ["run"]
__getattr__ = lazy_attributes(__name__, {"run": "recbole_hybrid.quick_start.runner"})
