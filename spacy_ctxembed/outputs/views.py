"""A doc's outputs as read now (`View`), and where a doc finds its stores.

A doc's stores are in its user data, or, for a plain `span.as_doc()` that
has none, in the store of the doc it was cut from (`Source`, the pointer in
its hooks), placed by its text. A view aligns them to the doc's tokens
(`placement`) and says what cannot be read: outputs of one name from
different models, tokens no output covers. Views are memoised per doc, so
that token-by-token hooks after a retokenization realign once.
"""
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple, cast

import numpy
from spacy.attrs import ORTH, SPACY
from spacy.strings import StringStore
from spacy.tokens import Doc

from ..alignment import text_length, token_char_spans
from ..errors import shortened
from ..forksafe import ProcessLocal
from .placement import Placed, align_output, part_reaches, placed_spans, rows_of, stacked
from .store import (
    SOURCE_HOOK,
    STORE,
    MissingOutputs,
    doc_stores,
    merged_signature,
    read_only,
    signatures_agree,
    user_data_of,
)
from .tensor import tensor_source


class Source:
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


class View:
    """A doc's outputs aligned to its tokens at one moment."""

    def __init__(self, starts, ends, primary: Optional[str], outputs: Dict[str, Dict[str, Any]],
                 conflict: Tuple[str, ...] = (), *, signatures: Optional[Dict[str, Optional[str]]] = None,
                 clashes: Optional[Dict[str, str]] = None,
                 missing: Optional[Dict[str, Tuple[numpy.ndarray, str]]] = None,
                 unplaced: Optional[str] = None, placed: Optional[Dict[str, Placed]] = None) -> None:
        self.starts, self.ends = starts, ends
        self.primary = primary
        for output in outputs.values():
            for array in (output.get("vectors"), output.get("layers")):
                read_only(array)
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
        #: Per output: the stored tokens read (`stored_tokens`).
        self.placed = placed or {}

    def stored_tokens(self, name: str, low: int = 0, high: Optional[int] = None) -> Dict[str, Any]:
        """The stored tokens of output `name` that this view reads, as embedded
        (not as the doc's tokens are now), that lie on characters [low, high)
        (None: to the end): their spans in the doc's characters, rows, layers
        and words. What a cut of the doc keeps (`span_as_doc`)."""
        parts, here = self.placed[name]
        starts, ends = placed_spans(parts)
        keep = numpy.ones(len(starts), dtype=bool) if here is None else here.copy()
        if high is not None:
            keep &= ((starts < high) & (ends > low)) | ((starts == ends) & (starts >= low) & (starts <= high))
        # Each part's rows are picked before they are joined: a cut of a long doc
        # copies its own rows only (a loop over its sentences stays linear).
        picked, at = [], 0
        for origin, part in parts:
            n = len(part["starts"])
            index = numpy.flatnonzero(keep[at:at + n])
            picked.append((origin, part if len(index) == n else rows_of(part, index)))  # (all: as it is)
            at += n
        return stacked(picked, words=True)

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
        if end - start > 8 and 8 * (end - start) > len(doc):
            # Over an eighth of the doc: its spans in one Cython pass cost less
            # than a Python step per token (about 8 times as much per token).
            starts, ends = token_char_spans(doc)
            return bool(numpy.array_equal(starts[start:end], self.starts[start:end])
                        and numpy.array_equal(ends[start:end], self.ends[start:end]))
        # The rows' own tokens only: the whole doc's spans at each read made a
        # loop over a long doc's sentences (`span.vector`) quadratic.
        for i in range(start, end):
            token = doc[i]
            if self.starts[i] != token.idx or self.ends[i] != token.idx + len(token):
                return False
        return True


# Memo of aligned views, so token-by-token hooks after a retokenization
# realign once, not once per token. Weak: it never keeps a doc alive. Its
# lock and memo are per process (a forked child inherits the lock as it was).
# A memo: the stores (by identity), the view, and the user-data key of a doc's one store.
_Memo = Tuple[threading.Lock, "weakref.WeakKeyDictionary[Doc, Tuple[List[Any], View, Optional[tuple]]]"]


_VIEWS: ProcessLocal[_Memo] = ProcessLocal(lambda: (threading.Lock(), weakref.WeakKeyDictionary()))


def doc_view(doc: Doc, start: int = 0, end: Optional[int] = None) -> Optional[View]:
    end = len(doc) if end is None else end
    lock, memos = _VIEWS.get()
    with lock:
        memo = memos.get(doc)
    # The common case, a doc with its one store: found by the key the view was
    # made from, with that store alone (`doc_stores` scans all of the user data,
    # once per token hook if done here: other extensions' values are there too).
    if (memo is not None and memo[2] is not None and user_data_of(doc).get(memo[2]) is memo[0][0]
            and memo[1].fits(doc, start, end)):
        return memo[1]
    stores = doc_stores(doc)
    if not stores:
        # A plain cut (span.as_doc()) is placed in its source by its text: a
        # search of the source's text, too slow for every token's read (a loop
        # over a long cut's tokens was quadratic). A view made from the same
        # source's store for the same token spans still holds.
        source = doc.user_hooks.get(SOURCE_HOOK)
        if (memo is not None and isinstance(source, Source) and len(memo[0]) == 1
                and memo[0][0] is source.store and memo[1].fits(doc, start, end)):
            return memo[1]
        stores = source_store(doc)
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
    own_key = stores[0][0] if len(stores) == 1 and user_data_of(doc).get(stores[0][0]) is stores[0][1] else None
    with lock:
        memos[doc] = (identity, view, own_key)
    return view


def placed_view(doc: Doc) -> Optional[View]:
    """`doc_view(doc)`, where None means that the doc has no outputs: a cut that
    points to its source's store but cannot be placed in it (its text is
    there twice) is an error, as its vectors are (`unread_cut_error`), not
    a doc without outputs."""
    view = doc_view(doc)
    if view is None and isinstance(doc.user_hooks.get(SOURCE_HOOK), Source):
        raise unread_cut_error(doc)
    return view


def unread_cut_error(doc: Doc) -> MissingOutputs:
    """Why a doc with the vector hooks has no outputs to read: a cut (`span.as_doc()`)
    that cannot be placed in the doc it was cut from, which is named where known."""
    source = doc.user_hooks.get(SOURCE_HOOK)
    name = source.store.get("primary") if isinstance(source, Source) else None
    prefix = f"[{name}] " if name else ""
    shown = shortened(doc.text, 40)
    if isinstance(source, Source) and len(source_placements(doc, most=2)) > 1:
        # spaCy's as_doc gives a cut the hook dicts of the doc cut, so a cut of a cut
        # (copy_user_data or not) is placed in the first source: say so, where the
        # doc it was made from may have its text once.
        why = (f"this doc was made with span.as_doc() from a doc in which its text ({shown!r}) occurs more "
               "than once, so which tokens' vectors it has cannot be told (spaCy's as_doc reads them too; a cut "
               "of a cut is placed in the doc the first cut was made from, whose hooks spaCy's as_doc passes on)")
    else:
        why = ("this doc has the ctxembed vector hooks but no ctxembed outputs: a doc made with "
               "span.as_doc() from a doc whose text it cannot be placed in, or whose user data was dropped")
    return MissingOutputs(f"{prefix}{why}. Use spacy_ctxembed.span_as_doc(span) (span.as_doc(copy_user_data=True) "
                          "with the span's own outputs), or run the pipeline on it again.")


def source_store(doc: Doc) -> List[Tuple[tuple, Dict[str, Any]]]:
    """For a doc from `span.as_doc()`: the source's store, placed by the text."""
    # (A second place is enough to know: a short text may be in a long source many times, at every read.)
    placements = source_placements(doc, most=2)
    return placements if len(placements) == 1 else []  # not there, or there more than once: cannot be placed


def source_placements(doc: Doc, most: Optional[int] = None) -> List[Tuple[tuple, Dict[str, Any]]]:
    """For a doc from `span.as_doc()`: the source's store placed at each place its
    text occurs (the first `most` of them)."""
    source = doc.user_hooks.get(SOURCE_HOOK)
    if not isinstance(source, Source):
        return []
    text, placements = doc.text, []
    at = source.text.find(text)
    while at >= 0 and (most is None or len(placements) < most):
        placements.append((("._.", STORE, -at, len(source.text) - at), source.store))
        at = source.text.find(text, at + 1) if text else -1  # ("" is at 0, once)
    return placements


def _align(doc: Doc, stores: List[Tuple[tuple, Dict[str, Any]]]) -> View:
    starts, ends = token_char_spans(doc)
    names: List[str] = []
    for _, store in stores:
        names.extend(n for n in store["outputs"] if n not in names)
    outputs, signatures, missing, placed = {}, {}, {}, {}
    n_chars = text_length(doc)
    clashes: Dict[str, str] = {}
    for _, store in stores:  # (kept from docs joined before)
        clashes.update(store.get("clashes") or {})
    for name in names:
        parts = [(key[2], store["outputs"][name]) for key, store in stores if name in store["outputs"]]
        # Parts of empty docs hold no rows, and parts wholly off the doc's text (a
        # cut's source's, past the cut) none of its tokens: whatever made them,
        # they mix with nothing (nor do they drop the others' stored layers).
        reaches = [part_reaches(part, n_chars) for part in parts]
        # (Each part with tokens, all off the doc, is a cut's source's, so this doc holds a cut:
        # `placement._own_regions`.)
        off_doc = sum(1 for part, on in zip(parts, reaches) if len(part[1]["starts"]) and not on)
        parts = [part for part, on in zip(parts, reaches) if on] or parts[:1]
        known = sorted({p["signature"] for _, p in parts if p.get("signature")})
        signatures[name] = merged_signature(known) if known and signatures_agree(known) else None
        clash = clashes.get(name) or _clash(parts, known)
        if clash:  # one name, different models: no single output
            clashes[name] = clash
            continue
        outputs[name], uncovered, placed[name] = align_output(parts, starts, ends, doc, off_doc)
        if uncovered is not None:
            missing[name] = (read_only(uncovered), _where(doc, uncovered))
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
    return View(starts, ends, primary, outputs, conflict, signatures=signatures, clashes=clashes,
                 missing=missing, unplaced=unplaced, placed=placed)


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
    if not signatures_agree(signatures):
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
        "spacy_ctxembed.span_as_doc(span)), or that did not go through this component, or whose outputs "
        "were dropped (doc._.ctx_outputs = None: spaCy's doc_cleaner), or whose token offsets did not match its "
        "text when the component ran (spaCy's Doc.from_array with SPACY changes the spaces but not token.idx), "
        "or, in a doc joined with Doc.from_docs, a token split at the edge of a cut (span.as_doc(copy_user_data="
        "True) after a retokenizer split) that is not at the joined doc's own edge (a merge across such text "
        "and text with outputs leaves part of the merged token uncovered), or such a cut read with a vocab "
        "whose string store lacks the split token's text, which then cannot be checked (DocBin.get_docs(Vocab())"
        ": read it with the pipeline's nlp.vocab); "
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
    text = shortened(doc[first:end].text, 40)
    return f"{int(mask.sum())} of its {len(mask)} tokens (from token {first}: {text!r})"


def embedded_store(doc: Doc, view: View, stores: List[Tuple[tuple, Dict[str, Any]]]) -> Dict[str, Any]:
    """The outputs `doc` reads (`view`, from `stores`), as one store of the stored
    tokens it places, as they were embedded (`View.stored_tokens`), not as its
    tokens are now: what a cut of it (`span.as_doc()`) reads by the rule, as
    `span_as_doc` does. (A store of its tokens as they are now made a merge
    in the cut of pieces split in the doc count their token once per piece.)"""
    outputs = {name: stored_output(view.stored_tokens(name), view.signatures.get(name)) for name in view.outputs}
    return store_from_view(view, outputs, tensor_source(doc, stores))


def stored_output(tokens: Dict[str, Any], signature: Optional[str]) -> Dict[str, Any]:
    """A store's entry of one output from its stored tokens (as `View.stored_tokens`
    gives them), its arrays read-only."""
    layers = tokens["layers"]
    return {"starts": tokens["starts"], "ends": tokens["ends"], "orths": tokens["orths"],
            "vectors": read_only(tokens["vectors"]), "layers": None if layers is None else read_only(layers),
            "signature": signature}


def store_from_view(view: View, outputs: Dict[str, Dict[str, Any]], tensor_set: Any) -> Dict[str, Any]:
    """One store of `outputs` (`stored_output`s) with what `view` says of them:
    the primary, and outputs joined from different components or models."""
    return {"primary": view.primary, "outputs": outputs, "conflict": view.conflict, "clashes": dict(view.clashes),
            "tensor_set": tensor_set or False}
