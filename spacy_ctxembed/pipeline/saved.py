"""What a saved component holds besides its weights, and the checks that what
loads is what was saved.

A saved pipeline's folder can be edited: another model folder put in its
place, its config.json, tokenizer or ELMo options changed, its config.cfg
given other layers or another combiner. Each would run silently under the
combiner and the downstream weights trained on the saved model. The cfg a
component writes records what they must match (`saved_cfg`), and the checks
here refuse a load that does not, naming the component, the file and the way
to keep the change on purpose.
"""
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import srsly
from thinc.api import Model

from ..errors import SettingError, bad_setting, is_int
from ..layers import built_as
from ..models.elmo_weights import OPTIONS_FILE
from ..models.hf_loading import CONFIG_FILE
from ..models.hf_probe import probe_difference
from ..models.torch_bridge import encoder_features, encoder_shim, selected_layers
from ..settings import normalize_layers
from .signature import saved_options_digest, saved_probe, saved_weights_fingerprint

#: Subfolder of the component's directory where the encoder writes its files.
MODEL_DIR = "model"
#: Version of the component's on-disk layout (v1 wrote none; same layout).
FORMAT = 2
#: Key in the saved cfg: the encoder layers (non-negative indices) the combiner
#: was saved for. Not "layers": 0.1 wrote its `layers` setting, as given, there.
LAYERS_KEY = "encoder_layers"
#: Key in the saved cfg: a fingerprint of the encoder's weights as saved in the
#: model folder (`saved_weights_fingerprint`; absent in older saves, and for an encoder
#: without weights of its own).
WEIGHTS_KEY = "encoder_weights"
#: The cfg key of the encoder's pooling and windows when saved (`torch_bridge.encoder_features`).
FEATURES_KEY = "encoder_features"
#: The cfg key of ELMo's options when saved, by content (`saved_options_digest`;
#: absent in older saves, and for BERT).
OPTIONS_KEY = "encoder_options"
#: The cfg key of what a Hugging Face model folder computes when saved: its
#: tokenizer's vocabulary, a probe text's wordpieces and hidden states
#: (`saved_probe`; absent in older saves, and for ELMo).
PROBE_KEY = "encoder_probe"
#: The cfg key of the config settings that name the encoder's files when saved
#: (`name`; ELMo's `options_file`, `weight_file`): a load never reads them
#: (the pipeline's own model folder is loaded), which an edit of them is told.
SOURCE_KEY = "encoder_source"
SOURCE_SETTINGS = ("name", "options_file", "weight_file")
#: The cfg key of the component's weights lineage (`ContextualEmbedder.lineage`):
#: kept by a save and the load of it (absent in older saves: a new one then).
LINEAGE_KEY = "weights_lineage"
#: The cfg key that marks weights loaded from a model folder kept on purpose
#: (`ContextualEmbedder._unvouched`): kept by saves and loads, since the records
#: a save writes again would vouch for that folder.
KEPT_KEY = "weights_kept_on_purpose"


def saved_cfg(settings: Dict[str, Any], encoder: Model, *, probe: bool, lineage: Optional[str],
              kept: bool = False) -> Dict[str, Any]:
    """The cfg file: the layout's version, the settings (for reference only: the
    config's are used), the weights' lineage, the encoder layers that the combiner's weights are for,
    the fingerprint of the encoder's weights (`check_saved_weights`), the
    settings naming its files (`warn_if_source_edited`), ELMo's options
    (`check_saved_options`), its pooling and windows (`check_saved_features`),
    with `kept` the mark `KEPT_KEY`, and with `probe`, what a Hugging Face model
    folder computes (`check_saved_probe`: files on disk may be edited)."""
    cfg = {"format": FORMAT, **settings, LAYERS_KEY: selected_layers(encoder)}
    if lineage is not None:
        cfg[LINEAGE_KEY] = lineage
    if kept:
        cfg[KEPT_KEY] = True
    if encoder.shims:
        cfg[WEIGHTS_KEY] = saved_weights_fingerprint(encoder)
        shim = encoder_shim(encoder)
        if shim is not None:
            cfg[SOURCE_KEY] = {k: shim.settings[k] for k in SOURCE_SETTINGS if k in shim.settings}
        options = saved_options_digest(encoder)
        if options is not None:
            cfg[OPTIONS_KEY] = options
        record = saved_probe(encoder) if probe else None
        if record is not None:  # (to disk only: the files a user may edit, checked by from_disk)
            cfg[PROBE_KEY] = record
    features = encoder_features(encoder)
    if features:
        cfg[FEATURES_KEY] = features
    return cfg


#: What the refusals below add to "remove the record from the cfg file".
KEPT_ON_PURPOSE = (" (the components listening to this one through a ContextualListener.v2, trained on what it "
                   "was saved with, are then refused until trained again)")


def vouching_keys(encoder: Model) -> List[str]:
    """The cfg keys that a save from disk (`saved_cfg` with `probe`) records to
    check that the model folder is the one saved: the weights' fingerprint, and
    ELMo's options or else a Hugging Face folder's probe. (A save before the
    lineage was recorded has none to vouch for; `from_bytes`, whose cfg has
    no probe, checks none: bytes are not files a user edits.)"""
    return [WEIGHTS_KEY, OPTIONS_KEY if saved_options_digest(encoder) is not None else PROBE_KEY]


def combiner_nodes(model: Model, combiner: Model, model_bytes: Any) -> Optional[List[Dict[str, Any]]]:
    """The saved nodes of the combiner in the bytes of the whole model; None where
    the bytes are not such a model (from_bytes reports that itself)."""
    saved = saved_nodes(model_bytes)
    nodes = list(model.walk())
    if saved is None or len(saved) != len(nodes):
        return None
    wanted = {id(node) for node in combiner.walk()}
    return [saved[i] for i, node in enumerate(nodes) if id(node) in wanted]


def read_cfg(name: str, path: Path) -> Dict[str, Any]:
    if not path.parent.is_dir():
        raise bad_setting(name, "cfg", str(path), f"the component's folder {str(path.parent)!r} is missing "
                          "(was the pipeline saved with this component in `exclude`?)")
    if not path.is_file():
        raise bad_setting(name, "cfg", str(path), "the file is missing")
    try:
        cfg = srsly.read_json(path)
    except Exception as err:  # noqa: BLE001
        raise bad_setting(name, "cfg", str(path), f"not valid JSON ({type(err).__name__})") from None
    check_format(name, cfg, str(path))
    return cfg


def check_format(name: str, cfg: Any, source: str) -> None:
    """The saved layout must be one this version reads. The settings come from
    the config (a user may edit a saved pipeline's config.cfg), not from cfg."""
    if not isinstance(cfg, dict):
        raise bad_setting(name, "cfg", source, f"not a JSON object (a {type(cfg).__name__}): not a saved "
                          "ctxembed component's cfg")
    version = cfg.get("format", 1)
    # (Compared by type too: `true` and `1.0` equal 1 in Python, and are no format this version wrote.)
    if type(version) is not int or version not in (1, FORMAT):
        newer = type(version) is int and version > FORMAT
        raise bad_setting(name, "cfg", source, f"format {version!r} " + (
            "was written by a newer spacy-ctxembed" if newer else "is no format spacy-ctxembed writes (edited?)")
            + f"; this one reads 1 and {FORMAT}")


def check_combiner(name: str, encoder: Model, combiner: Model, source: str) -> None:
    """The combiner's weights must fit the encoder and be finite, like the encoder's."""
    xp = combiner.ops.xp
    n_layers = encoder.get_dim("nL")
    n_in, width = combiner.maybe_get_dim("nI"), encoder.maybe_get_dim("nO")
    if combiner.param_names and n_in is not None and width is not None and n_in != width:
        # (A mix trained over another model's layers: thinc would refuse
        # the new width later, naming neither the component nor the cause.)
        raise bad_setting(name, "combiner", source,
                          f"it was saved beside an encoder of width {n_in}, but the loaded model's is {width}: "
                          "put back the model it was saved with, or train the pipeline again")
    expected = {"s": (n_layers,), "gamma": (1,)} if built_as(combiner) == "scalar_mix" else {}
    for param in combiner.param_names:
        if not combiner.has_param(param):
            continue
        value = combiner.get_param(param)
        if param in expected and tuple(value.shape) != expected[param]:
            raise bad_setting(name, "combiner", source, f"weight {param!r} has shape {tuple(value.shape)}, "
                              f"expected {expected[param]} for {n_layers} layers")
        if not bool(xp.isfinite(value).all()):
            raise bad_setting(name, "combiner", source, f"weight {param!r} has non-finite values")


def check_saved_combiner(name: str, combiner: Model, saved: Optional[List[Dict[str, Any]]], source: str) -> None:
    """The saved combiner must be the one the config builds, for as many layers.

    A user may edit the saved pipeline's config.cfg: thinc would load the
    weights into whatever combiner it names (and take the saved node name),
    so a trained mix would be dropped silently, or fail at the first call.
    """
    if not saved:
        return
    names = [node.get("name") if isinstance(node, dict) else None for node in saved]
    current_names = [node.name for node in combiner.walk()]
    if names != current_names:
        was, now = (names[0], current_names[0]) if names[0] != current_names[0] else (names, current_names)
        raise bad_setting(name, "combiner", source,
                          f"it was saved as {was}, but the config's [model.combiner] is {now}: put back "
                          "the combiner it was saved with, or train the pipeline again")
    n_saved, n_current = saved_dim(saved[0], "nL"), combiner.maybe_get_dim("nL")
    if n_saved is not None and n_current is not None and n_saved != n_current:
        # A user edited `layers` in the saved pipeline's config.cfg.
        raise bad_setting(name, "combiner", source,
                          f"it was saved for {n_saved} layer(s), but the config's layers select {n_current}: "
                          "put back the layers it was saved with, or train the pipeline again")


def check_saved_weights(name: str, encoder: Model, saved: Any, path: Path) -> None:
    """The model folder must hold the weights the pipeline was saved with.

    Another model's folder put in its place (of the same shapes, or wider,
    or deeper) would otherwise run under the combiner and the downstream
    weights trained on the saved one, silently, or fail with an error about
    layers or dims that names neither. The fingerprint samples every
    tensor: a swapped or retrained model differs, a few values edited by
    hand may not.
    """
    if not isinstance(saved, str) or saved == saved_weights_fingerprint(encoder):
        return
    raise bad_setting(
        name, "model", str(path / MODEL_DIR),
        f"it holds other weights than this pipeline was saved with (the fingerprint in {str(path / 'cfg')!r}"
        " differs): put back the model folder it was saved with. To embed with another model, make a "
        "component on it (its `name`) and train what listens to it again; to keep these weights on "
        f"purpose, remove {WEIGHTS_KEY!r} from that cfg file{KEPT_ON_PURPOSE}",
    )


def check_saved_options(name: str, encoder: Model, saved: Any, path: Path) -> None:
    """ELMo's options file in the model folder must be the one the pipeline was
    saved with: other clipping, activation or skip connections change every
    vector under the weights (its own and downstream) trained on them, as
    other weights would (`check_saved_weights`)."""
    if not isinstance(saved, str) or saved == saved_options_digest(encoder):
        return
    raise bad_setting(
        name, "model", str(path / MODEL_DIR),
        f"its {OPTIONS_FILE} differs from the one this pipeline was saved with (the digest in "
        f"{str(path / 'cfg')!r} differs), and with it every vector (an edit that changes no value used, 3.0 "
        f"for 3 or a key not read, is refused too): put back the options file it was saved with; to keep "
        f"these options on purpose, remove {OPTIONS_KEY!r} from that cfg file{KEPT_ON_PURPOSE}",
    )


def check_saved_probe(name: str, encoder: Model, saved: Any, path: Path) -> None:
    """A Hugging Face model folder's config.json and tokenizer must do what they did
    when the pipeline was saved (`hf_probe`): another number of attention heads,
    activation, lowercasing or vocabulary changes every vector under the weights
    (its own and downstream) trained on them, as other weights would."""
    if saved is None:
        return
    current = saved_probe(encoder)
    difference = None if current is None else probe_difference(saved, current)
    if difference is None:
        return
    what = ("tokenizer files differ from the ones this pipeline was saved with: they split a probe text "
            "otherwise, or hold another vocabulary" if difference == "tokenizer" else
            f"{CONFIG_FILE} differs from the one this pipeline was saved with: the model computes other "
            "hidden states for a probe text")
    raise bad_setting(
        name, "model", str(path / MODEL_DIR),
        f"its {what} (the record in {str(path / 'cfg')!r}), and every vector with it: put back the files "
        f"it was saved with; to keep them on purpose, remove {PROBE_KEY!r} from that cfg file{KEPT_ON_PURPOSE}",
    )


def v1_saved_layers(name: str, encoder: Model, cfg: Dict[str, Any]) -> Optional[List[int]]:
    """The layers a 0.1 pipeline's combiner was saved for: its cfg kept the
    `layers` setting as written (`-1` for the top), resolved here against
    the model just loaded. None where the cfg is not 0.1's or says nothing."""
    layers = cfg.get("layers") if cfg.get("format", 1) == 1 else None
    if not isinstance(layers, list) or not layers or \
            not all(is_int(i) for i in layers):
        return None
    shim = encoder_shim(encoder)
    if shim is None or not shim.loaded:  # (`exclude`d: nothing to check against)
        return None
    try:
        return list(normalize_layers(name, layers, shim.n_states))
    except SettingError:  # out of the model's range: not these layers, whatever they were
        return list(layers)


def check_saved_layers(name: str, encoder: Model, saved: Any, source: str) -> None:
    """The config's layers must be the ones the combiner was saved for, not just
    as many: mixing weights trained for one layer apply to that layer only.
    A cfg written before the layers were recorded has only the count check."""
    current = selected_layers(encoder)
    if not isinstance(saved, list) or current is None or saved == current:
        return
    raise bad_setting(name, "combiner", source,
                      f"it was saved for layers {saved}, but the config's layers select {current} of the "
                      "loaded model: put back the layers (or the model) it was saved with, or train the "
                      "pipeline again")


def load_failure(what: str, err: Exception) -> str:
    """Why saved weights did not load, for the error. Thinc refuses weights of
    other dimensions ("Attempt to change dimension 'nO' ... from 32 to 48"):
    they are ctxembed's, of a model of another width or layer count."""
    if "Attempt to change dimension" in str(err):
        return (f"saved for a model of other dimensions than this component's config builds ({err}); load it "
                "into a component with the config it was saved with")
    return f"not {what} ({type(err).__name__}: {err})"


def saved_nodes(data: bytes) -> Optional[List[Dict[str, Any]]]:
    """The nodes (name, dims) of a Thinc model saved with `to_bytes`; None where
    the bytes are not such a model (from_bytes reports that itself)."""
    try:
        nodes = srsly.msgpack_loads(data)["nodes"]
    except Exception:  # noqa: BLE001
        return None
    return nodes if isinstance(nodes, list) else None


def saved_dim(node: Any, name: str) -> Optional[int]:
    """Dimension `name` of a saved node; None where it does not say."""
    dims = node.get("dims") if isinstance(node, dict) else None
    value = dims.get(name) if isinstance(dims, dict) else None
    return value if is_int(value) else None


def is_v1_bytes(msg: Any) -> bool:
    """Whether `msg` is what spacy-ctxembed 0.1's `to_bytes` wrote: its `to_disk`
    files, {"cfg": ..., "combiner": ..., "model/...": ...}, each as bytes."""
    return (isinstance(msg, dict) and bool(msg) and "model" not in msg
            and all(isinstance(k, str) and isinstance(v, bytes) for k, v in msg.items())
            and all(k in ("cfg", "combiner") or k.startswith(MODEL_DIR + "/") for k in msg))


def warn_if_source_edited(name: str, encoder: Model, saved: Any, path: Optional[Path] = None) -> None:
    """Say that a config setting naming the encoder's files (`name`, ELMo's
    files) differs from the one the pipeline (at `path`; None: the component's
    bytes) was saved with: the load used the saved model, not it (a fallback
    would be another model), and only `nlp.initialize()` would read it."""
    shim = encoder_shim(encoder)
    if not isinstance(saved, dict) or shim is None:
        return
    changed = [k for k in SOURCE_SETTINGS if k in saved and k in shim.settings and saved[k] != shim.settings[k]]
    if changed:
        now = ", ".join(f"{k} = {shim.settings[k]!r}" for k in changed)
        was = ", ".join(f"{k} = {saved[k]!r}" for k in changed)
        where, own = (("the serialized component", "the model it holds") if path is None
                      else (f"the pipeline at {str(path)!r}", "its own model folder"))
        warnings.warn(f"[{name}] {now}: {where} was saved with {was}; it loaded {own} (its weights are the "
                      f"saved ones, as always), and only nlp.initialize() would load {now}", stacklevel=4)
