"""Pipeline components: `ctxembed_bert`, `ctxembed_from_trf` (and their shared base)."""
from .bert_component import make_bert_embedder
from .elmo_component import make_elmo_embedder
from .embedder import ContextualEmbedder
from .extensions import install_extensions, restore_vectors
from .trf_component import make_trf_pooler

__all__ = [
    "ContextualEmbedder",
    "install_extensions",
    "make_bert_embedder",
    "make_elmo_embedder",
    "make_trf_pooler",
    "restore_vectors",
]
