"""spacy-ctxembed: contextual token vectors (BERT-family, ELMo) for spaCy v3."""
from . import layers, models  # noqa: F401  (registers the architectures)
from .about import __version__
from .embedded import iter_docs, load_npy
from .outputs import install_extensions, restore_vectors, span_as_doc
from .pipeline import ContextualEmbedder

__all__ = [
    "ContextualEmbedder", "__version__", "install_extensions", "iter_docs", "load_npy", "restore_vectors",
    "span_as_doc",
]
