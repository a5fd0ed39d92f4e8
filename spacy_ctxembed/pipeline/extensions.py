"""Doc extensions and the user hooks that give tokens, spans and docs their vectors.

The hooks are module-level functions, so docs that carry them pickle. A token
"has a vector" when its row of `doc._.ctx_vectors` is not all zero: tokens
that no wordpiece covers (whitespace, characters the tokenizer drops) get a
zero row. A span's or doc's vector is the mean of its tokens that have one.
"""
from typing import Optional, Union

from spacy.tokens import Doc, Span, Token
from thinc.api import get_array_module

VECTORS = "ctx_vectors"
LAYERS = "ctx_layers"


def install_extensions() -> None:
    """Register `doc._.ctx_vectors` and `doc._.ctx_layers` (once)."""
    for name in (VECTORS, LAYERS):
        if not Doc.has_extension(name):
            Doc.set_extension(name, default=None)


def restore_vectors(doc: Doc) -> Doc:
    """Re-attach `Token.vector` & co. to a doc whose hooks were not serialized.

    `Doc.to_bytes`, `DocBin` and `nlp.pipe(n_process=...)` keep
    `doc._.ctx_vectors` (in user data) but drop user hooks. After
    `docs = [restore_vectors(d) for d in doc_bin.get_docs(nlp.vocab)]`
    the docs behave as when they left the pipeline.
    """
    install_extensions()
    if doc._.get(VECTORS) is not None:
        set_vector_hooks(doc)
    return doc


def set_vector_hooks(doc: Doc) -> None:
    for hooks in (doc.user_hooks, doc.user_span_hooks, doc.user_token_hooks):
        hooks["similarity"] = similarity
    doc.user_hooks["vector"] = doc_vector
    doc.user_hooks["has_vector"] = doc_has_vector
    doc.user_span_hooks["vector"] = span_vector
    doc.user_span_hooks["has_vector"] = span_has_vector
    doc.user_token_hooks["vector"] = token_vector
    doc.user_token_hooks["has_vector"] = token_has_vector


def token_vector(token: Token):
    return token.doc._.get(VECTORS)[token.i]


def token_has_vector(token: Token) -> bool:
    return bool(token_vector(token).any())


def span_vector(span: Span):
    return _mean_of_covered(span.doc._.get(VECTORS)[span.start : span.end])


def span_has_vector(span: Span) -> bool:
    return bool(span.doc._.get(VECTORS)[span.start : span.end].any())


def doc_vector(doc: Doc):
    return _mean_of_covered(doc._.get(VECTORS))


def doc_has_vector(doc: Doc) -> bool:
    return bool(doc._.get(VECTORS).any())


def similarity(a: Union[Doc, Span, Token], b: Union[Doc, Span, Token]) -> float:
    """Cosine similarity of the two vectors; 0.0 where either has none."""
    u, v = a.vector, b.vector
    xp = get_array_module(u)
    norms = float(xp.linalg.norm(u)) * float(xp.linalg.norm(v))
    if norms == 0.0:
        return 0.0
    return float(xp.dot(u, xp.asarray(v))) / norms


def _mean_of_covered(vectors):
    xp = get_array_module(vectors)
    covered = vectors.any(axis=1)
    n_covered: Optional[int] = int(covered.sum())
    if not n_covered:
        return xp.zeros((vectors.shape[1],), dtype=vectors.dtype)
    return vectors[covered].mean(axis=0)
