"""Run a pipeline over docs and collect every layer of every token.

The analysed component stores its layers per doc in
``doc._.ctx_outputs[name]["layers"]`` (``store_layers = true``, see
`source`); here they are gathered into one ``(n_layers, n_tokens, width)``
float32 array with, per token, the ids the metrics need (its word, its
sentence) and what the sense explorer shows (where it sits in which text).
"""
import sys
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import numpy as np
from numpy.typing import NDArray
from spacy.attrs import IDX, LENGTH, LOWER, SENT_START
from spacy.language import Language
from spacy.tokens import Doc
from thinc.util import to_numpy
from tqdm import tqdm

from .source import needed_components

#: Characters of context kept on each side of a token in a shown example.
CONTEXT_CHARS = 70


def doc_layers(doc: Doc, name: str) -> NDArray[np.float32]:
    """The stored ``(n_layers, n_tokens, width)`` layers of component `name`, on the host."""
    layers = doc._.ctx_outputs[name].get("layers")  # (absent, not None, where none were stored)
    if layers is None:
        raise ValueError(f"[{name}] stored no layers on the doc: it must run with store_layers = true")
    return np.asarray(to_numpy(layers), dtype=np.float32)


def run_docs(nlp: Language, name: str, docs: Iterable[Doc], batch_size: int) -> Iterable[Doc]:
    """`docs` processed by `name` and what it needs upstream only (not taggers, parsers...)."""
    with nlp.select_pipes(enable=needed_components(nlp, name)):
        yield from nlp.pipe(docs, batch_size=batch_size)


def word_form(word: str) -> str:
    """The form a word is matched on (`CorpusLayers.rows_of`): its lowercase, as spaCy's LOWER has it."""
    return word.lower()


@dataclass
class CorpusLayers:
    """Every layer of every token of a corpus, with the tokens' words, sentences and places.

    layers: (n_layers, n_tokens, width) float32; ``layer_ids[i]`` is the
        model's index of ``layers[i]``.
    word_ids: (n_tokens,) index into `words` (the lowercase forms).
    sentence_ids: (n_tokens,) global sentence number; a doc without sentence
        boundaries is one sentence.
    doc_ids, starts, ends: (n_tokens,) the doc and the character span of each token.
    """

    layers: NDArray[np.float32]
    layer_ids: List[int]
    word_ids: NDArray[np.int64]
    words: List[str]
    sentence_ids: NDArray[np.int64]
    doc_ids: NDArray[np.int64]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    texts: List[str]

    @property
    def n_tokens(self) -> int:
        return int(self.word_ids.shape[0])

    def rows_of(self, word: str) -> NDArray[np.int64]:
        """The token rows whose lowercase form is `word`'s (`word_form`)."""
        try:
            index = self.words.index(word_form(word))
        except ValueError:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.word_ids == index)

    def combined(self, layer_ids: Sequence[int]) -> NDArray[np.float32]:
        """(n_tokens, width): the mean of the given layers (model indices), as MeanLayers gives it."""
        positions = [self.layer_ids.index(i) for i in layer_ids]
        return np.asarray(self.layers[positions].mean(axis=0), dtype=np.float32)

    def context(self, row: int, chars: int = CONTEXT_CHARS) -> str:
        """The sentence around token `row`, the token in [brackets], cut to `chars` on each side."""
        doc, start, end = int(self.doc_ids[row]), int(self.starts[row]), int(self.ends[row])
        # sentence ids grow with the rows, so the sentence is a run found by bisection
        first = int(np.searchsorted(self.sentence_ids, self.sentence_ids[row], side="left"))
        last = int(np.searchsorted(self.sentence_ids, self.sentence_ids[row], side="right")) - 1
        text = self.texts[doc]
        lo, hi = int(self.starts[first]), int(self.ends[last])
        left, right = text[max(lo, start - chars):start], text[end:min(hi, end + chars)]
        left = ("…" if start - chars > lo else "") + left.lstrip()
        right = right.rstrip() + ("…" if end + chars < hi else "")
        return f"{left}[{text[start:end]}]{right}".replace("\n", " ")


def embed_corpus(
    nlp: Language, name: str, docs: Iterable[Doc], layer_ids: List[int], *,
    batch_size: int = 32, total: Optional[int] = None, desc: str = "corpus",
) -> CorpusLayers:
    """Run `nlp` over `docs` and collect component `name`'s stored layers."""
    stacks: List[NDArray[np.float32]] = []
    tokens: List[NDArray[np.int64]] = []
    texts: List[str] = []
    n_sentences = 0
    progress = tqdm(total=total, unit="doc", desc=desc, file=sys.stderr)
    with progress:
        for doc in run_docs(nlp, name, docs, batch_size):
            progress.update(1)
            if not len(doc):
                continue
            stacks.append(doc_layers(doc, name))
            table = doc.to_array([LOWER, IDX, LENGTH, SENT_START]).view(np.int64)
            # SENT_START is 1 at a sentence start (-1 or 0 elsewhere); without boundaries the doc is one sentence
            starts_sentence = table[:, 3] == 1 if doc.has_annotation("SENT_START") else np.zeros(len(doc), bool)
            starts_sentence[0] = True
            sentence = n_sentences + np.cumsum(starts_sentence) - 1
            n_sentences = int(sentence[-1]) + 1
            doc_id = np.full(len(doc), len(texts), dtype=np.int64)
            tokens.append(np.stack([table[:, 0], sentence, doc_id, table[:, 1], table[:, 1] + table[:, 2]], axis=1))
            texts.append(doc.text)
    if not stacks:
        raise ValueError("the corpus gave no tokens to analyse")
    table = np.concatenate(tokens)
    # LOWER holds string hashes: number the distinct forms 0..V-1 for the metrics
    hashes, word_ids = np.unique(table[:, 0], return_inverse=True)
    words = [nlp.vocab.strings[int(h)] for h in hashes.view(np.uint64)]
    return CorpusLayers(
        layers=np.concatenate(stacks, axis=1), layer_ids=list(layer_ids), word_ids=word_ids.reshape(-1),
        words=words, sentence_ids=table[:, 1], doc_ids=table[:, 2], starts=table[:, 3], ends=table[:, 4], texts=texts,
    )
