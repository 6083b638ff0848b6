"""`python -m recbole_hybrid run ...`, the same as the `recbole-hybrid` command."""

import sys

from recbole_hybrid.cli import console

sys.exit(console())
