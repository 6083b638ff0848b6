"""Using a trained model: `Recommender` (top-k items from a checkpoint or a bundle, in
`recommender`), the bundle file format (`bundle`) and the HTTP service (`http`)."""

from recbole_hybrid.utils.lazy import lazy_attributes

_MODULES = {"Recommender": "recbole_hybrid.serving.recommender"}
__all__ = sorted(_MODULES)
__getattr__ = lazy_attributes(__name__, _MODULES)
