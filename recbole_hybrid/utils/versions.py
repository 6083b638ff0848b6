"""The version stamp written into results and bundles."""

import datetime


def versions(written=False):
    """{"recbole_hybrid", "recbole", "torch": version}, with the time as "written" if asked."""
    import recbole
    import torch

    from recbole_hybrid import __version__

    stamp = {"recbole_hybrid": __version__, "recbole": recbole.__version__,
             "torch": torch.__version__}
    if written:
        stamp["written"] = datetime.datetime.now().isoformat(timespec="seconds")
    return stamp
