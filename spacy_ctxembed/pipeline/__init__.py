"""The pipeline component and its factories: `ctxembed_bert`, `ctxembed_elmo`, `ctxembed_from_trf`."""
from .component import ContextualEmbedder
from .factories import make_bert_embedder, make_elmo_embedder, make_trf_pooler

__all__ = ["ContextualEmbedder", "make_bert_embedder", "make_elmo_embedder", "make_trf_pooler"]
