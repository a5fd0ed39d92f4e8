"""The factories `ctxembed_bert`, `ctxembed_elmo` and `ctxembed_from_trf`.

Each is the same component over a different encoder; the default config
shows the whole chain. `pooling`, `layers` and `combine` at the component
level are the v1 settings: they are read only for a pipeline saved with a
v1 architecture (`BertEmbedder.v1`, ...), and upgrade it to the v2 chain.
"""
from typing import List, Optional

from spacy.language import Language
from thinc.api import Config

from ..errors import bad_setting
from ..models.legacy import is_v1, upgrade
from ..models.trf_pooler import TRF_DATA
from ..types import EmbedderModel
from .component import ContextualEmbedder

#: The factories of this package (each one a contextual embedder).
CONTEXTUAL_FACTORIES = ("ctxembed_bert", "ctxembed_elmo", "ctxembed_from_trf")

#: What every factory writes; `nlp.analyze_pipes()` shows it.
ASSIGNS = ("doc._.ctx_outputs", "doc._.ctx_vectors", "doc._.ctx_layers", "doc.tensor")

BERT_DEFAULT_CONFIG = """
[ctxembed_bert]
store_layers = false
set_doc_tensor = true
primary = true
cache_mb = 0
encoder_lr_scale = 1.0

[ctxembed_bert.model]
@architectures = "spacy-ctxembed.Embedder.v2"

[ctxembed_bert.model.encoder]
@architectures = "spacy-ctxembed.BertEncoder.v2"
name = null
layers = [-1]
pooling = "mean"
window = null
stride = null
max_batch_items = null
precision = "fp32"
trainable = true

[ctxembed_bert.model.combiner]
@layers = "spacy-ctxembed.MeanLayers.v1"
"""

ELMO_DEFAULT_CONFIG = """
[ctxembed_elmo]
store_layers = false
set_doc_tensor = true
primary = true
cache_mb = 0
encoder_lr_scale = 1.0

[ctxembed_elmo.model]
@architectures = "spacy-ctxembed.Embedder.v2"

[ctxembed_elmo.model.encoder]
@architectures = "spacy-ctxembed.ElmoEncoder.v3"
options_file = null
weight_file = null
layers = [0, 1, 2]
max_batch_items = 4096
trainable = false
compile = false

[ctxembed_elmo.model.combiner]
@layers = "spacy-ctxembed.MeanLayers.v1"
"""

TRF_DEFAULT_CONFIG = """
[ctxembed_from_trf]
store_layers = false
set_doc_tensor = true
primary = true

[ctxembed_from_trf.model]
@architectures = "spacy-ctxembed.Embedder.v2"

[ctxembed_from_trf.model.encoder]
@architectures = "spacy-ctxembed.TrfEncoder.v2"
layers = [-1]
pooling = "mean"

[ctxembed_from_trf.model.combiner]
@layers = "spacy-ctxembed.MeanLayers.v1"
"""


def _default(text: str, factory: str) -> Config:
    return Config().from_str(text)[factory]


@Language.factory("ctxembed_bert", default_config=_default(BERT_DEFAULT_CONFIG, "ctxembed_bert"), assigns=ASSIGNS)
def make_bert_embedder(
    nlp: Language,
    name: str,
    model: EmbedderModel,
    store_layers: bool,
    set_doc_tensor: bool,
    primary: bool,
    cache_mb: int,
    encoder_lr_scale: float = 1.0,
    pooling: Optional[str] = None,
    layers: Optional[List[int]] = None,
    combine: Optional[str] = None,
) -> ContextualEmbedder:
    model = _v2_model(name, model, pooling=pooling, layers=layers, combine=combine)
    return ContextualEmbedder(nlp.vocab, model, name, store_layers=store_layers, set_doc_tensor=set_doc_tensor,
                              primary=primary, cache_mb=cache_mb, encoder_lr_scale=encoder_lr_scale)


@Language.factory("ctxembed_elmo", default_config=_default(ELMO_DEFAULT_CONFIG, "ctxembed_elmo"), assigns=ASSIGNS)
def make_elmo_embedder(
    nlp: Language,
    name: str,
    model: EmbedderModel,
    store_layers: bool,
    set_doc_tensor: bool,
    primary: bool,
    cache_mb: int,
    encoder_lr_scale: float = 1.0,
    layers: Optional[List[int]] = None,
    combine: Optional[str] = None,
) -> ContextualEmbedder:
    model = _v2_model(name, model, pooling=None, layers=layers, combine=combine)
    return ContextualEmbedder(nlp.vocab, model, name, store_layers=store_layers, set_doc_tensor=set_doc_tensor,
                              primary=primary, cache_mb=cache_mb, encoder_lr_scale=encoder_lr_scale)


@Language.factory(
    "ctxembed_from_trf",
    default_config=_default(TRF_DEFAULT_CONFIG, "ctxembed_from_trf"),
    assigns=ASSIGNS,
    requires=[TRF_DATA],
)
def make_trf_pooler(
    nlp: Language,
    name: str,
    model: EmbedderModel,
    store_layers: bool,
    set_doc_tensor: bool,
    primary: bool,
    pooling: Optional[str] = None,
    layers: Optional[List[int]] = None,
    combine: Optional[str] = None,
) -> ContextualEmbedder:
    _require_spacy_transformers(name)
    model = _v2_model(name, model, pooling=pooling, layers=layers, combine=combine)
    return ContextualEmbedder(nlp.vocab, model, name, store_layers=store_layers, set_doc_tensor=set_doc_tensor,
                              primary=primary)


def _v2_model(
    name: str, model: EmbedderModel, *, pooling: Optional[str], layers: Optional[List[int]], combine: Optional[str]
) -> EmbedderModel:
    if is_v1(model):
        return upgrade(name, model, layers=layers, pooling=pooling, combine=combine)
    for setting, value in (("pooling", pooling), ("layers", layers), ("combine", combine)):
        if value is not None:
            where = "[model.combiner]" if setting == "combine" else "[model.encoder]"
            raise bad_setting(name, setting, value,
                              f"a v1 component setting; with the v2 model set it in the component's {where} block")
    return model


def _require_spacy_transformers(name: str) -> None:
    try:
        import spacy_transformers  # noqa: F401
    except ImportError:
        raise ImportError(
            f"[{name}] ctxembed_from_trf reads spacy-transformers' doc._.trf_data, and spacy-transformers "
            "is not installed: pip install 'spacy-ctxembed[trf]'"
        ) from None
