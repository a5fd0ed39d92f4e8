"""Factory `ctxembed_elmo`: contextual vectors from ELMo's released weight files."""
from typing import List

from spacy.language import Language
from thinc.api import Config

from ..types import EmbedderModel
from .embedder import ContextualEmbedder

DEFAULT_CONFIG_STR = """
[ctxembed_elmo]
layers = [0, 1, 2]
combine = "mean"
store_layers = false
set_doc_tensor = true
cache_mb = 0

[ctxembed_elmo.model]
@architectures = "spacy-ctxembed.ElmoEmbedder.v1"
options_file = null
weight_file = null
max_batch_items = 4096
"""
DEFAULT_CONFIG = Config().from_str(DEFAULT_CONFIG_STR)["ctxembed_elmo"]


@Language.factory("ctxembed_elmo", default_config=DEFAULT_CONFIG)
def make_elmo_embedder(
    nlp: Language,
    name: str,
    model: EmbedderModel,
    layers: List[int],
    combine: str,
    store_layers: bool,
    set_doc_tensor: bool,
    cache_mb: int,
) -> ContextualEmbedder:
    # ELMo's vectors are per word already: there is no pooling setting.
    return ContextualEmbedder(
        nlp.vocab,
        model,
        name,
        factory="ctxembed_elmo",
        pooling=None,
        layers=layers,
        combine=combine,
        store_layers=store_layers,
        set_doc_tensor=set_doc_tensor,
        cache_mb=cache_mb,
    )
