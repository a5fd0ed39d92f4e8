"""`spacy-ctxembed.TrfEncoder.v2`: pool an upstream spacy-transformers output.

Reads `doc._.trf_data` (written by spacy-transformers' `transformer`
component) and pools its wordpiece states to tokens through its own
alignment, `trf_data.align`, without running the transformer again. The
transformer belongs to the upstream component, so the gradient stops here.

Its settings come from the config in every path: thinc saves a model's attrs
with its bytes and puts the saved values back on `from_bytes`, but not these
(`settings.FromConfig`), as the BERT and ELMo encoders keep theirs in a shim.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy
from spacy.attrs import IS_SPACE
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, torch2xp, xp2torch

from ..alignment import PieceAlignment
from ..errors import bad_setting, check_choice, warn
from ..pooling import pool_pieces
from ..settings import (
    FromConfig,
    check_layers,
    config_value,
    layer_count,
    layers_as_given,
    normalize_layers,
    warn_repeated_layers,
)
from ..trf_alignment import AlignedPieces, check_not_retokenized, own_lengths, space_only_pairs, text_lengths
from ..types import POOLING_MODES, DocLayers, EncoderModel

COMPONENT = "ctxembed_from_trf"
#: The thinc model's name (`embedder.check_encoder_settings` finds it by it).
MODEL_NAME = "ctxembed-trf-encoder"
#: What it reads, as spaCy's pipe metadata names it (spacy-transformers' `transformer` assigns it).
TRF_DATA = "doc._.trf_data"


@registry.architectures("spacy-ctxembed.TrfEncoder.v2")
def TrfEncoder(*, layers: Sequence[int] = (-1,), pooling: str = "mean") -> EncoderModel:
    """The upstream transformer's selected layers, pooled to tokens."""
    settings = {"layers": layers_as_given(layers), "pooling": pooling}
    return Model(
        MODEL_NAME,
        forward,
        init=init,
        dims={"nO": None, "nL": layer_count(settings["layers"])},
        attrs={"settings": FromConfig(settings)},
    )


def check_settings(settings: dict) -> None:
    check_layers(COMPONENT, settings["layers"])
    check_choice(COMPONENT, "pooling", settings["pooling"], POOLING_MODES)


def _settings(model: EncoderModel) -> dict:
    return config_value(model.attrs["settings"])


def forward(model: EncoderModel, docs: List[Doc], is_train: bool) -> Tuple[List[DocLayers], Callable]:
    # Empty docs, and docs the upstream's span getter gave no span, carry no
    # transformer output: they need only the width, taken from the batch's
    # other docs or from what the upstream said.
    piece_texts: Dict[str, Optional[str]] = {}  # (`_piece_text` of each piece string, for the batch)
    pooled = [None if len(doc) == 0 else _pool_doc(model, doc, piece_texts) for doc in docs]
    widths = [p.shape[2] for p in pooled if p is not None]
    if widths and model.has_dim("nO") is not True:
        # Not initialized with the pipeline (added to a loaded one): the first
        # output gives the width, so that later empty docs get (0, width) too.
        model.set_dim("nO", widths[0])
    width = model.get_dim("nO") if model.has_dim("nO") is True else 0
    other = next((w for w in widths if w != width), None)
    if other is not None:
        # Another transformer's outputs (one swapped in after initialize, or docs of
        # another pipeline): the combiner and listeners are sized for this width,
        # and empty docs would still get it.
        raise ValueError(
            f"[{COMPONENT}] doc._.trf_data holds transformer outputs of width {other}, but the component's "
            f"width (nO) is {width}, that of the transformer it was initialized with (or loaded with, or first "
            "read): its combiner and the components listening to it are sized for that one. The transformer "
            "before it was replaced, or the docs come from another one: to pool the new transformer, initialize "
            "the pipeline again (nlp.initialize()), with the components listening to this one added anew"
        )
    if not width and any(len(doc) for doc in docs):
        raise ValueError(
            f"[{COMPONENT}] no doc in this batch has a transformer output, so the vectors' width is "
            "unknown: initialize the pipeline (nlp.initialize()), or give the transformer's span getter "
            "spans for every non-empty doc"
        )
    n_layers = len(_settings(model)["layers"])
    outputs = [model.ops.alloc3f(n_layers, len(doc), width) if p is None else p for doc, p in zip(docs, pooled)]
    return outputs, lambda d_outputs: []


def init(model: EncoderModel, X: Optional[List[Doc]] = None, Y=None) -> None:
    settings = _settings(model)
    check_settings(settings)
    # (As written: the upstream's depth, which `[-1, 12]` may name twice, is known
    # from its outputs only, and said at the first doc: `_select_layers`.)
    warn_repeated_layers(COMPONENT, settings["layers"], settings["layers"])
    # Initialized (trained again, say after an edit was refused): what loaded
    # bytes held is no longer what anything was trained on (`FromConfig.saved`).
    model.attrs["settings"] = FromConfig(settings)


def _pool_doc(model: EncoderModel, doc: Doc, piece_texts: Dict[str, Optional[str]]) -> Optional[DocLayers]:
    trf_data = doc._.get("trf_data") if Doc.has_extension("trf_data") else None
    if trf_data is None:
        # (In training, spacy-transformers' update sends its outputs to its own
        # listeners, not to the docs; and no gradient goes back to it from here.)
        raise ValueError(
            f"[{COMPONENT}] doc._.trf_data is missing: add a spacy-transformers 'transformer' component before "
            "this one in the pipeline; in training, list it in [training] annotating_components, and in "
            "frozen_components (it is not fine-tuned through this component). A doc made by Doc.from_docs or "
            "Span.as_doc has none (spaCy does not carry it over): run the transformer on it"
        )
    settings = _settings(model)
    states = _select_layers(settings["layers"], trf_data.model_output) if trf_data.model_output else None
    if states is None or states[0].size == 0:
        # The upstream's span getter gave this doc no span (or only spans of no
        # piece): no token has a piece. Said, as for any token without one.
        _warn_if_unaligned(doc, PieceAlignment.from_lengths([], numpy.zeros(len(doc), dtype="int64"), 0),
                           doc.to_array(IS_SPACE).astype(bool))
        return None
    width = states[0].shape[-1]
    # (n_spans, span_len, width) per layer -> (n_pieces, n_layers, width); float32 whatever
    # the transformer ran in (fp16 outputs would give fp16 vectors).
    flat = model.ops.xp.stack([s.reshape(-1, width) for s in states], axis=1).astype("float32", copy=False)
    lengths = model.ops.to_numpy(trf_data.align.lengths)
    alignment = PieceAlignment.from_lengths(model.ops.to_numpy(trf_data.align.dataXd), lengths, flat.shape[0])
    if alignment.n_tokens != len(doc):
        # (spacy-transformers aligns the tokens from its first span's first to its last span's
        # last: which of the doc's first or last tokens are missing, trf_data does not say.)
        raise ValueError(
            f"[{COMPONENT}] doc._.trf_data aligns {alignment.n_tokens} tokens but the doc has {len(doc)}: "
            "the doc was retokenized after the transformer ran (run ctxembed_from_trf before any retokenizer), "
            "or the transformer's span getter left the doc's first or last tokens out of every span (give "
            "them a span)"
        )
    pieces = AlignedPieces.of(alignment, trf_data.wordpieces.strings, states[0].shape[1])
    check_not_retokenized(COMPONENT, doc, pieces, piece_texts)
    # A word does not get the next one's first piece for the space between them (before
    # the cut at the model's length is looked for: a lone "▁" there is not the word's).
    alignment = alignment.kept(~space_only_pairs(doc, alignment, pieces))
    # Whitespace tokens have no vector, as with ctxembed_bert and ELMo (`align_run`): a
    # byte-level BPE (RoBERTa's, en_core_web_trf's) has pieces of newlines ("Ċ"), which
    # spacy-transformers aligns to a "\n\n" token, whose state would go into doc.vector.
    is_space = doc.to_array(IS_SPACE).astype(bool)
    kept = ~is_space[alignment.token_index]
    if settings["pooling"] != "first":  # (a cut token's first piece is its first piece: "first" keeps it)
        kept &= ~_cut_at_length(doc, alignment, is_space, pieces)
    alignment = alignment.kept(kept)
    _warn_if_unaligned(doc, alignment, is_space)
    pooled = pool_pieces(xp2torch(flat), alignment, settings["pooling"])
    return cast(DocLayers, torch2xp(pooled, ops=model.ops))


def _cut_at_length(doc: Doc, alignment: PieceAlignment, is_space: numpy.ndarray, aligned: AlignedPieces
                   ) -> numpy.ndarray:
    """Boolean mask over the (token, piece) pairs: True for the pieces of the
    token that spacy-transformers cut a span inside.

    It cuts a span longer than the model takes by dropping every piece past
    the model's length (its `truncate_oversize_splits`): the token at the cut
    keeps only its first pieces, and pooled from them would be a vector of
    part of a word (with "last" pooling, a middle piece's) that looks whole;
    only "first" pooling has what it takes.

    Such a token has its last piece in the span's last column, and either
    the word after it (not one of characters the tokenizer drops, which has
    no piece anywhere) has no piece at all (it was past the cut), or (with
    strided_spans, whose next span has that word) its pieces there hold fewer
    of its characters than in another span, where it is whole (`text_lengths`,
    from `aligned`'s strings where they can be read). A span that was not cut
    ends there with its closing special token (BERT's [SEP], RoBERTa's </s>),
    or, with a tokenizer that adds none, with a whole word: that word is
    followed by a word of the next span, which has pieces, and has all its
    characters in every span it is in. Only the cut span's pieces of the
    token go: with strided_spans it keeps those of the next span. A token at
    the cut that no other span has (or each span that has it has it at the
    cut: a token of more pieces than the model takes), in a span that opens with a special
    token (BERT's [CLS], RoBERTa's <s>: those tokenizers close it with one),
    was cut too, or ended exactly there (the doc's last token, or the one
    right before the next span's start, whose next word has pieces there):
    cut where its pieces hold fewer characters than it has (`own_lengths`:
    not counting those a tokenizer may drop from a whole word).
    (A token that ends exactly at the cut, with no word after it in any
    span, cannot be told from a cut one, and goes too; not seen is a cut
    token alone in its span of a tokenizer that opens its spans with no
    special token, nor one whose pieces' text holds more characters than
    the piece held of it: "[UNK]", byte-level BPE's bytes of other scripts.)"""
    tokens, pieces, span_length = alignment.token_index, alignment.piece_index, aligned.span_length
    if not len(tokens):
        return numpy.zeros(0, dtype=bool)
    # Pairs sorted by (token, piece): a token's pieces in one span are a run,
    # its last piece there at the run's end.
    spans = pieces // span_length
    ends = numpy.r_[(tokens[1:] != tokens[:-1]) | (spans[1:] != spans[:-1]), True]
    run_ids = numpy.cumsum(numpy.r_[0, ends[:-1]])  # the run each pair is in
    at_cut = ends & (pieces % span_length == span_length - 1)
    if not at_cut.any():  # (most docs)
        return numpy.zeros(len(tokens), dtype=bool)
    cut_runs = run_ids[at_cut]
    # The next word after each token, and whether it has a piece: not whitespace, nor a token of
    # characters the tokenizer drops (a zero-width space, a BOM, a control character), which has
    # none in any span, past the cut or not.
    covered = alignment.covered_tokens()
    is_word = ~is_space
    bare = numpy.flatnonzero(is_word & ~covered)
    is_word[bare[own_lengths(doc, bare) == 0]] = False
    words = numpy.flatnonzero(is_word)
    after = numpy.searchsorted(words, tokens[at_cut], side="right")
    has_next = after < len(words)
    next_word = words[numpy.minimum(after, len(words) - 1)] if len(words) else after
    is_cut = has_next & ~covered[next_word]
    run_tokens = tokens[ends]  # (a token's runs are next to one another)
    # A token in this span only, in a span opened by a special token (its first
    # piece aligned to no token): the span was closed by one too, so a word in
    # its last column is where the cut fell, whether or not the next word has
    # pieces (in the next span) or there is one. Cut inside it or not, told by
    # the characters its pieces hold, where they can be read.
    # (Or in every span that has it at a cut: a token of more pieces than the model takes.)
    alone = (numpy.bincount(run_tokens, minlength=alignment.n_tokens)[tokens[at_cut]]
             == numpy.bincount(tokens[at_cut], minlength=alignment.n_tokens)[tokens[at_cut]])
    unsure = alone & ~is_cut & ~numpy.isin(spans[at_cut] * span_length, aligned.piece)
    in_two_spans = bool((run_tokens[1:] == run_tokens[:-1]).any())
    # (The pieces' text read only where a token at a cut may have another run: most docs have no cut.)
    lengths = text_lengths(doc, alignment, aligned) if in_two_spans or unsure.any() else None
    if lengths is None:
        is_cut |= unsure
    else:
        held = numpy.bincount(run_ids, weights=lengths)
        is_cut |= unsure & (held[cut_runs] < own_lengths(doc, tokens[at_cut]))
        # Each token's most characters in any one span: a run at the cut with fewer lost its last ones.
        most = numpy.zeros(alignment.n_tokens)
        numpy.maximum.at(most, run_tokens, held)
        is_cut |= held[cut_runs] < most[tokens[at_cut]]
    return numpy.isin(run_ids, cut_runs[is_cut])


def _warn_if_unaligned(doc: Doc, alignment: PieceAlignment, is_space: numpy.ndarray) -> None:
    """spacy-transformers truncates a span longer than the model takes (with
    `doc_spans`, a long doc): the tokens past it have no wordpiece, and the
    token at the cut has only some of its own (`_cut_at_length` drops those):
    none of them gets a vector. Said, not silently left at zero."""
    unaligned = numpy.flatnonzero(~alignment.covered_tokens() & ~is_space)
    if len(unaligned):
        first = int(unaligned[0])
        warn(
            f"[{COMPONENT}] {len(unaligned)} of {len(doc)} tokens (the first: {doc[first].text!r} at "
            f"{first}) have no wordpiece, or only some of theirs, in doc._.trf_data, so no vector: the "
            "transformer's spans were cut at the model's length or left them out, or the tokenizer dropped "
            "their characters (for long docs: spacy-transformers' strided_spans, or ctxembed_bert)",
            stacklevel=2,
        )


def _select_layers(layers: List[int], output) -> list:
    hidden_states: Optional[tuple] = output.get("hidden_states") if hasattr(output, "get") else None
    if hidden_states:
        resolved = normalize_layers(COMPONENT, layers, len(hidden_states))
        if len(set(layers)) == len(layers):  # (one given twice as written was said at `init`)
            # The upstream's depth is known here only: `[-1, 12]` of 13 states is one layer twice.
            warn_repeated_layers(COMPONENT, layers, resolved, len(hidden_states))
        return [hidden_states[i] for i in resolved]
    if list(layers) != [-1]:
        raise bad_setting(
            COMPONENT,
            "layers",
            list(layers),
            "the upstream transformer outputs only its last layer; use layers = [-1], or set "
            "output_hidden_states = true in its [model.transformer_config] block",
        )
    return [output.last_hidden_state]
