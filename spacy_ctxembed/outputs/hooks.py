"""The vector and similarity hooks: `Token.vector`, `Span.vector`, `Doc.vector`, `.similarity()`.

The hooks read the primary output, as the doc's tokens are now (`views`);
similarity compares vectors of one space only. The pointer to the doc's
store (`SOURCE_HOOK`) is set with them, for docs cut from it with `as_doc()`.
"""
import contextlib
import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

from spacy.lexeme import Lexeme
from spacy.tokens import Doc, Span, Token
from thinc.api import get_array_module

from ..alignment import text_length
from ..errors import shortened
from .store import (
    SOURCE_HOOK,
    MissingOutputs,
    doc_stores,
    signature_difference,
    signatures_agree,
    spans_whole,
    to_numpy,
)
from .views import Source, doc_view, embedded_store, unread_cut_error


def set_vector_hooks(doc: Doc, source: Optional[Source] = None) -> None:
    """Set the vector and similarity hooks, and the pointer to the doc's store
    for docs cut from it (`source`: that pointer, where the caller has made it)."""
    # Fresh dicts: span.as_doc() shares the hook dicts of the doc it came
    # from, and must not see this doc's hooks change under it.
    doc.user_hooks = {**doc.user_hooks, **DOC_HOOKS}
    doc.user_span_hooks = {**doc.user_span_hooks, **SPAN_HOOKS}
    doc.user_token_hooks = {**doc.user_token_hooks, **TOKEN_HOOKS}
    set_source_pointer(doc, source)


def set_source_pointer(doc: Doc, source: Optional[Source] = None) -> None:
    """Set (or clear) the pointer to the doc's store that docs cut from it read
    (`span.as_doc()`), alone: a doc with non-primary outputs only has no vector hooks."""
    if source is None:
        stores = doc_stores(doc)
        if len(stores) == 1 and spans_whole(stores[0][0], text_length(doc)):
            source = Source(doc, stores[0][1])
        elif stores:
            # Shifted stores (Doc.from_docs, or a cut with its user data; a
            # joined part's key can even be the whole doc's): a span cut from
            # this doc must read what this doc reads, which only the doc's own
            # view says (which part's tokens count where). So the pointer gets
            # the stored tokens the doc reads, as embedded, as one store (a
            # cut's merge of pieces split here averages the embedded tokens).
            with contextlib.suppress(MissingOutputs):
                view = doc_view(doc)
                if view is not None:
                    source = Source(doc, embedded_store(doc, view, stores))
    # Fresh dicts: the hook dicts may be shared with cuts (as above).
    if source is not None:
        hooks: Dict[str, Any] = {**doc.user_hooks, SOURCE_HOOK: source}
        doc.user_hooks = hooks
    elif stores and SOURCE_HOOK in doc.user_hooks:
        doc.user_hooks = {k: v for k, v in doc.user_hooks.items() if k != SOURCE_HOOK}
    # (Without stores of its own the doc is a plain cut, `span.as_doc()`, that
    # reads its source's store through the pointer it carries, as its cuts do:
    # kept. Removed, the cut had no vectors after `restore_vectors`.)


def token_vector(token: Token):
    return _primary_vectors(token.doc, token.i)[token.i]


def token_has_vector(token: Token) -> bool:
    return bool(token_vector(token).any())


def span_vector(span: Span):
    return _mean_of_covered(_primary_vectors(span.doc, span.start, span.end)[span.start : span.end])


def span_has_vector(span: Span) -> bool:
    return bool(_primary_vectors(span.doc, span.start, span.end)[span.start : span.end].any())


def doc_vector(doc: Doc):
    return _mean_of_covered(_primary_vectors(doc, 0, len(doc)))


def doc_vector_norm(doc: Doc) -> float:
    vector = doc_vector(doc)
    return float(get_array_module(vector).linalg.norm(vector))


def doc_has_vector(doc: Doc) -> bool:
    return bool(_primary_vectors(doc, 0, len(doc)).any())


def similarity(a: Union[Doc, Span, Token], b: Union[Doc, Span, Token]) -> float:
    """Cosine similarity of the two vectors; 0.0 where either has none.

    Only vectors of one space are compared: two ctxembed vectors must come from
    one model and settings (where both outputs say which), and a ctxembed
    vector is never compared with another kind (static vectors).
    """
    u, v = _vector_or_none(a), _vector_or_none(b)
    if u is None or v is None or not u.size or not v.size:  # one side has no vector at all (as spaCy: 0.0)
        return 0.0
    if type(u) is not type(v):
        # A host doc (from a DocBin, say) and a GPU doc: numpy refuses cupy
        # arrays, so both go to the host (one vector each).
        u, v = to_numpy(u), to_numpy(v)
    if not bool(u.any()) or not bool(v.any()):
        # A vector of zeros is no vector (spaCy's has_vector; its similarity
        # gives 0.0): a whitespace token, or a word without a static vector,
        # of whatever width. Asked before the width, or such a word of a
        # static table of another width was an error where its Lexeme gave 0.0.
        return 0.0
    if u.shape != v.shape:
        raise ValueError(
            f"similarity: {describe(a)} and {describe(b)} have vectors of different widths ({u.shape[-1]} and "
            f"{v.shape[-1]}), so they come from different models (a ctxembed component's and static "
            "vectors, or two ctxembed models); compare vectors of one model"
        )
    _check_one_space(a, b)
    cosine = _cosine(u, v)
    if math.isnan(cosine):
        # (Clamped, nan read as -1.0: the most dissimilar pair, from vectors that are not numbers.)
        raise ValueError(
            f"similarity: {describe(b if math.isfinite(float(u.sum())) else a)} has a vector with nan "
            "or inf values, which no ctxembed component writes (its stored outputs were edited by hand?); "
            "run the component on its doc again"
        )
    return min(1.0, max(-1.0, cosine))


def _cosine(u, v) -> float:
    """The cosine of two non-zero vectors, in float64 (the caller clamps it to
    [-1, 1]: in float32 a vector's cosine with itself came out as 1.00000004,
    which `math.acos` refuses; spaCy's own gives 1.0 for the same word)."""
    xp = get_array_module(u)
    u, v = u.astype("float64"), v.astype("float64")
    return float(xp.dot(u, v)) / (float(xp.linalg.norm(u)) * float(xp.linalg.norm(v)))


def _vector_or_none(item: Any):
    """`item.vector`, or None for a Lexeme without a vector: in a vocab without
    vectors its `.vector` raises spaCy's E010 ("Word vectors set to length
    0"), which blames a missing model. It has no vector, as a token without
    one, and spaCy's own similarity of two words gives 0.0."""
    if isinstance(item, Lexeme) and not item.has_vector:
        return None
    return item.vector


def _check_one_space(a: Any, b: Any) -> None:
    """Vectors of the same width may still come from different spaces: a
    ctxembed model's and static vectors, or two ctxembed models (other
    layers, pooling, model). Their cosine would be a number without meaning."""
    (ours_a, signature_a), (ours_b, signature_b) = _vector_source(a), _vector_source(b)
    if ours_a != ours_b:  # (both have a vector: `similarity` gave 0.0 for one of zeros)
        ours, other = (a, b) if ours_a else (b, a)
        raise ValueError(
            f"similarity: {describe(ours)} has a ctxembed component's contextual vector, but {describe(other)} "
            "has a vector from elsewhere (static vectors of the vocab, or another component's): they come "
            "from different spaces; compare vectors of one model (restore_vectors re-attaches a stored "
            "doc's ctxembed vectors)"
        )
    elif ours_a and signature_a and signature_b and not signatures_agree([signature_a, signature_b]):
        raise ValueError(
            f"similarity: {describe(a)} and {describe(b)} have vectors of different ctxembed models "
            f"({signature_difference(signature_a, signature_b)}); compare vectors of one model"
        )


def _vector_source(item: Any) -> Tuple[bool, Optional[str]]:
    """Whether `item.vector` comes from the ctxembed hooks, and the signature of
    the output it is read from (None: not known)."""
    doc = item if isinstance(item, Doc) else getattr(item, "doc", None)
    if not isinstance(doc, Doc):  # a Lexeme: a static vector
        return False, None
    hooks, hook = ((doc.user_hooks, doc_vector) if isinstance(item, Doc)
                   else (doc.user_span_hooks, span_vector) if isinstance(item, Span)
                   else (doc.user_token_hooks, token_vector))
    if hooks.get("vector") is not hook:
        return False, None
    view = doc_view(doc)
    if view is None or view.primary is None:
        return True, None
    return True, view.signatures.get(view.primary)


def _primary_vectors(doc: Doc, start: int, end: Optional[int] = None):
    """The primary vectors of `doc`, valid at least for rows start..end."""
    end = start + 1 if end is None else end
    view = doc_view(doc, start, end)
    output = None if view is None else view.primary_output()
    if output is None:
        raise unread_cut_error(doc)
    return output["vectors"]


def _mean_of_covered(vectors):
    xp = get_array_module(vectors)
    covered = vectors.any(axis=1)
    if not int(covered.sum()):
        return xp.zeros((vectors.shape[1],), dtype=vectors.dtype)
    return vectors[covered].mean(axis=0)


def describe(item: Any) -> str:
    text = str(getattr(item, "text", item))
    return f"{type(item).__name__} {shortened(text, 40)!r}"


# The hooks `set_vector_hooks` sets. spaCy caches a doc's norm on first use;
# retokenizing or a new output changes it, so the doc's norm is a hook too.
# (Only the doc's: spaCy's Span.vector_norm would return a span hook's
# vector, and tokens compute theirs from the vector hook.)
_Hooks = Dict[str, Callable[..., Any]]


DOC_HOOKS: _Hooks = {"similarity": similarity, "vector": doc_vector, "has_vector": doc_has_vector,
                     "vector_norm": doc_vector_norm}


SPAN_HOOKS: _Hooks = {"similarity": similarity, "vector": span_vector, "has_vector": span_has_vector}


TOKEN_HOOKS: _Hooks = {"similarity": similarity, "vector": token_vector, "has_vector": token_has_vector}
