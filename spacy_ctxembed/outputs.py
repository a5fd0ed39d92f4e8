"""Where the components keep their outputs on a doc, and how they follow its tokens.

Storage. Each component's output is kept with the character spans of the
tokens it was computed for, in one dict under the user-data key
``("._.", "ctxembed:<id>", start_char, end_char)``: the key spaCy uses for a
span extension of the whole doc. spaCy shifts such keys itself in
`Span.as_doc(copy_user_data=True)` and `Doc.from_docs`, and `doc.copy()`,
pickling, `Doc.to_bytes` and `DocBin(store_user_data=True)` keep them, so the
outputs always know which characters their rows belong to. The id is new
with each store written: `Doc.from_docs` gathers the parts' keys in one dict,
and two parts whose shifted spans are equal (cuts of two sources of one
length, or of one doc annotated again between the cuts) would otherwise
share a key, one store silently replacing the other and its tokens reading
the other's rows. (Stores saved before had the name "ctxembed": still read.)

Reading. `doc._.ctx_outputs`, `doc._.ctx_vectors`, `doc._.ctx_layers` and the
vector hooks are computed from the store for the doc's tokens *now*, by
character overlap with the tokens the output was computed for:

- a token with the same span as an embedded token gets exactly its row;
- a token made by merging gets the mean of the rows of the embedded tokens
  it covers (of those that have a vector);
- a token made by splitting gets the row of the token it came from;
- a token that covers embedded tokens, none with a vector, gets zeros and
  `has_vector == False`;
- a token that covers no embedded token at all (a part of a `Doc.from_docs`
  doc whose outputs were not in its user data) has no output: reading the
  primary vectors (and `doc._.ctx_outputs`, where no output covers it) is
  an error, never a silent "no vector".

So retokenizing never shifts a vector onto another token, and every output
has one row per token. Each output also records what made it (its
`signature`: the model and settings, from the component): joined docs whose
outputs of one name come from different models (or have different widths)
cannot be read as one output, and `similarity` compares vectors of one
space only.

`doc.tensor` is spaCy's own: its retokenizer resizes it by its own rule (a
merge keeps the last row of the merged tokens, a split zeros its pieces). A
ctxembed component replaces it only while it is the array a ctxembed
component set, or what spaCy made of that (`_tensor_source`): another
component's (spaCy's tok2vec, whose listeners read it) is left alone.

`Span.as_doc()` without `copy_user_data` shares the source's hooks but not
its user data; the hooks then find the source's store through the hooks
dict, and place the new doc's text in it. A non-primary component keeps
that pointer up to date and leaves the other hooks alone.
"""
import contextlib
import copy
import hashlib
import itertools
import os
import threading
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, cast

import numpy
from spacy.attrs import IDX, LENGTH, ORTH, SPACY
from spacy.strings import StringStore, get_string_id
from spacy.tokens import Doc, Span, Token, _retokenize
from thinc.api import get_array_module

from .alignment import align_pieces, partly_uncovered, text_length, token_char_spans
from .forksafe import ProcessLocal

STORE = "ctxembed"
#: The user-hooks entry that points to the store of the doc the hooks were set on.
SOURCE_HOOK = "spacy_ctxembed.source"
OUTPUTS, VECTORS, LAYERS = "ctx_outputs", "ctx_vectors", "ctx_layers"
#: The v1 user-data keys, read by `restore_vectors` for old DocBin files.
_V1_VECTORS = ("._.", VECTORS, None, None)
_V1_LAYERS = ("._.", LAYERS, None, None)


class MissingOutputs(ValueError):
    """A doc has the ctxembed hooks but no outputs that can be placed."""


class UnplacedOutputs(MissingOutputs):
    """A joined doc's outputs cannot be placed on its characters (see `_own_regions`)."""


def install_extensions() -> None:
    """Register `doc._.ctx_outputs`, `doc._.ctx_vectors` and `doc._.ctx_layers` (once)."""
    accessors = {OUTPUTS: (get_outputs, drop_outputs), VECTORS: (get_vectors, _refuse_vectors),
                 LAYERS: (get_layers, drop_layers)}
    for name, (getter, setter) in accessors.items():
        if not Doc.has_extension(name):
            Doc.set_extension(name, getter=getter, setter=setter)


# Dropping outputs (spaCy's `doc_cleaner`, before docs are saved) -----------
#
# Without setters, `doc._.ctx_outputs = None` wrote a user-data key of its own
# that nothing reads, and the outputs stayed: `doc_cleaner` did nothing, silently.


def drop_outputs(doc: Doc, value: Any = None) -> None:
    """`doc._.ctx_outputs = None`: drop every ctxembed output from `doc`: the
    stores in its user data, the vector hooks, the pointer to the doc it was
    cut from, and `doc.tensor` where a ctxembed component set it."""
    _check_dropped(OUTPUTS, value)
    stores = _stores(doc)
    # A cut reads its source's store, and has its tensor's rows: wherever its text is in the source.
    placements = [stores] if stores else [[store] for store in _source_placements(doc)]
    if any(_tensor_source(doc, placed) is not None for placed in placements):
        doc.tensor = numpy.zeros((0,), dtype="float32")  # (as a new Doc has it)
    if SOURCE_HOOK in doc.user_hooks:
        # spaCy's as_doc keeps the span's vector and norm (ours) as the cut's
        # own: forgotten, so that the cut reads as a doc without outputs.
        cast(Any, doc).vector = cast(Any, doc).vector_norm = None
    for key, _ in stores:
        del _data(doc)[key]
    for name in (_V1_VECTORS, _V1_LAYERS):
        _data(doc).pop(name, None)
    # Fresh dicts, ours only removed: span.as_doc() shares the source's hook dicts.
    doc.user_hooks = {k: v for k, v in doc.user_hooks.items() if k != SOURCE_HOOK and _DOC_HOOKS.get(k) is not v}
    doc.user_span_hooks = {k: v for k, v in doc.user_span_hooks.items() if _SPAN_HOOKS.get(k) is not v}
    doc.user_token_hooks = {k: v for k, v in doc.user_token_hooks.items() if _TOKEN_HOOKS.get(k) is not v}


def drop_layers(doc: Doc, value: Any = None) -> None:
    """`doc._.ctx_layers = None`: drop the stored layers of every output
    (`store_layers = true`), keeping the vectors."""
    _check_dropped(LAYERS, value)
    for key, store in _stores(doc):  # new dicts: as_doc and from_docs share stores shallowly
        _data(doc)[key] = _without_layers(store)
    _data(doc).pop(_V1_LAYERS, None)
    source = doc.user_hooks.get(SOURCE_HOOK)
    if isinstance(source, _Source):  # a cut that reads its source's store
        own = copy.copy(source)
        own.store = _without_layers(source.store)
        doc.user_hooks = {**doc.user_hooks, SOURCE_HOOK: own}


def _without_layers(store: Dict[str, Any]) -> Dict[str, Any]:
    return {**store, "outputs": {name: {**output, "layers": None} for name, output in store["outputs"].items()}}


def _refuse_vectors(doc: Doc, value: Any) -> None:
    raise ValueError(f"doc._.{VECTORS} is the primary ctxembed component's, and cannot be set or dropped alone: "
                     f"set doc._.{OUTPUTS} = None to drop every output (doc._.{LAYERS} = None: the layers)")


def _check_dropped(attribute: str, value: Any) -> None:
    if value is not None:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else f"a {type(value).__name__}"
        raise ValueError(f"doc._.{attribute} is written by ctxembed components; it can only be set to None, which "
                         f"drops it (spaCy's doc_cleaner), not to {shown}")


def write_outputs(
    doc: Doc, name: str, vectors, layers, *, primary: bool, set_doc_tensor: bool, signature: Optional[str] = None,
    weights_signed: bool = True,
) -> None:
    """Store one component's outputs on `doc`, computed for its current tokens.

    signature: what made them (the component's model and settings, see
        `ContextualEmbedder`); outputs of one name from different models are
        then never mixed or compared. None: not known (older callers).
    weights_signed: whether the signature fingerprints the weights that made
        them: not `ctxembed_from_trf`'s, which does not see its transformer's.
    """
    # One pass in Cython for what the output and the as_doc pointer keep of the tokens.
    tokens = doc.to_array([IDX, LENGTH, ORTH, SPACY])
    starts = tokens[:, 0].astype("int64")
    # The doc's length (`text_length`), from the last token's row.
    n_chars = int(tokens[-1, 0] + tokens[-1, 1] + tokens[-1, 3]) if len(tokens) else 0
    stores = _stores(doc)
    whole = stores[0] if len(stores) == 1 and _spans_whole(stores[0][0], n_chars) else None
    old = whole[1] if whole is not None else None
    tensor_from: Optional[str] = None
    if whole is not None:
        tensor_from = _tensor_source(doc, [whole])
    elif stores or SOURCE_HOOK in doc.user_hooks:  # (else there are no outputs to keep: a doc's first)
        old = _gathered_store(doc)
        if old is not None:
            tensor_from = old["tensor_set"] or None
        else:  # a cut that cannot be placed (its text is in its source twice): its tensor is still its rows
            placed = _source_placements(doc, most=1)
            tensor_from = _tensor_source(doc, placed) if placed else None
    outputs = dict(old["outputs"]) if old is not None else {}
    current = old.get("primary") if old is not None else None
    ends, orths = starts + tokens[:, 1].astype("int64"), numpy.ascontiguousarray(tokens[:, 2])
    if not primary and current == name:
        _check_not_replacing_primary(name, outputs.get(name), signature)
        if layers is None and (outputs.get(name) or {}).get("layers") is not None:
            # (A gathered store's layers may be merged means, not those of the vectors written now.)
            same = whole is not None and weights_signed
            layers = _same_layers(outputs[name], signature, starts, ends, orths) if same else None
            if layers is None:
                warnings.warn(f"[{name}] (primary = false, store_layers = false) rewrote the doc's primary output "
                              f"{name!r}, whose stored layers it cannot vouch for as its own (the doc's tokens "
                              "changed since they were stored, or were gathered from a cut or a join; or another "
                              "model made them): they are dropped (doc._.ctx_layers reads None). Set "
                              "store_layers = true on it to store them again", stacklevel=3)
    outputs[name] = {"starts": starts, "ends": ends, "orths": orths, "vectors": _read_only(vectors),
                     "layers": _read_only(layers), "signature": signature}
    if primary and set_doc_tensor and _set_doc_tensor(doc, name, vectors, ours=tensor_from is not None):
        tensor_from = name
    # A new dict, never an update in place: spaCy's as_doc and from_docs copy
    # the store shallowly, so other docs may share the old one. `tensor_set`
    # names the output whose vectors doc.tensor is (False: none).
    store: Dict[str, Any] = {"primary": name if primary else current, "outputs": outputs,
                             "tensor_set": tensor_from or False}
    if not primary and old is not None and old.get("conflict"):
        store["conflict"] = old["conflict"]  # still no single primary (see `_View.primary_output`)
    # Outputs of other names that joined docs had from different models stay unreadable.
    clashes = {k: v for k, v in (old.get("clashes") or {}).items() if k != name} if old is not None else {}
    if clashes:
        store["clashes"] = clashes
    if whole is not None:
        del _data(doc)[whole[0]]  # (replaced by the new store, under a key of its own)
    _data(doc)[_store_key(n_chars)] = store
    if primary:
        set_vector_hooks(doc, _Source(doc, store, numpy.ascontiguousarray(tokens[:, 2:])))
    else:
        # Only the as_doc pointer must see the new output: the vector and
        # similarity hooks stay as they are (a later component may have set
        # its own). A doc with non-primary outputs only gets the pointer too,
        # or a plain cut of it would read as a doc without outputs.
        source = _Source(doc, store, numpy.ascontiguousarray(tokens[:, 2:]))
        hooks: Dict[str, Any] = {**doc.user_hooks, SOURCE_HOOK: source}
        doc.user_hooks = hooks


def _check_not_replacing_primary(name: str, output: Optional[Dict[str, Any]], signature: Optional[str]) -> None:
    """A component with `primary = false` that writes under the name of the
    doc's primary output (two pipelines whose components share a name, the
    doc through both) would replace the vectors that `token.vector`,
    `doc.tensor` and similarity read with its own, while they went on
    reading as the primary ones. Refused where their signatures say that
    another model made them; the same model's vectors are the same.
    (Outputs that do not say, docs rebuilt by `docs_from_table` without a
    signature or saved by earlier versions, are not checked; nor are
    `ctxembed_from_trf`'s of another transformer: its signature has its own
    settings only.) `output` None: the primary outputs cannot be read
    (joined from docs of different models)."""
    if output is None:
        raise ValueError(
            f"[{name}] (primary = false) would replace the doc's primary vectors, which are stored under the same "
            f"name {name!r} and cannot be read (joined with Doc.from_docs from docs of different models): its "
            "vectors would read as the primary ones. Give it another name (nlp.add_pipe(..., name=...)), or set "
            "primary = true on it to make its vectors the doc's"
        )
    stored = output.get("signature")
    if stored and signature and not _signatures_agree([stored, signature]):
        raise ValueError(
            f"[{name}] (primary = false) would replace the doc's primary vectors, which are stored under the same "
            f"name {name!r} and were made by another model or with other settings "
            f"({_signature_difference(stored, signature)}): "
            "token.vector, doc.tensor and .similarity() read them. Give one of the two components another name "
            "(nlp.add_pipe(..., name=...)), or set primary = true on this one to make its vectors the doc's"
        )


def _same_layers(output: Dict[str, Any], signature: Optional[str], starts, ends, orths):
    """The stored layers of the primary output that a `primary = false`
    component of its name and model rewrites without layers of its own
    (`store_layers = false`): its vectors are the same, and the layers that
    `doc._.ctx_layers` reads would otherwise be dropped without a word. Kept
    only where the signatures are one string (the same model and settings,
    with the weights' fingerprint: not `ctxembed_from_trf`'s, whose
    signature is the same over any transformer) and the stored tokens are
    the doc's, unchanged; else None, as before."""
    if not signature or output.get("signature") != signature:
        return None
    same_tokens = all(numpy.array_equal(output[key], value)
                      for key, value in (("starts", starts), ("ends", ends), ("orths", orths)))
    return output["layers"] if same_tokens else None


def _read_only(array):
    """A host array that is stored or read through the hooks, made read-only:
    `token.vector` is a view of a stored row, and `v = token.vector; v /= norm`
    would rewrite it for every later read (spans, similarity, listeners)
    without a word. (cupy arrays have no such flag.)"""
    if isinstance(array, numpy.ndarray):
        array.flags.writeable = False
    return array


def _set_doc_tensor(doc: Doc, name: str, vectors, *, ours: bool) -> bool:
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


def _tensor_source(doc: Doc, stores: List[Tuple[tuple, Dict[str, Any]]]) -> Optional[str]:
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
    return name if _tensor_follows(doc, cast(List[Tuple[int, Dict[str, Any]]], parts)) else None


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
    tensor = _to_numpy(doc.tensor)
    vectors = _to_numpy(_concat([p["vectors"] for _, p in parts], axis=0, on_host=True))
    if (tensor.ndim != 2 or tensor.shape[1:] != vectors.shape[1:] or tensor.dtype != vectors.dtype
            or len(tensor) < len(doc)):
        return False
    # Rows compared whole, as bytes (one value each).
    row = numpy.dtype((numpy.void, vectors.dtype.itemsize * vectors.shape[1]))
    stored = numpy.ascontiguousarray(vectors).view(row).ravel()
    rows = numpy.ascontiguousarray(tensor).view(row).ravel()
    return bool((~tensor.any(axis=1) | numpy.isin(rows, stored)).all())


def _gathered_store(doc: Doc) -> Optional[Dict[str, Any]]:
    """A doc whose outputs are in shifted stores (`Doc.from_docs`,
    `span.as_doc(copy_user_data=True)`) or in its source's (`span.as_doc()`):
    those outputs, aligned to its tokens now, as one whole-doc store
    (`_view_store`), so that writing one more output keeps them. The shifted
    stores are then dropped: the whole-doc store, read first, replaces them.
    Outputs that cannot be placed at all (`UnplacedOutputs`) are dropped,
    with a warning: the output being written replaces its own."""
    try:
        view = _view(doc)
    except UnplacedOutputs as err:
        warnings.warn(f"{err} (their stored outputs are dropped from this doc)", stacklevel=4)
        stores = _stores(doc)
        # (The tensor spaCy joined from the cuts' tensors: each cut's rows are its own tokens'.)
        tensor_from = _tensor_source(doc, stores)
        for key, _ in stores:
            _data(doc).pop(key, None)
        return {"primary": None, "outputs": {}, "tensor_set": tensor_from or False}
    if view is None:
        return None
    stores = _stores(doc) or _source_store(doc)
    store = _view_store(doc, view, stores)
    for key, _ in stores:  # (a source store is not in this doc's user data: nothing to drop)
        _data(doc).pop(key, None)
    return store


def _view_store(doc: Doc, view: "_View", stores: List[Tuple[tuple, Dict[str, Any]]]) -> Dict[str, Any]:
    """The outputs as `doc` reads them now (`view`, from `stores`), as one store
    for its tokens. What the view could not read stays so: an output keeps
    rows only for the tokens its stores covered, and outputs joined from
    different models stay clashes. The tensor spaCy joined or cut from tensors
    that ctxembed set is one too (`tensor_set`)."""
    starts, ends = token_char_spans(doc)
    orths = doc.to_array(ORTH)
    outputs = {}
    for name, output in view.outputs.items():
        vectors, layers = output["vectors"], output.get("layers")
        kept_starts, kept_ends, kept_orths = starts, ends, orths
        if name in view.missing:
            kept = numpy.flatnonzero(~view.missing[name][0])
            kept_starts, kept_ends, kept_orths = starts[kept], ends[kept], orths[kept]
            index = get_array_module(vectors).asarray(kept)
            vectors = vectors[index]
            layers = None if layers is None else layers[:, index]
        outputs[name] = {"starts": kept_starts, "ends": kept_ends, "orths": kept_orths, "vectors": vectors,
                         "layers": layers, "signature": view.signatures.get(name)}
    return {"primary": view.primary, "outputs": outputs, "conflict": view.conflict, "clashes": dict(view.clashes),
            "tensor_set": _tensor_source(doc, stores) or False}


def restore_vectors(doc: Doc) -> Doc:
    """Re-attach `Token.vector` & co. to a doc whose hooks were not serialized.

    `Doc.to_bytes`, `DocBin`, `Doc.from_docs` and `nlp.pipe(n_process=...)`
    keep the outputs (in user data) but drop user hooks. After
    `docs = [restore_vectors(d) for d in doc_bin.get_docs(nlp.vocab)]`
    the docs behave as when they left the pipeline. Docs written by version
    0.1 (`doc._.ctx_vectors` in user data) are converted.
    """
    if not isinstance(doc, Doc):
        raise TypeError(f"restore_vectors: expected a Doc, got {_named(doc)}")
    install_extensions()
    _give_ids(doc)
    if not _stores(doc) and _V1_VECTORS in _data(doc):
        vectors = _data(doc).pop(_V1_VECTORS)
        layers = _data(doc).pop(_V1_LAYERS, None)
        if vectors is None or len(vectors) != len(doc):
            raise MissingOutputs(f"restore_vectors: the doc's stored vectors do not have one row per token "
                                 f"({None if vectors is None else len(vectors)} rows, {len(doc)} tokens)")
        write_outputs(doc, "ctxembed_v1", vectors, layers, primary=True, set_doc_tensor=False)
        return doc
    if get_vectors(doc) is None:
        if _stores(doc):  # non-primary outputs only: they set no vector hooks in the pipeline either
            set_source_pointer(doc)
            return doc
        raise MissingOutputs(
            "restore_vectors: the doc holds no ctxembed outputs: it did not go through a ctxembed component, "
            "or its user data was dropped (use DocBin(store_user_data=True)), or they were (doc._.ctx_outputs = "
            "None: spaCy's doc_cleaner), or it is a span.as_doc() that read them from the doc it was cut from "
            "(save span.as_doc(copy_user_data=True))"
        )
    set_vector_hooks(doc)
    return doc


# Getters ------------------------------------------------------------------


def get_outputs(doc: Doc) -> Dict[str, Dict[str, Any]]:
    """Per component: {"vectors": (n_tokens, width), "layers": (n_layers, n_tokens, width) or absent}."""
    view = _placed_view(doc)
    return {} if view is None else view.readable_outputs()


def stored_signature(doc: Doc, name: Optional[str]) -> Optional[str]:
    """The signature stored with `name`'s output on `doc` (what made it); None
    where there is none, or the outputs cannot be read (reading them says why)."""
    try:
        view = _placed_view(doc)
    except MissingOutputs:
        return None
    return None if view is None or name is None else view.signatures.get(name)


def read_output(doc: Doc, name: Optional[str]) -> Tuple[Optional[str], Optional[Dict[str, Any]], Optional[str]]:
    """(The name read, its output as in `get_outputs`, the signature stored
    with it) from one view of the doc, for a listener: `name`'s, or with None
    the doc's one output's; an output None where there is none."""
    view = _placed_view(doc)
    outputs = {} if view is None else view.readable_outputs()
    if name is None and len(outputs) == 1:
        name = next(iter(outputs))
    if name is None or view is None or name not in outputs:
        return name, None, None
    return name, outputs[name], view.signatures.get(name)


def get_vectors(doc: Doc):
    output = _primary_output(doc)
    return None if output is None else output["vectors"]


def get_layers(doc: Doc):
    output = _primary_output(doc)
    return None if output is None else output.get("layers")


def _primary_output(doc: Doc) -> Optional[Dict[str, Any]]:
    view = _placed_view(doc)
    return None if view is None else view.primary_output()


def _placed_view(doc: Doc) -> Optional["_View"]:
    """`_view(doc)`, where None means that the doc has no outputs: a cut that
    points to its source's store but cannot be placed in it (its text is
    there twice) is an error, as its vectors are (`_unread_cut_error`), not
    a doc without outputs."""
    view = _view(doc)
    if view is None and isinstance(doc.user_hooks.get(SOURCE_HOOK), _Source):
        raise _unread_cut_error(doc)
    return view


# Hooks --------------------------------------------------------------------


def set_vector_hooks(doc: Doc, source: Optional["_Source"] = None) -> None:
    """Set the vector and similarity hooks, and the pointer to the doc's store
    for docs cut from it (`source`: that pointer, where the caller has made it)."""
    # Fresh dicts: span.as_doc() shares the hook dicts of the doc it came
    # from, and must not see this doc's hooks change under it.
    doc.user_hooks = {**doc.user_hooks, **_DOC_HOOKS}
    doc.user_span_hooks = {**doc.user_span_hooks, **_SPAN_HOOKS}
    doc.user_token_hooks = {**doc.user_token_hooks, **_TOKEN_HOOKS}
    set_source_pointer(doc, source)


def set_source_pointer(doc: Doc, source: Optional["_Source"] = None) -> None:
    """Set (or clear) the pointer to the doc's store that docs cut from it read
    (`span.as_doc()`), alone: a doc with non-primary outputs only has no vector hooks."""
    if source is None:
        stores = _stores(doc)
        if len(stores) == 1 and _spans_whole(stores[0][0], text_length(doc)):
            source = _Source(doc, stores[0][1])
        elif stores:
            # Shifted stores (Doc.from_docs, or a cut with its user data; a
            # joined part's key can even be the whole doc's): a span cut from
            # this doc must read what this doc reads, which only the doc's own
            # view says (which part's tokens count where). So the pointer gets
            # the outputs as read now, as one store for these tokens.
            with contextlib.suppress(MissingOutputs):
                view = _view(doc)
                if view is not None:
                    source = _Source(doc, _view_store(doc, view, stores))
    # Fresh dicts: the hook dicts may be shared with cuts (as above).
    if source is not None:
        hooks: Dict[str, Any] = {**doc.user_hooks, SOURCE_HOOK: source}
        doc.user_hooks = hooks
    elif SOURCE_HOOK in doc.user_hooks:
        doc.user_hooks = {k: v for k, v in doc.user_hooks.items() if k != SOURCE_HOOK}


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
    u, v = a.vector, b.vector
    if not u.size or not v.size:  # one side has no vector at all (as spaCy: 0.0)
        return 0.0
    if u.shape != v.shape:
        raise ValueError(
            f"similarity: {_named(a)} and {_named(b)} have vectors of different widths ({u.shape[-1]} and "
            f"{v.shape[-1]}), so they come from different models (a ctxembed component's and static "
            "vectors, or two ctxembed models); compare vectors of one model"
        )
    _check_one_space(a, b, u, v)
    if type(u) is not type(v):
        # A host doc (from a DocBin, say) and a GPU doc: numpy refuses cupy
        # arrays, so both go to the host (one vector each).
        u, v = _to_numpy(u), _to_numpy(v)
    xp = get_array_module(u)
    norms = float(xp.linalg.norm(u)) * float(xp.linalg.norm(v))
    if norms == 0.0:
        return 0.0
    return float(xp.dot(u, v)) / norms


def _check_one_space(a: Any, b: Any, u, v) -> None:
    """Vectors of the same width may still come from different spaces: a
    ctxembed model's and static vectors, or two ctxembed models (other
    layers, pooling, model). Their cosine would be a number without meaning."""
    (ours_a, signature_a), (ours_b, signature_b) = _vector_source(a), _vector_source(b)
    if ours_a != ours_b:
        other, vector = (b, v) if ours_a else (a, u)
        if bool(vector.any()):
            ours = a if ours_a else b
            raise ValueError(
                f"similarity: {_named(ours)} has a ctxembed component's contextual vector, but {_named(other)} "
                "has a vector from elsewhere (static vectors of the vocab, or another component's): they come "
                "from different spaces; compare vectors of one model (restore_vectors re-attaches a stored "
                "doc's ctxembed vectors)"
            )
    elif ours_a and signature_a and signature_b and not _signatures_agree([signature_a, signature_b]):
        raise ValueError(
            f"similarity: {_named(a)} and {_named(b)} have vectors of different ctxembed models "
            f"({_signature_difference(signature_a, signature_b)}); compare vectors of one model"
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
    view = _view(doc)
    if view is None or view.primary is None:
        return True, None
    return True, view.signatures.get(view.primary)


def signature_fields(signature: str) -> Dict[str, str]:
    """A signature's fields ("key=value; ...", `pipeline.signature.output_signature`)."""
    return dict(part.partition("=")[::2] for part in signature.split("; "))


def _signatures_agree(signatures: List[str]) -> bool:
    """Whether the signatures say one model made the outputs. Only the fields
    that both of a pair have count: earlier versions wrote fewer (no weights)."""
    fields = [signature_fields(s) for s in dict.fromkeys(signatures)]
    return all(a[key] == b[key] for i, a in enumerate(fields) for b in fields[i + 1:] for key in a.keys() & b.keys())


def _merged_signature(signatures: List[str]) -> str:
    """Signatures that agree, as one with every field any of them has: an
    earlier version's (the config's paths, no tokenizer) and a newer one's
    say different things of one model, and neither may be dropped."""
    fields: Dict[str, str] = {}
    for signature in signatures:
        fields.update(signature_fields(signature))
    return "; ".join(f"{key}={value}" for key, value in fields.items())


def _signature_difference(a: str, b: str) -> str:
    """What differs between two signatures ("key=value; ..."), for messages: the
    fields both have (`_signatures_agree`: a field only one has says nothing)."""
    fields_a, fields_b = signature_fields(a), signature_fields(b)
    differ = [f"{k} {fields_a[k]} vs {fields_b[k]}" for k in fields_a if k in fields_b and fields_a[k] != fields_b[k]]
    return "; ".join(differ) if differ else f"{a!r} vs {b!r}"


def _named(item: Any) -> str:
    text = str(getattr(item, "text", item))
    return f"{type(item).__name__} {text if len(text) <= 40 else text[:37] + '...'!r}"


# The hooks `set_vector_hooks` sets. spaCy caches a doc's norm on first use;
# retokenizing or a new output changes it, so the doc's norm is a hook too.
# (Only the doc's: spaCy's Span.vector_norm would return a span hook's
# vector, and tokens compute theirs from the vector hook.)
_Hooks = Dict[str, Callable[..., Any]]
_DOC_HOOKS: _Hooks = {"similarity": similarity, "vector": doc_vector, "has_vector": doc_has_vector,
                     "vector_norm": doc_vector_norm}
_SPAN_HOOKS: _Hooks = {"similarity": similarity, "vector": span_vector, "has_vector": span_has_vector}
_TOKEN_HOOKS: _Hooks = {"similarity": similarity, "vector": token_vector, "has_vector": token_has_vector}


# Internals ----------------------------------------------------------------


class _Source:
    """The text and store of the doc that hooks were set on (for `as_doc`).

    The text is built on first use: `doc.text` costs a Python call per token,
    and most docs are never cut with `as_doc`. What is kept is the tokens'
    ORTH and SPACY values (one Cython pass) and the string store, never the
    doc itself: a doc holding a reference to itself through its hooks would be
    freed only by the cyclic garbage collector.
    """

    def __init__(self, doc: Doc, store: Dict[str, Any], tokens: Optional[numpy.ndarray] = None) -> None:
        """tokens: the doc's `to_array([ORTH, SPACY])`, where the caller has read it."""
        self._strings: Optional[StringStore] = doc.vocab.strings
        self._tokens: Optional[numpy.ndarray] = doc.to_array([ORTH, SPACY]) if tokens is None else tokens
        self._text: Optional[str] = None
        self.store = store

    @property
    def text(self) -> str:
        if self._text is None:
            strings, tokens = cast(StringStore, self._strings), cast(numpy.ndarray, self._tokens)
            # Exactly doc.text: each token's text, then its trailing space.
            self._text = "".join(strings[int(orth)] + (" " if space else "") for orth, space in tokens)
            self._strings = self._tokens = None
        return self._text

    def __getstate__(self) -> Dict[str, Any]:
        # Pickling a Doc pickles its hooks: keep the text, not the string store.
        return {"_strings": None, "_tokens": None, "_text": self.text, "store": self.store}


class _View:
    """A doc's outputs aligned to its tokens at one moment."""

    def __init__(self, starts, ends, primary: Optional[str], outputs: Dict[str, Dict[str, Any]],
                 conflict: Tuple[str, ...] = (), *, signatures: Optional[Dict[str, Optional[str]]] = None,
                 clashes: Optional[Dict[str, str]] = None,
                 missing: Optional[Dict[str, Tuple[numpy.ndarray, str]]] = None,
                 unplaced: Optional[str] = None) -> None:
        self.starts, self.ends = starts, ends
        self.primary = primary
        for output in outputs.values():
            for array in (output.get("vectors"), output.get("layers")):
                _read_only(array)
        self.outputs = outputs
        #: The primaries of joined docs, where they differ (then there is no primary).
        self.conflict = conflict
        #: Per output: what made it (None: not known).
        self.signatures = signatures or {}
        #: Outputs of one name that joined docs had from different models: unreadable (name -> what differs).
        self.clashes = clashes or {}
        #: Per output that does not cover every token: (mask of the tokens it does not cover, where they are).
        self.missing = missing or {}
        #: Where the tokens are that no output covers (None: there are none).
        self.unplaced = unplaced

    def primary_output(self) -> Optional[Dict[str, Any]]:
        if self.conflict:
            raise MissingOutputs(
                f"this doc joins docs (Doc.from_docs) whose primary ctxembed outputs come from different "
                f"components ({', '.join(self.conflict)}), whose vectors cannot be compared; run one ctxembed "
                "component on the joined doc, or read doc._.ctx_outputs[name]"
            )
        if self.primary is None:
            return None
        if self.primary in self.clashes:
            raise _clash_error(self.primary, self.clashes[self.primary])
        if self.primary in self.missing:
            raise _missing_error(self.primary, self.missing[self.primary][1])
        return self.outputs[self.primary]

    def readable_outputs(self) -> Dict[str, Dict[str, Any]]:
        """All outputs, unless one clashes or some tokens have none. (An output
        that covers only some tokens, where others cover the rest, is read:
        docs joined from different primaries have one per part. It says which
        tokens it does not cover, in "missing".)"""
        if self.clashes:
            name = next(iter(self.clashes))
            raise _clash_error(name, self.clashes[name])
        if self.unplaced is not None:
            raise _missing_error(None, self.unplaced)
        return self.outputs

    def fits(self, doc: Doc, start: int, end: int) -> bool:
        """Whether rows start..end are for tokens with the spans they have now.

        A row depends only on its own token's span (overlap rule), so rows
        whose spans still match are valid whatever happened elsewhere.
        """
        if len(self.starts) != len(doc):
            return False
        if end - start > 8:
            starts, ends = token_char_spans(doc)
            return bool(numpy.array_equal(starts[start:end], self.starts[start:end])
                        and numpy.array_equal(ends[start:end], self.ends[start:end]))
        for i in range(start, end):
            token = doc[i]
            if self.starts[i] != token.idx or self.ends[i] != token.idx + len(token):
                return False
        return True


# Memo of aligned views, so token-by-token hooks after a retokenization
# realign once, not once per token. Weak: it never keeps a doc alive. Its
# lock and memo are per process (a forked child inherits the lock as it was).
# A memo: the stores (by identity), the view, and the user-data key of a doc's one store.
_Memo = Tuple[threading.Lock, "weakref.WeakKeyDictionary[Doc, Tuple[List[Any], _View, Optional[tuple]]]"]
_VIEWS: ProcessLocal[_Memo] = ProcessLocal(lambda: (threading.Lock(), weakref.WeakKeyDictionary()))


def _primary_vectors(doc: Doc, start: int, end: Optional[int] = None):
    """The primary vectors of `doc`, valid at least for rows start..end."""
    end = start + 1 if end is None else end
    view = _view(doc, start, end)
    output = None if view is None else view.primary_output()
    if output is None:
        raise _unread_cut_error(doc)
    return output["vectors"]


def _unread_cut_error(doc: Doc) -> MissingOutputs:
    """Why a doc with the vector hooks has no outputs to read: a cut (`span.as_doc()`)
    that cannot be placed in the doc it was cut from, which is named where known."""
    source = doc.user_hooks.get(SOURCE_HOOK)
    name = source.store.get("primary") if isinstance(source, _Source) else None
    prefix = f"[{name}] " if name else ""
    shown = doc.text if len(doc.text) <= 40 else doc.text[:37] + "..."
    if isinstance(source, _Source) and len(_source_placements(doc, most=2)) > 1:
        why = (f"this doc was made with span.as_doc() from a doc in which its text ({shown!r}) occurs more "
               "than once, so which tokens' vectors it has cannot be told (spaCy's as_doc reads them too)")
    else:
        why = ("this doc has the ctxembed vector hooks but no ctxembed outputs: a doc made with "
               "span.as_doc() from a doc whose text it cannot be placed in, or whose user data was dropped")
    return MissingOutputs(f"{prefix}{why}. Use span.as_doc(copy_user_data=True), or run the pipeline on it again.")


def _view(doc: Doc, start: int = 0, end: Optional[int] = None) -> Optional[_View]:
    end = len(doc) if end is None else end
    lock, memos = _VIEWS.get()
    with lock:
        memo = memos.get(doc)
    # The common case, a doc with its one store: found by the key the view was
    # made from, with that store alone (`_stores` scans all of the user data,
    # once per token hook if done here: other extensions' values are there too).
    if (memo is not None and memo[2] is not None and _data(doc).get(memo[2]) is memo[0][0]
            and memo[1].fits(doc, start, end)):
        return memo[1]
    stores = _stores(doc)
    if not stores:
        # A plain cut (span.as_doc()) is placed in its source by its text: a
        # search of the source's text, too slow for every token's read (a loop
        # over a long cut's tokens was quadratic). A view made from the same
        # source's store for the same token spans still holds.
        source = doc.user_hooks.get(SOURCE_HOOK)
        if (memo is not None and isinstance(source, _Source) and len(memo[0]) == 1
                and memo[0][0] is source.store and memo[1].fits(doc, start, end)):
            return memo[1]
        stores = _source_store(doc)
    if not stores:
        return None
    # The stores themselves, compared by identity (a write replaces the store).
    identity = [store for _, store in stores]
    if (
        memo is not None
        and len(memo[0]) == len(identity)
        and all(a is b for a, b in zip(memo[0], identity))
        and memo[1].fits(doc, start, end)
    ):
        return memo[1]
    view = _align(doc, stores)
    own_key = stores[0][0] if len(stores) == 1 and _data(doc).get(stores[0][0]) is stores[0][1] else None
    with lock:
        memos[doc] = (identity, view, own_key)
    return view


def _stores(doc: Doc) -> List[Tuple[tuple, Dict[str, Any]]]:
    """The stores in `doc`'s user data, in character order. (All of them: a
    joined part's shifted key can equal the whole doc's key by chance, a part
    cut from a source as long as the joined doc.)"""
    found = [
        (k, v) for k, v in _data(doc).items()
        if is_store_key(k) and isinstance(v, dict)
    ]
    return sorted(found, key=lambda item: item[0][2])


def _source_store(doc: Doc) -> List[Tuple[tuple, Dict[str, Any]]]:
    """For a doc from `span.as_doc()`: the source's store, placed by the text."""
    # (A second place is enough to know: a short text may be in a long source many times, at every read.)
    placements = _source_placements(doc, most=2)
    return placements if len(placements) == 1 else []  # not there, or there more than once: cannot be placed


def _source_placements(doc: Doc, most: Optional[int] = None) -> List[Tuple[tuple, Dict[str, Any]]]:
    """For a doc from `span.as_doc()`: the source's store placed at each place its
    text occurs (the first `most` of them)."""
    source = doc.user_hooks.get(SOURCE_HOOK)
    if not isinstance(source, _Source):
        return []
    text, placements = doc.text, []
    at = source.text.find(text)
    while at >= 0 and (most is None or len(placements) < most):
        placements.append((("._.", STORE, -at, len(source.text) - at), source.store))
        at = source.text.find(text, at + 1) if text else -1  # ("" is at 0, once)
    return placements


def _align(doc: Doc, stores: List[Tuple[tuple, Dict[str, Any]]]) -> _View:
    starts, ends = token_char_spans(doc)
    names: List[str] = []
    for _, store in stores:
        names.extend(n for n in store["outputs"] if n not in names)
    outputs, signatures, missing = {}, {}, {}
    n_chars = text_length(doc)
    clashes: Dict[str, str] = {}
    for _, store in stores:  # (kept from docs joined before)
        clashes.update(store.get("clashes") or {})
    for name in names:
        parts = [(key[2], store["outputs"][name]) for key, store in stores if name in store["outputs"]]
        # Parts of empty docs hold no rows, and parts wholly off the doc's text (a
        # cut's source's, past the cut) none of its tokens: whatever made them,
        # they mix with nothing (nor do they drop the others' stored layers).
        reaches = [_reaches(part, n_chars) for part in parts]
        # (Each part with tokens, all off the doc, is a cut's source's, so this doc holds a cut: `_own_regions`.)
        off_doc = sum(1 for part, on in zip(parts, reaches) if len(part[1]["starts"]) and not on)
        parts = [part for part, on in zip(parts, reaches) if on] or parts[:1]
        known = sorted({p["signature"] for _, p in parts if p.get("signature")})
        signatures[name] = _merged_signature(known) if known and _signatures_agree(known) else None
        clash = clashes.get(name) or _clash(parts, known)
        if clash:  # one name, different models: no single output
            clashes[name] = clash
            continue
        outputs[name], uncovered = _align_output(parts, starts, ends, doc, off_doc)
        if uncovered is not None:
            missing[name] = (uncovered, _where(doc, uncovered))
            # Said with the output (`doc._.ctx_outputs`): its zero rows there are no vectors it made.
            outputs[name]["missing"] = uncovered
    unplaced = None
    if missing and len(missing) == len(outputs):
        nowhere = numpy.logical_and.reduce([mask for mask, _ in missing.values()])
        unplaced = _where(doc, nowhere) if nowhere.any() else None
    primaries = sorted({store["primary"] for _, store in stores if store.get("primary")}
                       | {name for _, store in stores for name in store.get("conflict", ())})
    # Several primaries: each joined doc's tokens would have vectors of the others' model only.
    conflict = tuple(primaries) if len(primaries) > 1 else ()
    primary = primaries[0] if len(primaries) == 1 else None
    return _View(starts, ends, primary, outputs, conflict, signatures=signatures, clashes=clashes,
                 missing=missing, unplaced=unplaced)


def _reaches(part: Tuple[int, Dict[str, Any]], n_chars: int) -> bool:
    """Whether a stored part has a token on characters [0, n_chars) of the doc."""
    origin, output = part
    starts, ends = numpy.asarray(output["starts"]) + origin, numpy.asarray(output["ends"]) + origin
    overlaps = (starts < n_chars) & (ends > 0)
    empty_inside = (starts == ends) & (starts >= 0) & (starts <= n_chars)  # (a token of no characters)
    return bool((overlaps | empty_inside).any())


def _clash(parts: List[Tuple[int, Dict[str, Any]]], signatures: List[str]) -> Optional[str]:
    """What differs between the joined parts of one output, where they cannot
    be one output: other widths or layer counts, or other models (signatures;
    parts whose signature is not known are taken as the same model)."""
    differ = []
    widths = sorted({int(p["vectors"].shape[1]) for _, p in parts})
    if len(widths) > 1:
        differ.append(f"vectors of widths {' and '.join(map(str, widths))}")
    n_layers = sorted({int(p["layers"].shape[0]) for _, p in parts if p.get("layers") is not None})
    if len(n_layers) > 1:
        differ.append(f"{' and '.join(map(str, n_layers))} stored layers")
    if not _signatures_agree(signatures):
        differ.append("signatures " + " and ".join(map(repr, signatures)))
    return ", ".join(differ) or None


def _clash_error(name: str, clash: str) -> MissingOutputs:
    return MissingOutputs(
        f"[{name}] this doc joins docs (Doc.from_docs) whose {name!r} outputs come from different models "
        f"({clash}), so they cannot be read as one output; run the component {name!r} on the joined doc, "
        "or join docs of one pipeline"
    )


def _missing_error(name: Optional[str], where: str) -> MissingOutputs:
    what = f"[{name}] no {name!r} output covers" if name else "no ctxembed output covers"
    return MissingOutputs(
        f"{what} {where}, or only part of their text: they would read as having no vector, or one of part of "
        "their text. That text comes from a doc whose outputs were "
        "not in its user data (Doc.from_docs of a doc made with span.as_doc(): use "
        "span.as_doc(copy_user_data=True)), or that did not go through this component, or whose outputs "
        "were dropped (doc._.ctx_outputs = None: spaCy's doc_cleaner), or whose token offsets did not match its "
        "text when the component ran (spaCy's Doc.from_array with SPACY changes the spaces but not token.idx), "
        "or, in a doc joined with Doc.from_docs, a token split at the edge of a cut (span.as_doc(copy_user_data="
        "True) after a retokenizer split) that is not at the joined doc's own edge (a merge across such text "
        "and text with outputs leaves part of the merged token uncovered); "
        "run the component on this doc, or join docs that all have its outputs"
    )


def uncovered_error(doc: Doc, name: Optional[str], uncovered: numpy.ndarray) -> MissingOutputs:
    """The error for reading `name`'s output as features where it covers no
    token of `uncovered` (its "missing" mask): its zero rows there are no
    vectors it made."""
    return _missing_error(name, _where(doc, uncovered))


def _where(doc: Doc, mask: numpy.ndarray) -> str:
    """The tokens of `mask`, for messages: how many, and the first run of them."""
    first = int(numpy.argmax(mask))
    run = numpy.flatnonzero(~mask[first:])
    end = first + (int(run[0]) if len(run) else len(mask) - first)
    text = doc[first:end].text
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{int(mask.sum())} of its {len(mask)} tokens (from token {first}: {text!r})"


def _align_output(parts: List[Tuple[int, Dict[str, Any]]], starts, ends, doc: Doc, off_doc: int
                  ) -> Tuple[Dict[str, Any], Optional[numpy.ndarray]]:
    """One component's rows for `doc`'s tokens, with character spans [starts, ends),
    and the mask of the tokens no stored token of it overlaps, or overlaps
    only in part (None: none).

    A token that overlaps stored tokens without a vector (whitespace) has no
    vector; one that overlaps none has no output at all: its characters were
    never embedded by this component, which the caller must not pass off as
    "no vector". Stored tokens whose text is not the doc's text where they are
    placed are left out (`_placed_here`)."""
    if len(parts) == 1:
        parts = [_within(parts[0], text_length(doc))]
    old_starts, old_ends = _placed_spans(parts)
    has_layers = all(p.get("layers") is not None for _, p in parts)
    arrays = [p[key] for _, p in parts for key in (("vectors", "layers") if has_layers else ("vectors",))]
    # Docs joined from the host and from the GPU (Doc.from_docs): all on the host.
    on_host = len({type(a) for a in arrays}) > 1
    vectors = _concat([p["vectors"] for _, p in parts], axis=0, on_host=on_host)
    layers = _concat([p["layers"] for _, p in parts], axis=1, on_host=on_host) if has_layers else None
    if (len(parts) == 1 and numpy.array_equal(old_starts, starts) and numpy.array_equal(old_ends, ends)
            and _same_orths(parts[0][1], doc)):
        return ({"vectors": vectors, "layers": layers} if has_layers else {"vectors": vectors}), None
    xp = get_array_module(vectors)
    covered = _to_numpy(vectors.any(axis=1)) if len(vectors) else numpy.zeros(0, dtype=bool)
    text = doc.text  # (a Python call per token: read once, for both checks)
    here = _placed_here(parts, old_starts, old_ends, starts, ends, doc, text, covered, off_doc)
    alignment = align_pieces(old_starts, old_ends, starts, ends)
    alignment = alignment.kept(here[alignment.piece_index])
    # A token whose characters were embedded only in part takes no row (a zero
    # one, missing): the rest of it never was.
    partly = partly_uncovered(text, old_starts[here], old_ends[here], starts, ends)
    alignment = alignment.kept(~partly[alignment.token_index])
    uncovered = ~alignment.covered_tokens()
    keep = covered[alignment.piece_index]
    tokens, rows = alignment.token_index[keep], alignment.piece_index[keep]
    counts = numpy.bincount(tokens, minlength=len(starts)).astype("float32")
    result = {"vectors": _segment_mean(xp, vectors, tokens, rows, counts)}
    if has_layers:
        moved = xp.ascontiguousarray(xp.transpose(layers, (1, 0, 2)))
        result["layers"] = xp.ascontiguousarray(xp.transpose(_segment_mean(xp, moved, tokens, rows, counts), (1, 0, 2)))
    return result, (uncovered if uncovered.any() else None)


def _within(part: Tuple[int, Dict[str, Any]], n_chars: int) -> Tuple[int, Dict[str, Any]]:
    """A lone part less its stored tokens that lie wholly off characters
    [0, n_chars) of the doc: a cut's store is its whole source's (its
    placement in the source, or `copy_user_data=True`), and work that scaled
    with the source made a loop over a long doc's sentences quadratic.

    Only for a lone part: those tokens give the doc no row (they overlap none
    of its tokens), and what is read of them is whether they are in place,
    which matters only beside other parts (`_own_regions`). A doc's tokens
    are sorted and do not overlap, so both ends are found by bisection."""
    origin, output = part
    starts, ends = numpy.asarray(output["starts"]), numpy.asarray(output["ends"])
    low = int(numpy.searchsorted(ends, -origin, side="right"))  # the first with ends + origin > 0
    high = int(numpy.searchsorted(starts, n_chars - origin, side="left"))  # past the last with start < n_chars
    if low == 0 and high == len(starts):
        return part
    kept = {**output, "starts": starts[low:high], "ends": ends[low:high], "vectors": output["vectors"][low:high]}
    if output.get("orths") is not None:
        kept["orths"] = numpy.asarray(output["orths"])[low:high]
    if output.get("layers") is not None:
        kept["layers"] = output["layers"][:, low:high]
    return origin, kept


def _same_orths(output: Dict[str, Any], doc: Doc) -> bool:
    """Whether the stored tokens (as many as the doc's, with its spans) are the
    doc's words: a cut's store (`span.as_doc(copy_user_data=True)`), joined
    with a doc that never went through the component, can have the joined
    doc's spans exactly but other words ("Pears" stored where "Beets" is).
    Stores of earlier versions record no words: taken as the same."""
    orths = output.get("orths")
    return orths is None or bool(numpy.array_equal(doc.to_array(ORTH), numpy.asarray(orths, dtype="uint64")))


def _placed_here(parts: List[Tuple[int, Dict[str, Any]]], old_starts: numpy.ndarray, old_ends: numpy.ndarray,
                 starts: numpy.ndarray, ends: numpy.ndarray, doc: Doc, text: str, with_vector: numpy.ndarray,
                 off_doc: int) -> numpy.ndarray:
    """Boolean mask over the stored tokens: True where the doc (of `text`) has
    the stored token's text at the characters it is placed on.

    What spaCy does to a doc keeps the text under every stored token:
    retokenizing, `as_doc`, `Doc.from_docs`. But `span.as_doc(copy_user_data=True)`
    keeps the whole source's store (spaCy shifts its key, never trims it), so
    once such a doc is joined with others (`Doc.from_docs`), the source's
    tokens past the cut lie on the other docs' characters: their rows would
    be mixed into those docs' tokens ("Two" got the mean of "buying" and
    "Two"). Their text differs there, so they are left out. Stores written by
    earlier versions record no text: all their tokens count as placed.
    """
    if not all(p.get("orths") is not None for _, p in parts):
        return numpy.ones(len(old_starts), dtype=bool)
    orths = numpy.concatenate([numpy.asarray(p["orths"], dtype="uint64") for _, p in parts])
    # Tokens still where they were, with their spans: compared by ORTH (vectorised).
    at = numpy.minimum(numpy.searchsorted(starts, old_starts), max(len(starts) - 1, 0))
    same_span = (numpy.zeros(len(old_starts), dtype=bool) if not len(starts)
                 else (starts[at] == old_starts) & (ends[at] == old_ends))
    here = numpy.zeros(len(old_starts), dtype=bool)
    if len(starts):
        here[same_span] = doc.to_array(ORTH)[at[same_span]] == orths[same_span]
    # The rest (merged or split since): by the text under them; none wholly outside the doc.
    n_chars = text_length(doc)
    inside = (old_starts >= 0) & (old_ends <= n_chars)
    across = ~inside & (old_starts < n_chars) & (old_ends > 0)
    rest = numpy.flatnonzero(~same_span & (inside | across))
    if len(rest):
        strings = doc.vocab.strings
        for k in rest:
            start, end = int(old_starts[k]), int(old_ends[k])
            if inside[k]:
                here[k] = get_string_id(text[start:end]) == int(orths[k])
            else:
                # Across the doc's edge: a cut (`as_doc`) whose edge a split put inside
                # a stored token ("New|York", cut after "New"); its pieces on the doc
                # take its row, as they do in the doc it was cut from. Where its text
                # is not in the string store, it cannot be checked: not placed.
                try:
                    stored = strings[int(orths[k])]
                except KeyError:
                    continue
                low, high = max(start, 0), min(end, n_chars)
                here[k] = stored[low - start : high - start] == text[low:high]
    return _own_regions(parts, old_starts, old_ends, here, with_vector, off_doc)


def _own_regions(parts: List[Tuple[int, Dict[str, Any]]], old_starts: numpy.ndarray, old_ends: numpy.ndarray,
                 here: numpy.ndarray, with_vector: numpy.ndarray, off_doc: int) -> numpy.ndarray:
    """`here`, less the tokens of a cut part on another part's characters.
    (`with_vector`: the stored tokens with a vector; those without, whitespace,
    give no row to mix up, so two parts meeting on them only do not overlap.
    `off_doc`: how many parts were left out as lying wholly off the doc, each
    a cut's source's.)

    Docs that went through the pipeline whole, joined, never overlap: each
    part's stored tokens lie on its own text. A part whose tokens reach onto
    another's carries a cut's source's store (`span.as_doc(copy_user_data=True)`,
    which spaCy does not trim), and of two parts that overlap, one must:
    - a part with tokens out of place (whose text is not the doc's there, or
      that lie off the doc) is such a cut. Its source's tokens past the cut
      may still match the text of a part beside it where a word repeats
      ("Hello" at the same place), so on the characters of a part with every
      token in place, only that part's tokens count;
    - of two overlapping parts with every token in place, either may be the
      cut: a doc joined with the rest of the sentence it was cut from, or a
      cut of a joined doc whose other part's store lands, in place, on a
      doc that went through the pipeline whole. Which rows are whose cannot
      be told then, nor where two cuts overlap, nor, with several cuts,
      whether a part in place is one of theirs: an error (`UnplacedOutputs`).
    Parts apart are each their own (the cuts of a joined doc, each part's
    store reaching past the cut), as are two parts on the same characters
    with every token in place (one source's store twice: cuts of it joined back).
    """
    if len(parts) < 2:
        return here
    bounds = numpy.cumsum([0] + [len(p["starts"]) for _, p in parts])
    in_place = [bool(here[a:b].all()) for a, b in zip(bounds[:-1], bounds[1:])]
    # Each part's characters, from its first stored token with a vector to its last (none: no extent).
    extents = {}
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        rows = numpy.flatnonzero(with_vector[a:b]) + a
        if len(rows):
            extents[i] = (int(old_starts[rows].min()), int(old_ends[rows].max()))
    keep_off: List[Tuple[int, int]] = []  # (a cut, the part whose characters its tokens must keep off)
    # With more than one cut, a part in place may itself be a cut's (a cut of
    # a joined doc carries all of its parts' stores): none can be trusted where
    # parts overlap. Apart (a cut of a joined doc, whose parts' stores reach
    # past it), each cut's own tokens are one run in place: a source's token in
    # place past one that is not is its word by chance on another part's text.
    several_cuts = in_place.count(False) + off_doc > 1
    if several_cuts and any(_runs_in_place(here[a:b][with_vector[a:b]]) > 1
                            for (a, b), placed in zip(zip(bounds[:-1], bounds[1:]), in_place) if not placed):
        raise _unplaceable()
    for i, j in itertools.combinations(extents, 2):
        (low_i, high_i), (low_j, high_j) = extents[i], extents[j]
        if high_i <= low_j or high_j <= low_i:
            continue  # apart
        if in_place[i] and in_place[j] and (low_i, high_i) == (low_j, high_j):
            continue  # one source's store twice: the same rows
        if in_place[i] == in_place[j] or several_cuts:
            raise _unplaceable()
        keep_off.append((j, i) if in_place[i] else (i, j))
    kept = here.copy()
    for cut, other in keep_off:
        low, high = extents[other]
        a, b = bounds[cut], bounds[cut + 1]
        kept[a:b] &= (old_ends[a:b] <= low) | (old_starts[a:b] >= high)
    for cut in {cut for cut, _ in keep_off}:
        # A cut is a part of this doc: it has characters of its own. One left with
        # no token in place lies wholly on a part whose every token is in place,
        # whose store then reaches over the cut's characters as well (a cut with
        # its user data, from a source with the joined doc's text there): which
        # rows are whose cannot be told, and reading the other's would be silently
        # wrong. (A cut of whitespace alone keeps its tokens without a vector.)
        a, b = bounds[cut], bounds[cut + 1]
        if (here[a:b] & with_vector[a:b]).any() and not kept[a:b].any():
            raise _unplaceable()
    return kept


def _runs_in_place(placed: numpy.ndarray) -> int:
    """How many runs of True `placed` has."""
    return int(placed[:1].sum()) + int(numpy.count_nonzero(placed[1:] & ~placed[:-1]))


def _unplaceable() -> "UnplacedOutputs":
    return UnplacedOutputs(
        "this doc joins docs made with span.as_doc(copy_user_data=True) (Doc.from_docs) whose stored outputs "
        "lie on the same characters; each carries its whole source's ctxembed outputs (spaCy does not trim "
        "them), so which outputs belong to which characters cannot be told; run the ctxembed component on the "
        "joined doc (nlp(doc) embeds it again), or join docs that went through the pipeline whole"
    )


def _placed_spans(parts: List[Tuple[int, Dict[str, Any]]]) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """The stored tokens' character spans, each part shifted to its origin in this doc."""
    starts = numpy.concatenate([numpy.asarray(p["starts"], dtype="int64") + origin for origin, p in parts])
    ends = numpy.concatenate([numpy.asarray(p["ends"], dtype="int64") + origin for origin, p in parts])
    return starts, ends


def _segment_mean(xp, values, tokens: numpy.ndarray, rows: numpy.ndarray, counts: numpy.ndarray):
    """out[t] = mean of values[rows[k]] over k with tokens[k] == t; zeros where none."""
    out = xp.zeros((len(counts),) + tuple(values.shape[1:]), dtype=values.dtype)
    if len(rows):
        gathered = values[xp.asarray(rows)]
        if xp is numpy:
            numpy.add.at(out, tokens, gathered)
        else:  # pragma: no cover - GPU only
            import cupyx

            cupyx.scatter_add(out, xp.asarray(tokens), gathered)
        divisor = xp.asarray(numpy.maximum(counts, 1.0)).reshape((-1,) + (1,) * (values.ndim - 1))
        out /= divisor.astype(values.dtype)
    return out


def _concat(arrays: List[Any], axis: int, on_host: bool = False):
    """The arrays joined along `axis`; on the host if `on_host` or if they are
    not all of one type (numpy cannot take cupy arrays, and a GPU doc joined
    with a host doc is no reason to move the host's part to the GPU)."""
    if on_host or len({type(a) for a in arrays}) > 1:
        arrays = [_to_numpy(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0]
    xp = get_array_module(arrays[0])
    return xp.concatenate(arrays, axis=axis)


def _data(doc: Doc) -> Dict[Any, Any]:
    # spaCy's stub types user_data by str; its keys are tuples too (extensions).
    return cast(Dict[Any, Any], doc.user_data)


def _store_key(n_chars: int, start: int = 0, ident: Optional[str] = None) -> tuple:
    """A new user-data key for a store for a doc of `n_chars` characters (from
    `start`, for a shifted one), unique to that store (see the module's
    docstring): by `ident`, else a random id. Random, not counted: a counter
    would repeat in the processes of `nlp.pipe(n_process=...)`."""
    return ("._.", f"{STORE}:{ident or os.urandom(8).hex()}", start, start + n_chars)


def _give_ids(doc: Doc) -> None:
    """Give the stores saved before keys had ids (named "ctxembed") one, so
    that cuts of this doc joined with others' keep their stores apart."""
    data = _data(doc)
    for key in [k for k in data if is_store_key(k) and k[1] == STORE]:
        data[_store_key(key[3] - key[2], key[2])] = data.pop(key)


def name_stores_by_content(doc: Doc) -> None:
    """Key each store in `doc`'s user data by a digest of its content rather
    than the random id it was written with: the same outputs then serialize to
    the same bytes (`embed` run again writes the same files), and stores that
    differ still never share a key. For host docs about to be saved (arrays
    read here: numpy, as `embed`'s writer makes them first)."""
    data = _data(doc)
    for key, store in _stores(doc):
        digest = hashlib.blake2b(repr((key[2], key[3], store.get("primary"), store.get("tensor_set"),
                                       store.get("conflict"), store.get("clashes"))).encode("utf8"),
                                 digest_size=16)
        for name in sorted(store["outputs"]):
            output = store["outputs"][name]
            digest.update(repr((name, output.get("signature"))).encode("utf8"))
            for field in ("starts", "ends", "orths", "vectors", "layers"):
                array = output.get(field)
                if array is not None:
                    array = numpy.ascontiguousarray(array)
                    digest.update(repr((field, array.dtype.str, array.shape)).encode("utf8"))
                    digest.update(array.tobytes())
        named = _store_key(key[3] - key[2], key[2], ident=digest.hexdigest())
        if named != key:
            data[named] = data.pop(key)


def is_store_key(key: Any) -> bool:
    """Whether a user-data key is a ctxembed store's (also as saved before ids: "ctxembed")."""
    return (isinstance(key, tuple) and len(key) == 4 and key[0] == "._." and isinstance(key[1], str)
            and (key[1] == STORE or key[1].startswith(STORE + ":")))


def _spans_whole(key: tuple, n_chars: int) -> bool:
    """Whether a store's key spans a whole doc of `n_chars` characters (is not shifted)."""
    return key[2] == 0 and key[3] == n_chars


def _to_numpy(array):
    if array is None or isinstance(array, numpy.ndarray):
        return array
    return array.get() if hasattr(array, "get") else numpy.asarray(array)


def _mean_of_covered(vectors):
    xp = get_array_module(vectors)
    covered = vectors.any(axis=1)
    if not int(covered.sum()):
        return xp.zeros((vectors.shape[1],), dtype=vectors.dtype)
    return vectors[covered].mean(axis=0)
