"""RecBole's params file: the search space of `tune`, one parameter per line.

    learning_rate loguniform -8,-5      # exp(-8) .. exp(-5), hyperopt's convention
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1             # integral values become ints
    d_state choice [16,32,64]
"""

import os

import yaml

from recbole_hybrid.config.files import resolve
from recbole_hybrid.errors import ConfigError, UserError

KINDS = ("choice", "uniform", "quniform", "loguniform")


def read_params_file(path):
    """{name: (kind, value)}, kind in KINDS; clear errors. A `properties/hyper/...` path the
    working directory lacks names the package's shipped file (`config.files.resolve`)."""
    path = resolve(path)
    if not os.path.isfile(path):
        raise UserError(f"params file {path} is a folder" if os.path.isdir(path) else
                        f"params file not found: {path}")
    space = {}
    try:
        with open(path, encoding="utf-8") as f:
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
        try:
            space[name] = (kind, _parse_values(kind, text))
        except (ValueError, yaml.YAMLError) as error:
            expected = str(error).splitlines()[0]
            raise ConfigError(f"{path}:{number}: {name} {kind} {text!r}: expected {expected}") from None
    if not space:
        raise ConfigError(f"{path}: no parameters (one per line: 'name kind values')")
    return space


def _parse_values(kind, text):
    """The values of one params-file line; ValueError says what was expected."""
    if kind == "choice":
        value = yaml.safe_load(text)
        if not isinstance(value, list) or not value:
            raise ValueError("a non-empty list like [16,32]")
        return value
    if kind not in KINDS:
        raise ValueError(f"a kind among {', '.join(KINDS)}")
    shape = "low,high,q with low < high and q > 0" if kind == "quniform" else "low,high with low < high"
    try:
        value = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"numbers: {shape}") from None
    if len(value) != (3 if kind == "quniform" else 2) or value[0] >= value[1] or \
            (kind == "quniform" and value[2] <= 0):
        raise ValueError(shape)
    return value


def as_config_values(params, space):
    """Trial values as RecBole wants them: quniform (and integral choices) as ints."""
    values = {}
    for name, value in params.items():
        if space.get(name, ("",))[0] == "quniform" and float(value).is_integer():
            value = int(value)
        values[name] = value.item() if hasattr(value, "item") else value
    return values
