"""`doc.tensor`: the primary vectors, but only while no other component owns it.

spaCy's tok2vec sets `doc.tensor` and its listeners read it, and spaCy's own
retokenizer, `as_doc` and `from_docs` rewrite it by rules of their own; so a
ctxembed component replaces the tensor only while it is the array a ctxembed
component set, or what spaCy made of that (`tensor_source`).
"""
import warnings
from typing import Any, Dict, List, Optional, Tuple, cast

import numpy
from spacy.tokens import Doc, _retokenize
from thinc.api import get_array_module

from ..alignment import text_length
from .placement import within
from .store import concat, to_numpy


def set_tensor(doc: Doc, name: str, vectors, *, ours: bool) -> bool:
    """Set `doc.tensor` to the vectors, unless another component set it:
    spaCy's tok2vec does, and its listeners read it when they predict, so
    replacing it under them would feed the tagger or parser other features.
    Returns whether the doc's tensor is now a ctxembed component's."""
    if _has_tensor(doc) and not ours:
        warnings.warn(
            f"[{name}] set_doc_tensor: doc.tensor already holds another component's output (spaCy's tok2vec "
            "sets it, and its listeners read it), so it is left as it is; the vectors are in doc._.ctx_vectors "
            "and token.vector. Put this component before that one, or set set_doc_tensor = false.",
            stacklevel=3,
        )
        return False
    # spaCy's stub says numpy; on GPU this is cupy, as with spaCy's tok2vec.
    doc.tensor = vectors if _retokenizer_copies(vectors) else vectors.copy()
    return True


def _has_tensor(doc: Doc) -> bool:
    """Whether `doc.tensor` holds anything (spaCy's `doc_cleaner` sets it to None)."""
    return doc.tensor is not None and bool(doc.tensor.size)


def _retokenizer_copies(tensor) -> bool:
    """Whether spaCy's retokenizer makes a new array of a doc tensor like this one
    when a merge drops rows (numpy), or shifts its rows in place (cupy): there
    `doc.tensor` must not be the stored vectors, or a merge would move them
    under their tokens. (Asked as the retokenizer asks, by its array module.)"""
    return getattr(_retokenize, "get_array_module", get_array_module)(tensor) is numpy


def tensor_source(doc: Doc, stores: List[Tuple[tuple, Dict[str, Any]]]) -> Optional[str]:
    """The name of the output whose vectors `doc.tensor` is, if a ctxembed
    component set it (then it may be replaced); None where another component
    did, or none.

    A store names the output that set the tensor, but the tensor may have been
    replaced since (spaCy's tok2vec, after the component): it counts only
    while it is that array, or what spaCy made of it (`_tensor_follows`).
    Stores written by earlier versions name none (or say True): there it is
    the primary output's.
    """
    if not _has_tensor(doc):
        return None
    tensor = doc.tensor
    names = {_tensor_output_name(store) for _, store in stores}
    name = names.pop() if len(names) == 1 else None
    if name is None:  # (parts of a joined doc whose tensors came from different outputs: not known)
        return None
    parts = [(key[2], store["outputs"].get(name)) for key, store in stores]
    if any(output is None for _, output in parts):
        return None
    if len(parts) == 1 and parts[0][1]["vectors"] is tensor:  # the array it set: no copy, no comparison
        return name
    parts = cast(List[Tuple[int, Dict[str, Any]]], parts)
    # The stored tokens on the doc's characters first: a cut's store is its
    # whole source's, and comparing with all of it made `span_as_doc` of every
    # sentence of a long doc quadratic. Their rows are the tensor's unless
    # spaCy shifted rows (`_tensor_follows`): then all of the rows are asked.
    n_chars = text_length(doc)
    on_doc = [within(part, n_chars) for part in parts]
    if _tensor_follows(doc, on_doc):
        return name
    if all(trimmed is part for trimmed, part in zip(on_doc, parts)):  # (`within` left all: asked already)
        return None
    return name if _tensor_follows(doc, parts) else None


def _tensor_output_name(store: Dict[str, Any]) -> Optional[str]:
    flag = store.get("tensor_set", True)
    if not flag:
        return None
    return flag if isinstance(flag, str) else store.get("primary")


def _tensor_follows(doc: Doc, parts: List[Tuple[int, Dict[str, Any]]]) -> bool:
    """Whether `doc.tensor` is what spaCy made of the stored vectors through
    as_doc, from_docs, copy, a DocBin or its retokenizer: every row is one of
    them, or zeros. (A merge keeps the last row of the merged tokens; a split
    gives its pieces zero rows, also where a later split puts a token back on
    its own span, and on the host appends zero rows it never uses, which
    `Doc.from_docs` then joins in, shifting the next doc's rows: spaCy's rows
    need not be in their tokens' places, so they are not looked for there.)
    Another component's tensor (spaCy's tok2vec) has rows of its own."""
    tensor = to_numpy(doc.tensor)
    vectors = to_numpy(concat([p["vectors"] for _, p in parts], axis=0, on_host=True))
    if (tensor.ndim != 2 or tensor.shape[1:] != vectors.shape[1:] or tensor.dtype != vectors.dtype
            or len(tensor) < len(doc)):
        return False
    # Rows compared whole, as bytes (one value each).
    row = numpy.dtype((numpy.void, vectors.dtype.itemsize * vectors.shape[1]))
    stored = numpy.ascontiguousarray(vectors).view(row).ravel()
    rows = numpy.ascontiguousarray(tensor).view(row).ravel()
    return bool((~tensor.any(axis=1) | numpy.isin(rows, stored)).all())
