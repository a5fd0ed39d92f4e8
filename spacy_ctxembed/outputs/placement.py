"""Stored rows placed on a doc's tokens now, by character overlap.

The rule (the package's docstring): a token with an embedded token's span
gets its row, a merged token the mean of the rows it covers, a split one the
row it came from. Stored tokens whose text is not the doc's where they would
lie are left out (`_placed_here`), as are those of a cut lying on another
part's characters in a joined doc (`_own_regions`), and a token whose
characters were embedded only in part gets no row: each is an output read
onto the wrong words otherwise.
"""
import heapq
from typing import Any, Dict, List, Optional, Tuple

import numpy
from spacy.attrs import ORTH
from spacy.strings import get_string_id
from spacy.tokens import Doc
from thinc.api import get_array_module

from ..alignment import align_pieces, blank_tokens, partly_uncovered, text_length
from .store import UnplacedOutputs, concat, to_numpy


def part_reaches(part: Tuple[int, Dict[str, Any]], n_chars: int) -> bool:
    """Whether a stored part has a token on characters [0, n_chars) of the doc."""
    origin, output = part
    starts, ends = numpy.asarray(output["starts"]) + origin, numpy.asarray(output["ends"]) + origin
    overlaps = (starts < n_chars) & (ends > 0)
    empty_inside = (starts == ends) & (starts >= 0) & (starts <= n_chars)  # (a token of no characters)
    return bool((overlaps | empty_inside).any())


#: The stored tokens a doc reads of one output: its parts (shifted to their origins in
#: the doc) and the mask of their tokens it places (None: all). See `stacked`.
Placed = Tuple[List[Tuple[int, Dict[str, Any]]], Optional[numpy.ndarray]]


def align_output(parts: List[Tuple[int, Dict[str, Any]]], starts, ends, doc: Doc, off_doc: int
                  ) -> Tuple[Dict[str, Any], Optional[numpy.ndarray], Placed]:
    """One component's rows for `doc`'s tokens, with character spans [starts, ends),
    the mask of the tokens no stored token of it overlaps, or overlaps only in
    part (None: none), and the stored tokens it places (`Placed`).

    A token that overlaps stored tokens without a vector (whitespace) has no
    vector, as has a whitespace token that overlaps none (" " split off "New
    York"); any other that overlaps none has no output at all: its characters
    were never embedded by this component, which the caller must not pass off
    as "no vector". Stored tokens whose text is not the doc's text where they are
    placed are left out (`_placed_here`)."""
    if len(parts) == 1:
        parts = [within(parts[0], text_length(doc))]
    stored = stacked(parts)
    old_starts, old_ends, vectors, layers = stored["starts"], stored["ends"], stored["vectors"], stored["layers"]
    has_layers = layers is not None
    if (len(parts) == 1 and numpy.array_equal(old_starts, starts) and numpy.array_equal(old_ends, ends)
            and _same_orths(parts[0][1], doc)):
        return ({"vectors": vectors, "layers": layers} if has_layers else {"vectors": vectors}), None, (parts, None)
    xp = get_array_module(vectors)
    covered = to_numpy(vectors.any(axis=1)) if len(vectors) else numpy.zeros(0, dtype=bool)
    text = doc.text  # (a Python call per token: read once, for both checks)
    here = _placed_here(parts, old_starts, old_ends, starts, ends, doc, text, covered, off_doc)
    alignment = align_pieces(old_starts, old_ends, starts, ends)
    alignment = alignment.kept(here[alignment.piece_index])
    # A token whose characters were embedded only in part takes no row (a zero
    # one, missing): the rest of it never was.
    partly = partly_uncovered(text, old_starts[here], old_ends[here], starts, ends)
    alignment = alignment.kept(~partly[alignment.token_index])
    # A whitespace token on characters between stored tokens (split off a merge)
    # has no vector, as a stored whitespace token has: no text of it is missing.
    uncovered = ~alignment.covered_tokens() & ~blank_tokens(text, starts, ends)
    keep = covered[alignment.piece_index]
    tokens, rows = alignment.token_index[keep], alignment.piece_index[keep]
    counts = numpy.bincount(tokens, minlength=len(starts)).astype("float32")
    result = {"vectors": _segment_mean(xp, vectors, tokens, rows, counts)}
    if has_layers:
        moved = xp.ascontiguousarray(xp.transpose(layers, (1, 0, 2)))
        result["layers"] = xp.ascontiguousarray(xp.transpose(_segment_mean(xp, moved, tokens, rows, counts), (1, 0, 2)))
    return result, (uncovered if uncovered.any() else None), (parts, here)


def stacked(parts: List[Tuple[int, Dict[str, Any]]], *, words: bool = False) -> Dict[str, Any]:
    """The parts' stored tokens as one output: their spans shifted to their
    origins in the doc, their rows and layers, and with `words` their words
    ("orths"; layers and words None where a part has none)."""
    starts, ends = placed_spans(parts)
    has_layers = all(p.get("layers") is not None for _, p in parts)
    arrays = [p[key] for _, p in parts for key in (("vectors", "layers") if has_layers else ("vectors",))]
    # Docs joined from the host and from the GPU (Doc.from_docs): all on the host.
    on_host = len({type(a) for a in arrays}) > 1
    has_orths = words and all(p.get("orths") is not None for _, p in parts)
    return {
        "starts": starts, "ends": ends,
        "vectors": concat([p["vectors"] for _, p in parts], axis=0, on_host=on_host),
        "layers": concat([p["layers"] for _, p in parts], axis=1, on_host=on_host) if has_layers else None,
        "orths": (numpy.concatenate([numpy.asarray(p["orths"], dtype="uint64") for _, p in parts])
                  if has_orths else None),
    }


def within(part: Tuple[int, Dict[str, Any]], n_chars: int) -> Tuple[int, Dict[str, Any]]:
    """A lone part less its stored tokens that lie wholly off characters
    [0, n_chars) of the doc: a cut's store is its whole source's (its
    placement in the source, or `copy_user_data=True`), and work that scaled
    with the source made a loop over a long doc's sentences quadratic.

    Only for a lone part: those tokens give the doc no row (they overlap none
    of its tokens), and what is read of them is whether they are in place,
    which matters only beside other parts (`_own_regions`). (`tensor_source`
    asks of any part's first: a doc's tensor rows are mostly its own tokens'.)
    A doc's tokens are sorted and do not overlap, so both ends are found by
    bisection."""
    origin, output = part
    starts, ends = numpy.asarray(output["starts"]), numpy.asarray(output["ends"])
    low = int(numpy.searchsorted(ends, -origin, side="right"))  # the first with ends + origin > 0
    high = int(numpy.searchsorted(starts, n_chars - origin, side="left"))  # past the last with start < n_chars
    if low == 0 and high == len(starts):
        return part
    return origin, rows_of(output, slice(low, high))


def rows_of(output: Dict[str, Any], index) -> Dict[str, Any]:
    """An output's stored tokens at `index` (a slice, or host row numbers): spans, words, rows and layers."""
    rows = index if isinstance(index, slice) else get_array_module(output["vectors"]).asarray(index)
    kept = {**output, "starts": numpy.asarray(output["starts"])[index], "ends": numpy.asarray(output["ends"])[index],
            "vectors": output["vectors"][rows]}
    if output.get("orths") is not None:
        kept["orths"] = numpy.asarray(output["orths"])[index]
    if output.get("layers") is not None:
        kept["layers"] = output["layers"][:, rows]
    return kept


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
    for i, j in _overlapping(extents):
        (low_i, high_i), (low_j, high_j) = extents[i], extents[j]
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


def _overlapping(extents: Dict[int, Tuple[int, int]]) -> List[Tuple[int, int]]:
    """The pairs (i, j), i < j, of `extents` ([low, high) by part) that overlap:
    low_i < high_j and low_j < high_i. Swept in order of low ends, each
    compared only with those not yet ended: every pair would make a
    `Doc.from_docs` of many docs quadratic, where parts lie apart."""
    pairs: List[Tuple[int, int]] = []
    ending: List[Tuple[int, int]] = []  # (high, part) of the parts begun, lowest high first
    for j in sorted(extents, key=lambda part: extents[part][0]):
        low_j, high_j = extents[j]
        while ending and ending[0][0] <= low_j:  # ended at or before low_j: apart from it and all after it
            heapq.heappop(ending)
        pairs.extend((min(i, j), max(i, j)) for _, i in ending if extents[i][0] < high_j)
        heapq.heappush(ending, (high_j, j))
    return sorted(pairs)


def _runs_in_place(placed: numpy.ndarray) -> int:
    """How many runs of True `placed` has."""
    return int(placed[:1].sum()) + int(numpy.count_nonzero(placed[1:] & ~placed[:-1]))


def _unplaceable() -> UnplacedOutputs:
    return UnplacedOutputs(
        "this doc joins docs made with span.as_doc(copy_user_data=True) (Doc.from_docs) whose stored outputs "
        "lie on the same characters; each carries its whole source's ctxembed outputs (spaCy does not trim "
        "them), so which outputs belong to which characters cannot be told; run the ctxembed component on the "
        "joined doc (nlp(doc) embeds it again), or join cuts made with spacy_ctxembed.span_as_doc(span), which "
        "keep only their own outputs, or docs that went through the pipeline whole"
    )


def placed_spans(parts: List[Tuple[int, Dict[str, Any]]]) -> Tuple[numpy.ndarray, numpy.ndarray]:
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
