"""Wordpieces of raw texts and their character spans, as numpy arrays.

The BERT runner needs two things per text from the model's fast tokenizer:
the piece ids and each piece's [start, end) characters. Calling the
`transformers` tokenizer builds a Python dict of lists per text (ids,
offsets, type ids, masks) that the runner then turns back into arrays. On
UD EWT dev (MiniLM's tokenizer, one thread) that took 50 ms, of which the
tokenization itself was 33 ms; the rest is Python holding the GIL. So the
Rust tokenizer behind a fast tokenizer is called directly and its output
read into arrays in one pass: 42 ms.

It is a private copy: its truncation and padding are switched off whatever
the saved `tokenizer.json` sets (all-MiniLM-L6-v2's truncates and pads to
128), as `transformers` switches them off for an untruncated call; and no
call changes it, so threads can share it. A tokenizer whose class changes
how a batch is encoded (an override of `__call__` or `_batch_encode_plus`,
other than the byte-level BPE encoders' check on pretokenized input), or
whose Rust side cannot be copied, is called through `transformers`.

For docs (`of_docs`), a tokenizer whose pieces never cross a space goes
through a cache of space-separated chunks (`piece_cache`): most chunks of a
corpus are words seen before, and their pieces are gathered, not tokenized.
"""
import itertools
from typing import Any, List, Optional, Sequence, Tuple

import numpy
from spacy.tokens import Doc

from ..alignment import TokenTable
from .piece_cache import Flat, PieceCache, PiecesCrossSpaces, splits_at_spaces


class Wordpieces:
    """The pieces of texts (`flat`) or of docs (`of_docs`), laid end to end:
    ids (n,), character spans (n, 2) and the count per text or doc, int64."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = _private_backend(tokenizer)
        #: None where the tokenizer's pieces may depend on what lies across a space.
        self.chunks = PieceCache() if self._backend is not None and splits_at_spaces(self._backend) else None

    def of_docs(self, docs: Sequence[Doc], tokens: Optional[TokenTable] = None) -> Flat:
        """As `self.flat([doc.text for doc in docs])`, through the chunk cache where there is one.

        tokens: the docs' tokens, where the caller has read them already.
        """
        chunks = self.chunks
        if chunks is not None:
            try:
                return chunks(docs, TokenTable.of_docs(docs) if tokens is None else tokens, self.flat)
            except PiecesCrossSpaces:  # the description misled `splits_at_spaces`: whole texts from now on
                self.chunks = None
        return self.flat([doc.text for doc in docs])

    def flat(self, texts: Sequence[str]) -> Flat:
        """The pieces of all texts laid end to end: ids (n,), spans (n, 2), and
        the count per text."""
        if self._backend is None:
            per_text, spans_per_text = self._through_transformers(texts)
            return (numpy.concatenate([*per_text, numpy.zeros(0, dtype="int64")]),
                    numpy.concatenate([*spans_per_text, numpy.zeros((0, 2), dtype="int64")]),
                    numpy.fromiter(map(len, per_text), dtype="int64", count=len(per_text)))
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        counts = numpy.fromiter(map(len, encodings), dtype="int64", count=len(encodings))
        total = int(counts.sum())
        ids = numpy.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), dtype="int64", count=total)
        spans = numpy.fromiter(
            itertools.chain.from_iterable(itertools.chain.from_iterable(e.offsets for e in encodings)),
            dtype="int64", count=2 * total,
        ).reshape(total, 2)
        return ids, spans, counts

    def _through_transformers(self, texts: Sequence[str]) -> Tuple[List[numpy.ndarray], List[numpy.ndarray]]:
        if not texts:
            return [], []
        encodings = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # long texts are windowed: no ">512 tokens" warning
        )
        ids = [numpy.asarray(i, dtype="int64") for i in encodings["input_ids"]]
        spans = [numpy.asarray(o, dtype="int64").reshape(-1, 2) for o in encodings["offset_mapping"]]
        return ids, spans


def _checks_only_pretokenized_input() -> Tuple[Any, ...]:
    """`_batch_encode_plus` overrides that only refuse pretokenized input
    without `add_prefix_space` (the byte-level BPE encoders': RoBERTa,
    Longformer, DeBERTa v1) and then encode as the base class does; the runner
    never passes pretokenized input."""
    import transformers

    names = ("RobertaTokenizerFast", "LongformerTokenizerFast", "DebertaTokenizerFast")
    classes = (getattr(transformers, name, None) for name in names)
    return tuple(cls._batch_encode_plus for cls in classes if cls is not None)


def _private_backend(tokenizer: Any) -> Optional[Any]:
    """A copy of the fast tokenizer's Rust tokenizer, set up as `transformers`
    would set it up for `tokenizer(texts, add_special_tokens=False)`; None where
    the tokenizer is not a plain fast one."""
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast  # lazily: importing it takes a while

    cls = type(tokenizer)
    plain_fast = (
        isinstance(tokenizer, PreTrainedTokenizerFast)
        and cls.__call__ is PreTrainedTokenizerBase.__call__
        and (cls._batch_encode_plus is PreTrainedTokenizerFast._batch_encode_plus
             or cls._batch_encode_plus in _checks_only_pretokenized_input())
    )
    if not plain_fast:
        return None
    from tokenizers import Tokenizer

    try:
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    except Exception:  # e.g. a custom Python pre-tokenizer cannot be serialized: go through transformers
        return None
    backend.no_truncation()
    backend.no_padding()
    if hasattr(backend, "encode_special_tokens"):  # tokenizers < 0.15 has no such switch
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend
