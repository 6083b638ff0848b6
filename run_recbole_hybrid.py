"""Train and evaluate a model: `python run_recbole_hybrid.py --model=MaTrRec --dataset=ml-1m`.

The same as `recbole-hybrid run`; see `python run_recbole_hybrid.py --help`.
"""

import sys

from recbole_hybrid.cli import console

if __name__ == "__main__":
    sys.exit(console(["run"] + sys.argv[1:]))
