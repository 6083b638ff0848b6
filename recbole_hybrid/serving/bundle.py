"""The bundle: a trained sequential model in one file that loads without its dataset.

A bundle is a zip archive of three members:

- `manifest.json`: format name and version, model and dataset names, versions that wrote it,
  and the model's RecBole configuration (its JSON-representable settings);
- `vocabulary.json`: the user and item tokens in RecBole's internal id order (id 0 is
  `[PAD]`) and every user's full history as internal item ids, in time order;
- `weights.pt`: the model's state dict, read with `torch.load(weights_only=True)`.

Nothing in it is unpickled, so a bundle from elsewhere is as safe to open as a JSON file.
"""

import collections
import io
import json
import os
import pickle
import re
import zipfile

import torch
from recbole.utils import get_model

from recbole_hybrid import registry
from recbole_hybrid.config.values import POSITIVE_INT, VALUE_RULES, Rule, require
from recbole_hybrid.data.stand_in import StandInDataset
from recbole_hybrid.errors import BundleError, CheckpointError, OutputError, UserError
from recbole_hybrid.utils.files import replaced_atomically

FORMAT = "recbole-hybrid bundle"
FORMAT_VERSION = 1
MANIFEST, VOCABULARY, WEIGHTS = "manifest.json", "vocabulary.json", "weights.pt"
# the most each member may hold, uncompressed: checked before it is read, and read no further
SIZE_CAPS = {MANIFEST: 16 * 2**20, VOCABULARY: 2 * 2**30, WEIGHTS: 8 * 2**30}
# sequences are padded to MAX_ITEM_LIST_LENGTH: a longer one is a damaged or crafted setting
LENGTH = Rule(lambda v: POSITIVE_INT.test(v) and v <= 2**20, "a positive integer up to 2**20")


class BundleConfig(dict):
    """RecBole's `Config` as a model constructor reads it: `config[key]`, None when unset."""

    def __getitem__(self, key):
        return self.get(key)


def is_bundle(path):
    """Whether `path` is a bundle (a zip with a manifest) rather than a RecBole checkpoint."""
    if os.path.isdir(path) or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return MANIFEST in archive.namelist()


def json_settings(config):
    """The settings of a RecBole config that JSON represents. Dropped: the device (a bundle
    is loaded on a device of its own) and the enums RecBole derives (MODEL_TYPE comes back
    from the model class; the input and evaluator types matter to training only)."""
    settings = {}
    for key, value in config.final_config_dict.items():
        try:
            settings[key] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            continue
    return settings


def write_bundle(path, config, state_dict, users, items, histories, versions):
    """Write a bundle atomically. `users`, `items`: tokens by internal id; `histories`: one
    list of internal item ids per user id."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": config["model"],
        "dataset": config["dataset"],
        "versions": versions,
        "config": json_settings(config),
    }
    vocabulary = {"users": list(users), "items": list(items), "histories": histories}
    weights = io.BytesIO()
    torch.save({key: tensor.cpu() for key, tensor in state_dict.items()}, weights)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with replaced_atomically(path) as partial, \
                zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
            archive.writestr(VOCABULARY, json.dumps(vocabulary))
            archive.writestr(WEIGHTS, weights.getvalue())
    except OSError as error:
        raise OutputError(f"cannot write the bundle {path}: {error.strerror or error}") from None


def read_bundle(path, device):
    """(model in eval mode on `device`, its config, users, items, histories) from a bundle."""
    if not os.path.isfile(path):
        raise BundleError(f"bundle not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(_member(path, archive, MANIFEST))
            _check_version(path, manifest)
            model_class = _check_manifest(path, manifest)
            vocabulary = json.loads(_member(path, archive, VOCABULARY))
            _check_vocabulary(path, vocabulary)
            state_dict = _weights(path, _member(path, archive, WEIGHTS))
    except UserError:
        raise
    except Exception as error:  # a damaged file fails in zipfile, json or torch: one message
        raise BundleError(
            f"{path} is not a readable bundle ({type(error).__name__}: {error}); it may be "
            "truncated or corrupted: export it again with `recbole-hybrid export`"
        ) from None
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise BundleError(f"{path}: {WEIGHTS} must hold a state dict (parameter names to "
                          "tensors): export the checkpoint again with `recbole-hybrid export`")
    config = BundleConfig(manifest["config"])
    config.update(device=torch.device(device), MODEL_TYPE=model_class.type)
    model = build_model(model_class, config, len(vocabulary["users"]), len(vocabulary["items"]),
                        state_dict, device, bundle=path)
    return model, config, vocabulary["users"], vocabulary["items"], vocabulary["histories"]


def _member(path, archive, name):
    """The bytes of member `name`, refused before reading when the zip directory says it is
    larger than SIZE_CAPS[name]. Read as many bytes as the directory says, and no more: a
    member that unpacks to more fails its CRC check then (a damaged bundle). (A plain `read()`
    would unpack the whole member, whatever the directory says, before cutting it.)"""
    cap = SIZE_CAPS[name]
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise BundleError(f"{path} is a bundle without {name}: export it again with "
                          "`recbole-hybrid export`") from None
    if info.file_size > cap:
        raise BundleError(f"{path}: {name} holds {info.file_size / 2**20:.0f} MB, more than a "
                          f"bundle's {name} may ({cap / 2**20:.0f} MB); it was not read")
    with archive.open(info) as member:
        return member.read(info.file_size)


def _weights(path, content):
    """The state dict in `content` (weights.pt), read with torch's weights-only reader."""
    try:
        return torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # its text spans a dozen lines: keep the reason
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(\. |\n|$)", str(error))
        raise BundleError(
            f"{path}: {WEIGHTS} is not a plain state dict of tensors (torch's weights-only "
            f"reader: {reason.group(1) if reason else 'unreadable'}); nothing in it was run or "
            "used: export the checkpoint again with `recbole-hybrid export`") from None


def _check_manifest(path, manifest):
    """The model class the manifest names; BundleError for a missing or ill-typed field."""
    where = f"{path} ({MANIFEST})"
    for field, kind in (("model", str), ("dataset", str), ("config", dict)):
        if not isinstance(manifest.get(field), kind):
            raise BundleError(f"{where}: `{field}` must be a {kind.__name__}, got "
                              f"{manifest.get(field)!r}: export the checkpoint again")
    try:
        registry.check_known(manifest["model"])
        config = manifest["config"]
        require("MAX_ITEM_LIST_LENGTH", config.get("MAX_ITEM_LIST_LENGTH"), LENGTH)
        for key, rule in VALUE_RULES.items():
            if key in config:
                require(key, config[key], rule)
    except UserError as error:
        raise BundleError(f"{where}: {error}") from None
    return get_model(manifest["model"])


def _check_vocabulary(path, vocabulary):
    """BundleError unless users and items are lists of strings and `histories` one list of
    item ids (integers from 1 to the number of items - 1) per user."""
    where = f"{path} ({VOCABULARY})"
    if not isinstance(vocabulary, dict):
        raise BundleError(f"{where} must be a JSON object with users, items and histories")
    for field in ("users", "items"):
        tokens = vocabulary.get(field)
        if not isinstance(tokens, list) or len(tokens) < 2 or not all(
                isinstance(t, str) for t in tokens):
            raise BundleError(f"{where}: `{field}` must be a list of tokens (strings), the "
                              "padding first")
        if len(set(tokens)) < len(tokens):
            twice = next(t for t, n in collections.Counter(tokens).items() if n > 1)
            raise BundleError(f"{where}: `{field}` holds the token {twice!r} more than once; "
                              "each token names one id: export the checkpoint again")
    histories, n_items = vocabulary.get("histories"), len(vocabulary["items"])
    if not isinstance(histories, list) or len(histories) != len(vocabulary["users"]):
        raise BundleError(f"{where}: `histories` must hold one list per user "
                          f"({len(vocabulary['users'])})")
    for user, history in enumerate(histories):
        if not isinstance(history, list) or not all(
                type(i) is int and 0 < i < n_items for i in history):
            raise BundleError(f"{where}: the history of user {vocabulary['users'][user]!r} "
                              f"(id {user}) must be a list of item ids from 1 to {n_items - 1}")


def _check_version(path, manifest):
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is a zip file but not a recbole-hybrid bundle (no manifest)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path} is a bundle of format version {version}, but this recbole-hybrid reads "
            f"version {FORMAT_VERSION} only: export the checkpoint again with this version's "
            "`recbole-hybrid export`, or load the bundle with the version that wrote it "
            f"({manifest.get('versions', {}).get('recbole_hybrid', 'unknown')})"
        )


def build_model(model_class, config, n_users, n_items, state_dict, device, bundle=None):
    """`model_class(config, StandInDataset)` with `state_dict` loaded, in eval mode on `device`.
    `n_users`, `n_items`: the sizes of the id fields, padding included; `bundle`: the bundle
    the config and weights come from, if its settings may be anything. The model is
    first built on the meta device, which allocates nothing: settings that would ask for more
    memory than the weights hold, and weights that do not fit, are refused before any is taken."""
    where = bundle and f"{bundle} ({MANIFEST}, config)"
    with torch.device("meta"):
        shapes = {key: tuple(value.shape) for key, value in _construct(
            model_class, config, n_users, n_items, where).state_dict().items()}
    _check_weights(model_class.__name__, shapes, state_dict, bundle and f"{bundle} ({WEIGHTS})")
    model = _construct(model_class, config, n_users, n_items, where)
    model.load_state_dict(state_dict)
    return model.to(device).eval()


def _construct(model_class, config, n_users, n_items, where):
    name = model_class.__name__
    try:
        return model_class(config, StandInDataset(config, n_users, n_items))
    except UserError:
        raise
    except (AttributeError, KeyError) as error:
        raise UserError(
            f"{name} cannot be rebuilt for recommending: its constructor reads more of the "
            f"dataset than the sizes of the user and item ids ({type(error).__name__}: "
            f"{error}); models that read item features or the training interactions are not "
            "supported"
        ) from None
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as error:
        if where is None:
            raise
        raise BundleError(f"{where}: the settings do not build {name} ({type(error).__name__}: "
                          f"{error}); export the checkpoint again") from None


def _check_weights(name, shapes, state_dict, where=None):
    """CheckpointError naming the first of the weights' names or shapes that differ from
    `shapes` (the model's, as its settings build it), and how many differ."""
    differences = [f"{key} is missing" for key in shapes if key not in state_dict]
    differences += [f"{key} is not one of {name}'s" for key in state_dict if key not in shapes]
    differences += [f"{key} has the shape {list(state_dict[key].shape)}, where the settings "
                    f"make {list(shapes[key])}" for key in shapes
                    if key in state_dict and tuple(state_dict[key].shape) != shapes[key]]
    if differences:
        more = f" ({len(differences) - 1} more differences)" if len(differences) > 1 else ""
        raise CheckpointError(
            f"{where + ': ' if where else ''}the saved weights do not fit {name} as configured: "
            f"{differences[0]}{more}; the weights and the settings come from different models "
            "(or the dataset changed): export the checkpoint again, or train the model again on "
            "this dataset")
