"""Hyperparameter search: `tune` (in `search`) reads RecBole's params file (`space`), checks
the shared settings once (`search_setup`), runs the trials with an engine of `engines`
(`hyperopt_engine`: RecBole's HyperTuning; `ray_engine`: Ray Tune) and writes their tables
and best.yaml (`trials`)."""

from recbole_hybrid.utils.lazy import lazy_attributes

_MODULES = {
    "tune": "recbole_hybrid.tune.search",
    "read_params_file": "recbole_hybrid.tune.space",
    "as_config_values": "recbole_hybrid.tune.space",
}
__all__ = sorted(_MODULES)
__getattr__ = lazy_attributes(__name__, _MODULES)
