"""The released v1 architectures, so that pipelines saved by version 0.1 keep loading.

In v1 the layers, pooling and combiner were component settings and the model
was only the encoder. A v1 architecture now returns a placeholder holding its
own settings; the factory upgrades it with the component's v1 settings into
the v2 chain (`upgrade`), which gives identical vectors. v1 embedders were
frozen, and stay so.
"""
import inspect
from typing import Any, Dict, List, Optional

from spacy.util import registry
from thinc.api import Model

from ..errors import bad_setting, check_choice
from ..types import COMBINE_MODES, EmbedderModel

V1_PLACEHOLDER = "ctxembed-v1-embedder"
#: The component-level defaults of v1, per model family.
V1_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "bert": {"layers": [-1], "pooling": "mean", "combine": "mean"},
    "elmo": {"layers": [0, 1, 2], "pooling": None, "combine": "mean"},
    "trf": {"layers": [-1], "pooling": "mean", "combine": "mean"},
}


def _placeholder(family: str, settings: Dict[str, Any]) -> Model:
    return Model(V1_PLACEHOLDER, _not_upgraded, attrs={"family": family, "settings": settings})


def _not_upgraded(model: Model, X, is_train: bool):
    raise ValueError("a v1 embedder architecture is only usable as the model of a ctxembed component")


@registry.architectures("spacy-ctxembed.BertEmbedder.v1")
def BertEmbedder(
    *,
    name: Optional[str] = None,
    window: Optional[int] = None,
    stride: Optional[int] = None,
    max_batch_items: int = 4096,
    precision: str = "fp32",
) -> Model:
    return _placeholder("bert", {"name": name, "window": window, "stride": stride,
                                 "max_batch_items": max_batch_items, "precision": precision})


@registry.architectures("spacy-ctxembed.ElmoEmbedder.v1")
def ElmoEmbedder(
    *, options_file: Optional[str] = None, weight_file: Optional[str] = None, max_batch_items: int = 4096
) -> Model:
    return _placeholder("elmo", {"options_file": options_file, "weight_file": weight_file,
                                 "max_batch_items": max_batch_items})


@registry.architectures("spacy-ctxembed.TrfPooler.v1")
def TrfPooler() -> Model:
    return _placeholder("trf", {})


#: The v1 architectures by registry name, with their family.
V1_ARCHITECTURES = {"spacy-ctxembed.BertEmbedder.v1": ("bert", BertEmbedder),
                    "spacy-ctxembed.ElmoEmbedder.v1": ("elmo", ElmoEmbedder),
                    "spacy-ctxembed.TrfPooler.v1": ("trf", TrfPooler)}
#: The model attr that holds the component's v1 settings, resolved (`upgrade`).
V1_SETTINGS = "v1_settings"


def is_v1(model: Model) -> bool:
    return model.name == V1_PLACEHOLDER


def upgrade(
    component: str, model: Model, *, layers: Optional[List[int]], pooling: Optional[str], combine: Optional[str]
) -> EmbedderModel:
    """The v2 chain equal to a v1 model plus its component's v1 settings: the
    model that `upgrade_cfg`'s block builds."""
    family = model.attrs["family"]
    given = {"layers": layers, "pooling": pooling, "combine": combine}
    v1 = {key: V1_DEFAULTS[family][key] if value is None else value for key, value in given.items()}
    if not isinstance(v1["layers"], list) or not v1["layers"]:
        raise bad_setting(component, "layers", v1["layers"], "expected a non-empty list of integers")
    check_choice(component, "combine", v1["combine"], COMBINE_MODES)
    upgraded = registry.resolve({"model": _v2_block(family, model.attrs["settings"], v1)}, validate=False)["model"]
    # What `upgrade_cfg` needs besides the v1 model block, which is all that
    # spaCy's replace_listeners hands the component's hook.
    upgraded.attrs[V1_SETTINGS] = v1
    return upgraded


def upgrade_cfg(model_cfg: Dict[str, Any], v1: Dict[str, Any]) -> Dict[str, Any]:
    """The v2 config of `upgrade`: a v1 model block, with the component's v1
    settings (`V1_SETTINGS`, defaults resolved), as the Embedder.v2 block that
    builds the same chain. What replace_listeners writes for a copy of a v1
    embedder: the v1 block alone would build no model there."""
    family, architecture = V1_ARCHITECTURES[model_cfg["@architectures"]]
    # The v1 architecture's own defaults for what the block leaves out (v2's differ).
    defaults = {name: p.default for name, p in inspect.signature(architecture).parameters.items()}
    return _v2_block(family, {**defaults, **{k: v for k, v in model_cfg.items() if k != "@architectures"}}, v1)


#: The v2 combiner of each v1 `combine` setting.
_COMBINERS = {"mean": "spacy-ctxembed.MeanLayers.v1", "concat": "spacy-ctxembed.ConcatLayers.v1",
              "scalar_mix": "spacy-ctxembed.ScalarMix.v1"}


def _v2_block(family: str, settings: Dict[str, Any], v1: Dict[str, Any]) -> Dict[str, Any]:
    """The Embedder.v2 block of a v1 `family` model with its architecture's
    `settings` (all of them) and its component's `v1` settings: frozen, as v1 was."""
    layers = list(v1["layers"])
    if family == "bert":
        encoder = {"@architectures": "spacy-ctxembed.BertEncoder.v2", **settings, "layers": layers,
                   "pooling": v1["pooling"], "trainable": False}
    elif family == "elmo":
        encoder = {"@architectures": "spacy-ctxembed.ElmoEncoder.v3", **settings, "layers": layers,
                   "trainable": False}
    else:
        encoder = {"@architectures": "spacy-ctxembed.TrfEncoder.v2", "layers": layers, "pooling": v1["pooling"]}
    combiner: Dict[str, Any] = {"@layers": _COMBINERS[v1["combine"]]}
    if v1["combine"] == "scalar_mix":
        combiner["n_layers"] = len(layers)
    return {"@architectures": "spacy-ctxembed.Embedder.v2", "encoder": encoder, "combiner": combiner}
