"""Factory `ctxembed_from_trf`: vectors from an existing spacy-transformers pipeline.

It pools the upstream `transformer` component's `doc._.trf_data` into the same
outputs as `ctxembed_bert` (`doc._.ctx_vectors`, `doc.tensor`, `Token.vector`,
...), so spacy-transformers users get token vectors without running the model
twice.
"""
from typing import List

from spacy.language import Language
from thinc.api import Config

from ..types import EmbedderModel
from .embedder import ContextualEmbedder

DEFAULT_CONFIG_STR = """
[ctxembed_from_trf]
pooling = "mean"
layers = [-1]
combine = "mean"
store_layers = false
set_doc_tensor = true

[ctxembed_from_trf.model]
@architectures = "spacy-ctxembed.TrfPooler.v1"
"""
DEFAULT_CONFIG = Config().from_str(DEFAULT_CONFIG_STR)["ctxembed_from_trf"]


@Language.factory("ctxembed_from_trf", default_config=DEFAULT_CONFIG, requires=["doc._.trf_data"])
def make_trf_pooler(
    nlp: Language,
    name: str,
    model: EmbedderModel,
    pooling: str,
    layers: List[int],
    combine: str,
    store_layers: bool,
    set_doc_tensor: bool,
) -> ContextualEmbedder:
    return ContextualEmbedder(
        nlp.vocab,
        model,
        name,
        factory="ctxembed_from_trf",
        pooling=pooling,
        layers=layers,
        combine=combine,
        store_layers=store_layers,
        set_doc_tensor=set_doc_tensor,
    )
