"""The values the MaTrRec paper publishes (Table 2), shown beside the measured ones:
`recbole_hybrid/properties/published.yaml`, {dataset: {model: {metric: value}}}."""

import functools
import os

import yaml

from recbole_hybrid.config.files import PACKAGE_PROPERTIES

PUBLISHED_FILE = os.path.join(PACKAGE_PROPERTIES, "published.yaml")


@functools.cache
def _published_table():
    with open(PUBLISHED_FILE, encoding="utf-8") as f:
        return yaml.safe_load(f)["results"]


def published(dataset, model, metric):
    """The published test value, or None."""
    return _published_table().get(dataset, {}).get(model, {}).get(metric)
