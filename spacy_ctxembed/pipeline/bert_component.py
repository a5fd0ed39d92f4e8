"""Factory `ctxembed_bert`: contextual vectors from a BERT-family encoder."""
from typing import List

from spacy.language import Language
from thinc.api import Config

from ..types import EmbedderModel
from .embedder import ContextualEmbedder

DEFAULT_CONFIG_STR = """
[ctxembed_bert]
pooling = "mean"
layers = [-1]
combine = "mean"
store_layers = false
set_doc_tensor = true
cache_mb = 0

[ctxembed_bert.model]
@architectures = "spacy-ctxembed.BertEmbedder.v1"
name = null
window = null
stride = null
max_batch_items = 4096
precision = "fp32"
"""
DEFAULT_CONFIG = Config().from_str(DEFAULT_CONFIG_STR)["ctxembed_bert"]


@Language.factory("ctxembed_bert", default_config=DEFAULT_CONFIG)
def make_bert_embedder(
    nlp: Language,
    name: str,
    model: EmbedderModel,
    pooling: str,
    layers: List[int],
    combine: str,
    store_layers: bool,
    set_doc_tensor: bool,
    cache_mb: int,
) -> ContextualEmbedder:
    return ContextualEmbedder(
        nlp.vocab,
        model,
        name,
        factory="ctxembed_bert",
        pooling=pooling,
        layers=layers,
        combine=combine,
        store_layers=store_layers,
        set_doc_tensor=set_doc_tensor,
        cache_mb=cache_mb,
    )
