"""`doc._.ctx_outputs`, `doc._.ctx_vectors`, `doc._.ctx_layers`: writing, reading, dropping.

`write_outputs` is what a component calls; the getters read through a view
(`views`). The setters of `ctx_outputs` and `ctx_layers` take None only,
which drops them (spaCy's `doc_cleaner`, before docs are saved): without
setters, `doc._.ctx_outputs = None` wrote a user-data key of its own that
nothing reads, and the outputs stayed, silently. `ctx_vectors` (the
primary's alone) refuses any value, None included. `restore_vectors`
re-attaches the hooks that serialization drops.
"""
import copy
import warnings
from typing import Any, Dict, Optional, Tuple, cast

import numpy
from spacy.attrs import IDX, LENGTH, ORTH, SPACY
from spacy.tokens import Doc, Span

from ..alignment import text_length
from .hooks import DOC_HOOKS, SPAN_HOOKS, TOKEN_HOOKS, describe, set_source_pointer, set_vector_hooks
from .store import (
    SOURCE_HOOK,
    MissingOutputs,
    UnplacedOutputs,
    doc_stores,
    give_ids,
    read_only,
    shown_value,
    signature_difference,
    signatures_agree,
    spans_whole,
    store_key,
    store_problem,
    user_data_of,
)
from .tensor import set_tensor, tensor_source
from .views import (
    Source,
    doc_view,
    embedded_store,
    placed_view,
    source_placements,
    source_store,
    store_from_view,
    stored_output,
)

OUTPUTS, VECTORS, LAYERS = "ctx_outputs", "ctx_vectors", "ctx_layers"

#: The user-data keys of version 0.1, read by `restore_vectors` for its DocBin files.
_V1_VECTORS = ("._.", VECTORS, None, None)

_V1_LAYERS = ("._.", LAYERS, None, None)


def install_extensions() -> None:
    """Register `doc._.ctx_outputs`, `doc._.ctx_vectors` and `doc._.ctx_layers` (once)."""
    accessors = {OUTPUTS: (get_outputs, drop_outputs), VECTORS: (get_vectors, _refuse_vectors),
                 LAYERS: (get_layers, drop_layers)}
    for name, (getter, setter) in accessors.items():
        if not Doc.has_extension(name):
            Doc.set_extension(name, getter=getter, setter=setter)


def drop_outputs(doc: Doc, value: Any = None) -> None:
    """`doc._.ctx_outputs = None`: drop every ctxembed output from `doc`: the
    stores in its user data, the vector hooks, the pointer to the doc it was
    cut from, and `doc.tensor` where a ctxembed component set it."""
    _check_dropped(OUTPUTS, value)
    # Unchecked: a store edited by hand, which no read takes, is dropped too.
    stores = doc_stores(doc, checked=False)
    # A cut reads its source's store, and has its tensor's rows: wherever its text is in the source.
    placements = [stores] if stores else [[store] for store in source_placements(doc)]
    if any(store_problem(store) is not None for _, store in stores):
        # (Its rows cannot be compared with doc.tensor: what the store says of it is taken.)
        ours = any(store.get("tensor_set", True) for _, store in stores)  # (earlier versions: the primary's)
    else:
        ours = any(tensor_source(doc, placed) is not None for placed in placements)
    if ours:
        doc.tensor = numpy.zeros((0,), dtype="float32")  # (as a new Doc has it)
    if SOURCE_HOOK in doc.user_hooks:
        # spaCy's as_doc keeps the span's vector and norm (ours) as the cut's
        # own: forgotten, so that the cut reads as a doc without outputs.
        cast(Any, doc).vector = cast(Any, doc).vector_norm = None
    for key, _ in stores:
        del user_data_of(doc)[key]
    for name in (_V1_VECTORS, _V1_LAYERS):
        user_data_of(doc).pop(name, None)
    # Fresh dicts, ours only removed: span.as_doc() shares the source's hook dicts.
    doc.user_hooks = {k: v for k, v in doc.user_hooks.items() if k != SOURCE_HOOK and DOC_HOOKS.get(k) is not v}
    doc.user_span_hooks = {k: v for k, v in doc.user_span_hooks.items() if SPAN_HOOKS.get(k) is not v}
    doc.user_token_hooks = {k: v for k, v in doc.user_token_hooks.items() if TOKEN_HOOKS.get(k) is not v}


def drop_layers(doc: Doc, value: Any = None) -> None:
    """`doc._.ctx_layers = None`: drop the stored layers of every output
    (`store_layers = true`), keeping the vectors."""
    _check_dropped(LAYERS, value)
    for key, store in doc_stores(doc):  # new dicts: as_doc and from_docs share stores shallowly
        user_data_of(doc)[key] = _without_layers(store)
    user_data_of(doc).pop(_V1_LAYERS, None)
    source = doc.user_hooks.get(SOURCE_HOOK)
    if isinstance(source, Source):  # a cut that reads its source's store
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
        raise ValueError(f"doc._.{attribute} is written by ctxembed components; it can only be set to None, which "
                         f"drops it (spaCy's doc_cleaner), not to {shown_value(value)}")


def write_outputs(
    doc: Doc, name: str, vectors, layers, *, primary: bool, set_doc_tensor: bool, signature: Optional[str] = None,
    weights_signed: bool = True,
) -> None:
    """Store one component's outputs on `doc`, computed for its current tokens.

    signature: what made them (the component's model and settings, see
        `ContextualEmbedder`); outputs of one name from different models are
        then never mixed or compared. None: not known (the vectors of a
        version 0.1 DocBin, converted by `restore_vectors`: they recorded none).
    weights_signed: whether the signature fingerprints the weights that made
        them: not `ctxembed_from_trf`'s, which does not see its transformer's.
    """
    # One pass in Cython for what the output and the as_doc pointer keep of the tokens.
    tokens = doc.to_array([IDX, LENGTH, ORTH, SPACY])
    starts = tokens[:, 0].astype("int64")
    # The doc's length (`text_length`), from the last token's row.
    n_chars = int(tokens[-1, 0] + tokens[-1, 1] + tokens[-1, 3]) if len(tokens) else 0
    stores = doc_stores(doc)
    whole = stores[0] if len(stores) == 1 and spans_whole(stores[0][0], n_chars) else None
    old = whole[1] if whole is not None else None
    tensor_from: Optional[str] = None
    if whole is not None:
        tensor_from = tensor_source(doc, [whole])
    elif stores or SOURCE_HOOK in doc.user_hooks:  # (else there are no outputs to keep: a doc's first)
        old = _gathered_store(doc)
        if old is not None:
            tensor_from = old["tensor_set"] or None
        else:  # a cut that cannot be placed (its text is in its source twice): its tensor is still its rows
            placed = source_placements(doc, most=1)
            tensor_from = tensor_source(doc, placed) if placed else None
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
    outputs[name] = {"starts": starts, "ends": ends, "orths": orths, "vectors": read_only(vectors),
                     "layers": read_only(layers), "signature": signature}
    if primary and set_doc_tensor and set_tensor(doc, name, vectors, ours=tensor_from is not None):
        tensor_from = name
    # A new dict, never an update in place: spaCy's as_doc and from_docs copy
    # the store shallowly, so other docs may share the old one. `tensor_set`
    # names the output whose vectors doc.tensor is (False: none).
    store: Dict[str, Any] = {"primary": name if primary else current, "outputs": outputs,
                             "tensor_set": tensor_from or False}
    if not primary and old is not None and old.get("conflict"):
        store["conflict"] = old["conflict"]  # still no single primary (see `View.primary_output`)
    # Outputs of other names that joined docs had from different models stay unreadable.
    clashes = {k: v for k, v in (old.get("clashes") or {}).items() if k != name} if old is not None else {}
    if clashes:
        store["clashes"] = clashes
    if whole is not None:
        del user_data_of(doc)[whole[0]]  # (replaced by the new store, under a key of its own)
    user_data_of(doc)[store_key(n_chars)] = store
    if primary:
        set_vector_hooks(doc, Source(doc, store, numpy.ascontiguousarray(tokens[:, 2:])))
    else:
        # Only the as_doc pointer must see the new output: the vector and
        # similarity hooks stay as they are (a later component may have set
        # its own). A doc with non-primary outputs only gets the pointer too,
        # or a plain cut of it would read as a doc without outputs.
        source = Source(doc, store, numpy.ascontiguousarray(tokens[:, 2:]))
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
    `ctxembed_from_trf`'s of another transformer: its signature holds no
    transformer's weights.) `output` None: the primary outputs cannot be read
    (joined from docs of different models)."""
    if output is None:
        raise ValueError(
            f"[{name}] (primary = false) would replace the doc's primary vectors, which are stored under the same "
            f"name {name!r} and cannot be read (joined with Doc.from_docs from docs of different models): its "
            "vectors would read as the primary ones. Give it another name (nlp.add_pipe(..., name=...)), or set "
            "primary = true on it to make its vectors the doc's"
        )
    stored = output.get("signature")
    if stored and signature and not signatures_agree([stored, signature]):
        raise ValueError(
            f"[{name}] (primary = false) would replace the doc's primary vectors, which are stored under the same "
            f"name {name!r} and were made by another model or with other settings "
            f"({signature_difference(stored, signature)}): "
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


def _gathered_store(doc: Doc) -> Optional[Dict[str, Any]]:
    """A doc whose outputs are in shifted stores (`Doc.from_docs`,
    `span.as_doc(copy_user_data=True)`) or in its source's (`span.as_doc()`):
    the stored tokens it reads of them, as embedded, as one whole-doc store
    (`embedded_store`: a merge since of pieces split before still averages
    the embedded tokens), so that writing one more output keeps them. The shifted
    stores are then dropped: the whole-doc store, read first, replaces them.
    Outputs that cannot be placed at all (`UnplacedOutputs`) are dropped,
    with a warning: the output being written replaces its own."""
    try:
        view = doc_view(doc)
    except UnplacedOutputs as err:
        warnings.warn(f"{err} (their stored outputs are dropped from this doc)", stacklevel=4)
        stores = doc_stores(doc)
        # (The tensor spaCy joined from the cuts' tensors: each cut's rows are its own tokens'.)
        tensor_from = tensor_source(doc, stores)
        for key, _ in stores:
            user_data_of(doc).pop(key, None)
        return {"primary": None, "outputs": {}, "tensor_set": tensor_from or False}
    if view is None:
        return None
    stores = doc_stores(doc) or source_store(doc)
    store = embedded_store(doc, view, stores)
    for key, _ in stores:  # (a source store is not in this doc's user data: nothing to drop)
        user_data_of(doc).pop(key, None)
    return store


def restore_vectors(doc: Doc) -> Doc:
    """Re-attach `Token.vector` & co. to a doc whose hooks were not serialized.

    `Doc.to_bytes`, `DocBin`, `Doc.from_docs` and `nlp.pipe(n_process=...)`
    keep the outputs (in user data) but drop user hooks. After
    `docs = [restore_vectors(d) for d in doc_bin.get_docs(nlp.vocab)]`
    their vectors behave as when they left the pipeline. (`doc.tensor` is
    not set again: a DocBin does not keep it, and spaCy's `Doc.from_docs`
    refuses to join a doc without one to one with one.) Docs written by version
    0.1 (`doc._.ctx_vectors` in user data) are converted.
    """
    if not isinstance(doc, Doc):
        raise TypeError(f"restore_vectors: expected a Doc, got {describe(doc)}")
    install_extensions()
    give_ids(doc)
    if not doc_stores(doc) and _V1_VECTORS in user_data_of(doc):
        vectors = user_data_of(doc).pop(_V1_VECTORS)
        layers = user_data_of(doc).pop(_V1_LAYERS, None)
        if vectors is None or len(vectors) != len(doc):
            raise MissingOutputs(f"restore_vectors: the doc's stored vectors do not have one row per token "
                                 f"({None if vectors is None else len(vectors)} rows, {len(doc)} tokens)")
        write_outputs(doc, "ctxembed_v1", vectors, layers, primary=True, set_doc_tensor=False)
        return doc
    if get_vectors(doc) is None:
        if doc_stores(doc):  # non-primary outputs only: they set no vector hooks in the pipeline either
            set_source_pointer(doc)
            return doc
        raise MissingOutputs(
            "restore_vectors: the doc holds no ctxembed outputs: it did not go through a ctxembed component, "
            "or its user data was dropped (use DocBin(store_user_data=True)), or they were (doc._.ctx_outputs = "
            "None: spaCy's doc_cleaner), or it is a span.as_doc() that read them from the doc it was cut from "
            "(save spacy_ctxembed.span_as_doc(span))"
        )
    set_vector_hooks(doc)
    return doc


def span_as_doc(span: Span) -> Doc:
    """`span.as_doc(copy_user_data=True)`, holding the span's own ctxembed outputs only.

    spaCy copies the whole source's user data into such a cut, so it carries
    its source's outputs for every token of the source. Alone it reads
    right, but joined with other cuts (`Doc.from_docs`), each one's stored
    tokens reach onto the others' characters, where which rows are whose
    cannot be told (`UnplacedOutputs`). A cut made here holds one store: the
    stored tokens its source reads on the span's characters, as they were
    embedded (a merge split back in the cut gives each token its own row
    again), and one cut through by the span's edge (a split in the source)
    with its row, clipped to the span. So cuts of any docs, in any order (the
    same cut twice too), join, and after `restore_vectors` read their sources'
    rows. A span of a doc whose outputs cannot be read raises the error that
    reading them gives.
    """
    if not isinstance(span, Span):
        raise TypeError(f"span_as_doc: expected a Span, got {describe(span)}")
    view = placed_view(span.doc)
    cut = span.as_doc(copy_user_data=True)
    data = user_data_of(cut)
    stores = doc_stores(cut)
    low = span.start_char
    # A span of a plain cut (`span.as_doc()`, no stores of its own) is placed where
    # the span's doc is, not by its own text, which may occur more than once in
    # the source ("I" of "I ran ... I ran"): its tensor was then taken for another
    # component's, and left stale by the component run on the cut.
    placed = stores or [(("._.", key[1], key[2] - low, key[3] - low), store) for key, store in source_store(span.doc)]
    tensor_from = tensor_source(cut, placed)
    for key, _ in stores:
        del data[key]
    if view is None:
        return cut
    n_chars = text_length(cut)
    text = cut.text  # (the span's characters: span.doc.text would join the whole doc's tokens)
    outputs = {name: _within_cut(view.stored_tokens(name, low, low + n_chars), low, text, cut.vocab.strings,
                                 view.signatures.get(name))
               for name in view.outputs}
    data[store_key(n_chars)] = store_from_view(view, outputs, tensor_from)
    return restore_vectors(cut)


def _within_cut(tokens: Dict[str, Any], low: int, text: str, strings: Any, signature: Optional[str]
                ) -> Dict[str, Any]:
    """The stored tokens on characters [low, low + len(text)) of a doc, moved to
    a cut of them (of `text`): a token the cut's edge passes through is kept
    with its row and clipped, its word the text it keeps (added to the cut's
    `strings`), so that no stored token reaches past the cut."""
    starts, ends, high = tokens["starts"], tokens["ends"], low + len(text)
    clipped_starts = numpy.clip(starts, low, high) - low
    clipped_ends = numpy.clip(ends, low, high) - low
    orths = tokens["orths"]
    if orths is not None:
        orths = orths.copy()
        for i in numpy.flatnonzero((starts < low) | (ends > high)):
            orths[i] = strings.add(text[clipped_starts[i]:clipped_ends[i]])
    return stored_output({**tokens, "starts": clipped_starts, "ends": clipped_ends, "orths": orths}, signature)


def get_outputs(doc: Doc) -> Dict[str, Dict[str, Any]]:
    """Per component: {"vectors": (n_tokens, width), "layers": (n_layers, n_tokens, width) or absent},
    and "missing" where it covers only some tokens (`View.readable_outputs`)."""
    view = placed_view(doc)
    # New dicts: the view's are memoised and read by `token.vector` & co., so
    # `doc._.ctx_outputs[name]["vectors"] = ...` (or a `.pop`) would change
    # what they read until the doc's tokens change. (The arrays are read-only.)
    return {} if view is None else {name: dict(output) for name, output in view.readable_outputs().items()}


def stored_signature(doc: Doc, name: Optional[str]) -> Optional[str]:
    """The signature stored with `name`'s output on `doc` (what made it); None
    where there is none, or the outputs cannot be read (reading them says why)."""
    try:
        view = placed_view(doc)
    except MissingOutputs:
        return None
    return None if view is None or name is None else view.signatures.get(name)


def read_output(doc: Doc, name: Optional[str]) -> Tuple[Optional[str], Optional[Dict[str, Any]], Optional[str]]:
    """(The name read, its output as in `get_outputs`, the signature stored
    with it) from one view of the doc, for a listener: `name`'s, or with None
    the doc's one output's; an output None where there is none."""
    view = placed_view(doc)
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
    view = placed_view(doc)
    return None if view is None else view.primary_output()
