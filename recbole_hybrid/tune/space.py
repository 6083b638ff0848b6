"""RecBole's params file: the search space of `tune`, one parameter per line.

    learning_rate loguniform -8,-5      # exp(-8) .. exp(-5), hyperopt's convention
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1             # integral values become ints
    d_state choice [16,32,64]
"""

import math
import os

import yaml

from recbole_hybrid.config.files import resolve
from recbole_hybrid.errors import ConfigError, UserError, shown

KINDS = ("choice", "uniform", "quniform", "loguniform")
FIXED = ("model", "dataset")  # what a search is of, not what it searches


class Space(dict):
    """{name: (kind, values)} of a params file, kind in KINDS; `path` and `lines` ({name:
    line number}) for messages."""

    def __init__(self, path):
        super().__init__()
        self.path, self.lines = path, {}

    def where(self, name):
        return f"{self.path}:{self.lines[name]}"


def read_params_file(path):
    """The file's Space; clear errors. A `properties/hyper/...` path the working directory
    lacks names the package's shipped file (`config.files.resolve`). Both engines search
    what this reads: RecBole's own parser never reads the file."""
    path = resolve(path)
    if not os.path.isfile(path):
        raise UserError(f"params file {path} is a folder" if os.path.isdir(path) else
                        f"params file not found: {path}")
    space = Space(path)
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not a name
            lines = f.readlines()
    except UnicodeDecodeError:
        raise ConfigError(f"params file {path} is not a text (utf-8) file") from None
    for number, line in enumerate(lines, 1):
        words = line.split("#")[0].split()
        if not words:
            continue
        if len(words) < 3:
            raise ConfigError(f"{path}:{number}: expected 'name kind values', got {line.strip()!r}")
        name, kind, text = words[0], words[1], "".join(words[2:])
        if name in space:
            raise ConfigError(f"{path}:{number}: {name} is given twice; keep one line for it")
        if name in FIXED:
            raise ConfigError(f"{path}:{number}: {name} is not searched: a search is of one "
                              f"{name}, given with --{name}; remove the line")
        try:
            space[name] = (kind, _parse_values(kind, text))
        except (ValueError, yaml.YAMLError) as error:
            expected = str(error).splitlines()[0]
            raise ConfigError(f"{path}:{number}: {name} {kind} {shown(text)!r}: expected {expected}") from None
        space.lines[name] = number
    if not space:
        raise ConfigError(f"{path}: no parameters (one per line: 'name kind values')")
    return space


def _parse_values(kind, text):
    """The values of one params-file line; ValueError says what was expected."""
    if kind == "choice":
        value = yaml.safe_load(text)
        if not isinstance(value, list) or not value:
            raise ValueError("a non-empty list like [16,32]")
        if not all(isinstance(v, (str, int, float, bool)) for v in value):
            raise ValueError("a list of numbers, words or true/false, like [16,32] or [adam,sgd]")
        if any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ValueError("finite numbers")
        if len(set(map(repr, value))) < len(value):
            raise ValueError("each value once")
        return value
    if kind not in KINDS:
        raise ValueError(f"a kind among {', '.join(KINDS)}")
    shape = "low,high,q with low < high and q > 0" if kind == "quniform" else "low,high with low < high"
    try:
        value = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"numbers: {shape}") from None
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"finite numbers: {shape}")
    if len(value) != (3 if kind == "quniform" else 2) or value[0] >= value[1] or \
            (kind == "quniform" and value[2] <= 0):
        raise ValueError(shape)
    if kind == "loguniform" and not -700 <= value[0] < value[1] <= 700:
        raise ValueError(f"bounds from -700 to 700: the values are exp(low) .. exp(high) "
                         "(hyperopt's convention), e.g. -8,-5 for 0.0003 .. 0.0067")
    return value


def as_params_dict(space):
    """RecBole's params_dict form of the space ({kind: {name: values}}), which HyperTuning
    and Ray's HyperOptSearch translate into hyperopt's."""
    return {kind: {name: list(value) for name, (k, value) in space.items() if k == kind}
            for kind in {k for k, _ in space.values()}}


def as_config_values(params, space):
    """Trial values as RecBole wants them: quniform (and integral choices) as ints."""
    values = {}
    for name, value in params.items():
        if space.get(name, ("",))[0] == "quniform" and float(value).is_integer():
            value = int(value)
        values[name] = value.item() if hasattr(value, "item") else value
    return values
