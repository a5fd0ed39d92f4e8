"""Seeded fuzz: random sequences of spaCy doc operations on embedded docs, against an oracle.

The oracle's only input from the library is each doc's rows right after it
was embedded, with its tokens' character spans (the embedded table). Every
doc made by the operations keeps, per character of its text, where that
character was in the embedded texts (tracked here as each doc, cut or part
is built). From those, in float64 NumPy, the rules of docs/doc-operations.md
("Merges and splits"): a token on an embedded token's span reads exactly its
row; any other token the mean of the rows (those that have a vector) of the
embedded tokens it overlaps (a merge, a piece of a split); whitespace is no
text to embed; text that no embedded token covers has no output and is an
error to read. Where the docs say an operation is refused, the documented
error must come instead of a vector. A sequence stops at the first refusal.

Joins of `span.as_doc(copy_user_data=True)` cuts whose stores reach past
their own characters may be refused ("Joining cuts made with
copy_user_data=True"); where a word such a cut carries lands on its own text
in the joined doc, the docs say it cannot be told apart ("What cannot be told
apart"): then only that an error is a MissingOutputs is checked.

A failure names the seed and the operations, with the doc's tokens after each.
"""
import pickle
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy
import pytest
from spacy.tokens import Doc, DocBin

from spacy_ctxembed import restore_vectors, span_as_doc
from spacy_ctxembed.outputs import MissingOutputs

from .conftest import each_factory_nlp

# Repeated words and texts ("the cat"), punctuation, a word of several pieces
# ("Unbelievably"), double spaces, a newline and a leading space (whitespace tokens).
TEXTS = ["New  York is big and NewYork is bigger .", "the cat sat ,\nthe cat ran !", " Unbelievably , cats  sleep .\n"]
SEEDS = range(40)
N_OPS = 8
BASE = 1000  # each embedded doc's characters lie at k * BASE + i in the oracle's coordinates
ATOL = 1e-5
# The documented refusals (docs/doc-operations.md), by what the fuzz did.
REPEATED = r"^\[emb\] this doc was made with span\.as_doc\(\) from a doc in which its text .* occurs more than once"
NO_OUTPUTS = r"holds no ctxembed outputs|no 'emb' output covers"


@pytest.fixture(scope="module", params=["ctxembed_bert", "ctxembed_elmo", "ctxembed_from_trf"])
def nlp(request, tiny_bert_dir, tmp_path_factory):
    return each_factory_nlp(request.param, tiny_bert_dir, tmp_path_factory.mktemp("elmo"))


class Oracle:
    """The embedded tables, in one coordinate space, and the rules read from them."""

    def __init__(self):
        self.starts: List[int] = []
        self.ends: List[int] = []
        self.rows: List[numpy.ndarray] = []
        self.words: List[str] = []
        self.owner: Dict[int, int] = {}  # character -> the embedded token on it
        self.n_texts = 0

    def embed(self, nlp, text: str) -> "Item":
        doc = nlp(text)
        base = self.n_texts * BASE
        self.n_texts += 1
        table = numpy.asarray(doc._.ctx_vectors, dtype="float64").copy()
        for token, row in zip(doc, table):
            start = base + token.idx
            for char in range(start, start + len(token)):
                self.owner[char] = len(self.rows)
            self.starts.append(start)
            self.ends.append(start + len(token))
            self.rows.append(row)
            self.words.append(token.text)
        return Item(doc, numpy.arange(base, base + len(text)), (0, len(text)), True, text)

    def token_row(self, text: str, origin: numpy.ndarray) -> Tuple[Optional[numpy.ndarray], bool]:
        """The row a token of `text`, on the characters `origin`, reads (None where it has no
        output), and whether it is an embedded token's own (then exactly)."""
        owners = [self.owner.get(int(char), -1) for char in origin]
        if any(owner < 0 and not char.isspace() for owner, char in zip(owners, text)):
            return None, False
        covered = sorted({owner for owner in owners if owner >= 0})
        if len(covered) == 1:
            (i,) = covered
            if numpy.array_equal(origin, numpy.arange(self.starts[i], self.ends[i])):
                return self.rows[i], True
        return mean_with_vector([self.rows[i] for i in covered], self.width), False

    @property
    def width(self) -> int:
        return len(self.rows[0])

    def doc_rows(self, item: "Item") -> List[Tuple[Optional[numpy.ndarray], bool]]:
        return [self.token_row(t.text, item.origin[t.idx : t.idx + len(t)]) for t in item.doc]


def mean_with_vector(rows, width: int) -> numpy.ndarray:
    """The mean of the rows that have a vector; zeros where none has."""
    with_vector = [row for row in rows if row.any()]
    return numpy.mean(with_vector, axis=0) if with_vector else numpy.zeros(width)


@dataclass
class Item:
    """A doc, and where each character of its text was in the embedded texts (-1: none, such as
    a space a join added, or a character of a joined part that brought no outputs)."""

    doc: Doc
    origin: numpy.ndarray
    # Where its stored tokens lie, relative to its text (a copy_user_data cut's reach past its own
    # characters); None: it holds no outputs in its user data (a plain `span.as_doc()`).
    reach: Optional[Tuple[int, int]]
    tensor_rows: bool  # doc.tensor is still the array the component set (spaCy's retokenizer resizes it)
    # The text of the doc whose hooks it shares: where a plain `span.as_doc()` of it is placed
    # (spaCy's as_doc shares the hook dicts, with or without copy_user_data; copies and pickles keep them).
    placed_in: str
    refused: Optional[str] = None  # the documented error that reading it must give
    unsure: bool = False  # a join of copy_user_data cuts: it may be refused
    told_apart: bool = True  # False: "What cannot be told apart" (a carried word on its own text)
    ended: bool = False  # the operation was refused, as documented: nothing to read

    @property
    def done(self) -> bool:
        return self.refused is not None or self.unsure or self.ended


def _span(rng, doc, most=None):
    start = int(rng.integers(len(doc)))
    end = int(rng.integers(start + 1, min(len(doc), start + (most or len(doc))) + 1))
    return doc[start:end]


def _occurrences(text: str, part: str) -> int:
    return sum(text.startswith(part, i) for i in range(len(text)))


def merge(rng, oracle, nlp, item):
    if len(item.doc) < 2:
        return item
    span = _span(rng, item.doc, most=4)
    with item.doc.retokenize() as retokenizer:
        retokenizer.merge(span)
    item.tensor_rows = False
    return item


def split(rng, oracle, nlp, item):
    token = item.doc[int(rng.integers(len(item.doc)))]
    if len(token) < 2:
        return item
    cuts = sorted(set(rng.integers(1, len(token), size=int(rng.integers(1, 3))).tolist()))
    pieces = [token.text[a:b] for a, b in zip([0, *cuts], [*cuts, len(token)])]
    with item.doc.retokenize() as retokenizer:
        retokenizer.split(token, pieces, heads=[(token, 0)] * len(pieces))
    item.tensor_rows = False
    return item


def copy(rng, oracle, nlp, item):
    return Item(item.doc.copy(), item.origin, item.reach, item.tensor_rows, item.placed_in)


def _cut(item, span, doc, reach, placed_in):
    low = span.start_char
    reach = None if reach is None else (reach[0] - low, reach[1] - low)
    cut = Item(doc, item.origin[low : low + len(doc.text)], reach, item.tensor_rows, placed_in)
    if reach is None and _occurrences(placed_in, doc.text) > 1:
        cut.refused = REPEATED
    return cut


def plain_cut(rng, oracle, nlp, item):
    span = _span(rng, item.doc)
    return _cut(item, span, span.as_doc(), None, item.placed_in)


def own_cut(rng, oracle, nlp, item):
    span = _span(rng, item.doc)
    doc = span_as_doc(span)
    return _cut(item, span, doc, (span.start_char, span.end_char), doc.text)


def spacy_cut(rng, oracle, nlp, item):
    span = _span(rng, item.doc)
    return _cut(item, span, span.as_doc(copy_user_data=True), item.reach, item.placed_in)


def _part(rng, oracle, nlp):
    """Another part to join: a new doc, whole or cut, or one that never went through the component."""
    whole = oracle.embed(nlp, TEXTS[int(rng.integers(len(TEXTS)))])
    # (Mostly parts that hold their outputs: the others end the sequence, refused.)
    how = rng.choice(["whole", "span_as_doc", "as_doc(copy_user_data=True)", "as_doc", "make_doc"],
                     p=[0.3, 0.3, 0.2, 0.1, 0.1])
    if how == "make_doc":
        return Item(nlp.make_doc(whole.doc.text), numpy.full(len(whole.doc.text), -1), None, False, "")
    return whole if how == "whole" else OPERATIONS[how](rng, oracle, nlp, whole)


def join(rng, oracle, nlp, item):
    parts = [item] + [_part(rng, oracle, nlp) for _ in range(int(rng.integers(1, 3)))]
    rng.shuffle(parts)
    if any(part.done or part.doc.vocab is not nlp.vocab for part in parts):
        return item  # (spaCy joins docs of one vocab only: not a pickled one's)
    with_tensor = [part.doc.tensor.shape[0] > 0 for part in parts]
    # spaCy's from_docs refuses to join a doc with a tensor to one without (documented).
    joined = Doc.from_docs([part.doc for part in parts], ensure_whitespace=bool(rng.integers(2)),
                           exclude=[] if all(with_tensor) else ["tensor"])
    origin = numpy.full(len(joined.text), -1)
    offsets = []
    for part in parts:
        offsets.append(joined[sum(len(p.doc) for p in parts[: len(offsets)])].idx)
        # A part whose outputs were not in its user data brings none: its characters are no embedded ones.
        origin[offsets[-1] : offsets[-1] + len(part.doc.text)] = -1 if part.reach is None else part.origin
    new = Item(joined, origin, (0, len(joined.text)), all(p.tensor_rows for p in parts) and all(with_tensor),
               joined.text)
    if any(part.reach is not None and (part.reach[0] < 0 or part.reach[1] > len(part.doc.text)) for part in parts):
        # A copy_user_data cut carries stored tokens past its own characters: it may be refused.
        new.unsure = True
        new.told_apart = not any(_carried_word_lands_on_its_text(oracle, part, offset, joined.text)
                                 for part, offset in zip(parts, offsets) if part.reach is not None)
    elif any(row is None for row, _ in oracle.doc_rows(new)):
        new.refused = NO_OUTPUTS  # (whitespace is no text to embed: a part of it alone is not refused)
    try:
        restore_vectors(joined)
    except MissingOutputs as err:
        assert new.unsure or new.refused, f"restore_vectors refused a join the docs allow: {err}"
        assert new.unsure or re.search(new.refused, str(err)), err
        new.ended = True
    return new


def _carried_word_lands_on_its_text(oracle, part, offset, text):
    """Whether a stored token that a part carries past its own characters has its
    own text where it lands in the joined doc ("What cannot be told apart")."""
    first = part.origin[0]
    if not numpy.array_equal(part.origin, numpy.arange(first, first + len(part.origin))):
        return True  # not one run of one embedded text: not worked out here, taken as landing
    for start, end, word in zip(oracle.starts, oracle.ends, oracle.words):
        carried = first + part.reach[0] <= start < end <= first + part.reach[1]
        own = first <= start < first + len(part.origin)
        lands = offset + start - first
        if carried and not own and lands >= 0 and text[lands : lands + end - start] == word:
            return True
    return False


def docbin(rng, oracle, nlp, item):
    data = DocBin(docs=[item.doc], store_user_data=True).to_bytes()
    return _restored(item, next(DocBin().from_bytes(data).get_docs(nlp.vocab)), tensor_rows=False)


def to_bytes(rng, oracle, nlp, item):
    return _restored(item, Doc(nlp.vocab).from_bytes(item.doc.to_bytes()), tensor_rows=item.tensor_rows)


def _restored(item, doc, tensor_rows):
    new = Item(doc, item.origin, item.reach, tensor_rows, doc.text)
    if item.reach is None:  # a plain cut kept no outputs in its user data
        with pytest.raises(MissingOutputs, match=NO_OUTPUTS):
            restore_vectors(doc)
        new.ended = True
    else:
        restore_vectors(doc)
    return new


def restored(rng, oracle, nlp, item):
    """`restore_vectors` on a doc whose hooks are still there: one that holds its outputs gets hooks
    of its own (a copy_user_data cut then no longer shares its source's); a plain cut keeps its source's."""
    restore_vectors(item.doc)
    if item.reach is not None:
        item.placed_in = item.doc.text
    return item


def pickled(rng, oracle, nlp, item):
    return Item(pickle.loads(pickle.dumps(item.doc)), item.origin, item.reach, item.tensor_rows, item.placed_in)


OPERATIONS: Dict[str, Callable] = {
    "merge": merge, "split": split, "copy": copy, "as_doc": plain_cut, "span_as_doc": own_cut,
    "as_doc(copy_user_data=True)": spacy_cut, "from_docs": join, "DocBin": docbin, "to_bytes": to_bytes,
    "pickle": pickled, "restore_vectors": restored,
}


def check(oracle, item, trace):
    """Every vector of the doc is the oracle's, or the documented error comes."""
    doc = item.doc
    if item.ended:
        return
    if item.refused is not None:
        with pytest.raises(MissingOutputs, match=item.refused):
            _ = doc._.ctx_vectors
        return
    rows = oracle.doc_rows(item)
    try:
        vectors = numpy.asarray(doc._.ctx_vectors)
    except MissingOutputs as err:
        assert item.unsure or any(row is None for row, _ in rows), f"{trace}: {err}"
        return
    if not item.told_apart:
        return
    assert all(row is not None for row, _ in rows), f"{trace}: text no embedded token covers read a vector"
    expected = numpy.stack([row for row, _ in rows])
    numpy.testing.assert_allclose(vectors, expected, rtol=0, atol=ATOL, err_msg=trace)
    for token, (row, exact) in zip(doc, rows):
        if exact:
            numpy.testing.assert_array_equal(token.vector, row, err_msg=f"{trace}: token {token.i} (its own row)")
        numpy.testing.assert_allclose(token.vector, row, rtol=0, atol=ATOL, err_msg=f"{trace}: token {token.i}")
        assert token.has_vector == bool(row.any()), f"{trace}: token {token.i}"
    # span.vector and doc.vector: the mean of the tokens that have a vector (README, "Outputs").
    spans = [_span(numpy.random.default_rng(len(doc) + i), doc) for i in range(2)]
    for span in spans:
        numpy.testing.assert_allclose(span.vector, mean_with_vector(expected[span.start : span.end], oracle.width),
                                      rtol=0, atol=ATOL, err_msg=f"{trace}: {span}")
    numpy.testing.assert_allclose(doc.vector, mean_with_vector(expected, oracle.width), rtol=0, atol=ATOL,
                                  err_msg=f"{trace}: doc.vector")
    if item.tensor_rows:
        numpy.testing.assert_allclose(doc.tensor, expected, rtol=0, atol=ATOL, err_msg=f"{trace}: doc.tensor")


@pytest.mark.filterwarnings("ignore:\\[W109\\]", "ignore:\\[W101\\]")
@pytest.mark.parametrize("seed", SEEDS)
def test_random_doc_operations_read_the_rule_or_a_documented_error(nlp, seed):
    rng = numpy.random.default_rng(seed)
    oracle = Oracle()
    item = oracle.embed(nlp, TEXTS[seed % len(TEXTS)])
    trace = [repr(item.doc.text)]
    check(oracle, item, " -> ".join(trace))
    names = list(OPERATIONS)
    for _ in range(N_OPS):
        name = names[int(rng.integers(len(names)))]
        item = OPERATIONS[name](rng, oracle, nlp, item)
        trace.append(f"{name}: {[t.text for t in item.doc]}")
        check(oracle, item, " -> ".join(trace))
        if item.done:
            break
