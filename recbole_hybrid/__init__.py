"""recbole-hybrid: Mamba-based sequential recommenders as RecBole 1.2.1 models.

`import recbole_hybrid` is all a user needs: it applies the RecBole fixes in `compat` and
registers the plugin models, so RecBole resolves them by name everywhere.
"""

__version__ = "0.1.0"

from recbole_hybrid import compat  # noqa: E402

compat.apply()

from recbole_hybrid import models  # noqa: E402,F401  (registers Mamba4Rec, MaTrRec, MLSA4Rec)
from recbole_hybrid.errors import UserError  # noqa: E402
from recbole_hybrid.recommend import Recommender  # noqa: E402
from recbole_hybrid.registry import plugin_models, register_model  # noqa: E402
from recbole_hybrid.runner import run  # noqa: E402

__all__ = ["Recommender", "UserError", "plugin_models", "register_model", "run", "__version__"]
