"""Comparing models: a grid of models x datasets x seeds (`grid`), its cells trained in
fresh processes (`cell_processes`) by `compare` (in `driver`), every finished cell appended to
results.jsonl (`results`), and the tables and figures (`rows`, `stats`, `published`,
`writers`) drawn from that file."""

from recbole_hybrid.utils.lazy import lazy_attributes

_MODULES = {
    "compare": "recbole_hybrid.compare.driver",
    "report_only": "recbole_hybrid.compare.driver",
    "Grid": "recbole_hybrid.compare.grid",
    "load_grid": "recbole_hybrid.compare.grid",
    "check_grid": "recbole_hybrid.compare.grid",
    "DEFAULT_MODELS": "recbole_hybrid.compare.grid",
    "read_records": "recbole_hybrid.compare.results",
    "RESULTS_FILE": "recbole_hybrid.compare.results",
}
__all__ = sorted(_MODULES)
__getattr__ = lazy_attributes(__name__, _MODULES)
