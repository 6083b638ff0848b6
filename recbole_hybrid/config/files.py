"""The yaml files a run reads, and the properties shipped inside the package.

The package carries its experiment configs as package data (`recbole_hybrid/properties/`:
`dataset/` defaults per dataset, `model/` defaults per plugin model, the papers' settings per
model, `grids/`, `hyper/`, `published.yaml`), so they apply after a wheel install as well.
A `properties/` folder in the working directory takes precedence: `properties/dataset/ml-1m.yaml`
there replaces the shipped one, and a path such as `properties/hyper/MaTrRec.hyper` names the
working directory's file where it exists, else the shipped one.
"""

import os

import yaml

from recbole_hybrid.errors import ConfigError, UserError

PACKAGE_PROPERTIES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "properties")


def resolve(path):
    """The file to read for a path the user gave: `path` itself where it exists, else for a
    relative `properties/...` path the package's shipped file of that name where it exists,
    else `path` (whose absence the reader reports)."""
    parts = os.path.normpath(path).split(os.sep)
    if os.path.exists(path) or os.path.isabs(path) or parts[0] != "properties":
        return path
    shipped = os.path.join(PACKAGE_PROPERTIES, *parts[1:])
    return shipped if os.path.isfile(shipped) else path


def dataset_config_file(dataset):
    """`properties/dataset/<dataset>.yaml` of the working directory, else the package's."""
    path = resolve(os.path.join("properties", "dataset", f"{dataset}.yaml"))
    return path if os.path.isfile(path) else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (yaml keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # `<<: *anchor` may be overridden
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"`{key}` is set twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path, what="config file"):
    """A yaml file's mapping; a missing file, a syntax error or a non-mapping is a UserError."""
    path = resolve(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{what} {where} is not valid yaml ({problem}); fix the line, "
                          "e.g. `key: value` pairs with spaces, not tabs, for indentation") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not a text (utf-8) file") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{what} {path} must hold `key: value` settings, but holds a "
                          f"{type(content).__name__}")
    return content


def read_yamls(files, what="config file"):
    """The settings of several yaml files, later files winning."""
    settings = {}
    for path in files:
        settings.update(read_yaml(path, what))
    return settings
