"""The models: encoders (docs -> per-doc layer stacks), the embedder chain, the listeners."""
from .bert import BertEncoder
from .elmo import ElmoEncoder
from .embedder import Embedder
from .heads import ContextualListener, ContextualListenerV1, ContextualTok2Vec
from .legacy import BertEmbedder, ElmoEmbedder, TrfPooler
from .trf_pooler import TrfEncoder

__all__ = [
    "BertEmbedder",
    "BertEncoder",
    "ContextualListener",
    "ContextualListenerV1",
    "ContextualTok2Vec",
    "ElmoEmbedder",
    "ElmoEncoder",
    "Embedder",
    "TrfEncoder",
    "TrfPooler",
]
