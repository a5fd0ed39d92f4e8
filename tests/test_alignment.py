import numpy
import spacy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spacy_ctxembed.alignment import PieceAlignment, align_pieces, partly_uncovered, text_length, token_char_spans

from .reference import token_pieces

NLP = spacy.blank("en")

# Characters from many scripts and classes: letters, digits, punctuation,
# whitespace of several kinds, emoji, CJK, RTL, combining marks, controls,
# zero-width characters.
ALPHABET = st.sampled_from(
    list("abcXYZ019.,;'\"-()?!") + [" ", "  ", "\n", "\t", "\u00a0", "\u3000"]
    + ["é", "ß", "😀", "👩‍🔬", "中", "文", "한", "ש", "ل", "\u0301", "\u0000", "\u0007", "\u200b", "\u200d", "\ufeff"]
)
TEXTS = st.lists(ALPHABET, min_size=0, max_size=60).map("".join)


def _pieces(tokenizer, text):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return numpy.asarray(enc["offset_mapping"], dtype="int64").reshape(-1, 2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS)
def test_alignment_on_generated_text(hf_reference, text):
    tokenizer, _ = hf_reference
    doc = NLP(text)
    offsets = _pieces(tokenizer, text)
    alignment = align_pieces(offsets[:, 0], offsets[:, 1], *token_char_spans(doc))
    # Same pairs as the plain-loop reference.
    expected = sorted((t, p) for t, ps in enumerate(token_pieces(doc, offsets.tolist())) for p in ps)
    assert sorted(zip(alignment.token_index.tolist(), alignment.piece_index.tolist())) == expected
    # Every piece with characters is assigned to a token.
    has_chars = offsets[:, 1] > offsets[:, 0]
    assert set(numpy.flatnonzero(has_chars).tolist()) <= set(alignment.piece_index.tolist())
    # Every non-space token with characters the tokenizer keeps is covered.
    covered = alignment.covered_tokens()
    for token in doc:
        if not token.is_space and tokenizer(token.text, add_special_tokens=False)["input_ids"]:
            assert covered[token.i], (text, token.text)


def test_piece_straddling_two_tokens_feeds_both():
    # tokens "ab" [0,2) and "cd" [2,4); piece [1,3) overlaps both
    alignment = align_pieces([0, 1, 3], [1, 3, 4], [0, 2], [2, 4])
    pairs = list(zip(alignment.token_index.tolist(), alignment.piece_index.tolist()))
    assert pairs == [(0, 0), (0, 1), (1, 1), (1, 2)]


def test_empty_piece_and_uncovered_token():
    # piece [5,5) is empty; token "x" at [7,8) has no piece
    alignment = align_pieces([0, 5], [3, 5], [0, 7], [3, 8])
    assert list(alignment.covered_tokens()) == [True, False]
    assert alignment.piece_index.tolist() == [0]


def test_cut_points_keep_tokens_whole():
    # piece 1 straddles tokens 0 and 1: no cut before piece 1 or piece 2
    alignment = align_pieces([0, 1, 3, 5], [1, 3, 4, 6], [0, 2, 5], [2, 4, 6])
    assert list(alignment.piece_may_start_segment()) == [True, False, False, True]


def test_cut_points_keep_tokens_whole_across_pieces_that_feed_no_token():
    """A byte-level BPE gives a lone "Ġ" between two spaces an empty span: inside
    the token "New  York" (pieces 1-4, piece 2 feeds nothing), neither a cut
    before piece 2 nor one before piece 3 keeps the token whole."""
    alignment = PieceAlignment(numpy.array([0, 1, 1, 1, 2]), numpy.array([0, 1, 3, 4, 5]), 3, 6)
    assert list(alignment.piece_may_start_segment()) == [True, True, False, False, False, True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), max_size=12), st.integers(0, 3))
def test_cut_points_equal_a_brute_force_reading_of_the_rule(tokens, trailing):
    """Tokens of 0-3 pieces each, with 0-2 pieces that feed nothing after each
    piece run: a cut before p is allowed exactly where no token has pieces on
    both sides of it."""
    token_index, piece_index, n_pieces = [], [], 0
    for t, (n_own, n_loose) in enumerate(tokens):
        for k in range(n_own):  # loose pieces may also sit inside the token's run
            token_index.append(t)
            piece_index.append(n_pieces)
            n_pieces += 1 + (n_loose if k == 0 and n_own > 1 else 0)
        n_pieces += n_loose
    n_pieces += trailing
    alignment = PieceAlignment(numpy.array(token_index, dtype="int64"), numpy.array(piece_index, dtype="int64"),
                               len(tokens), n_pieces)
    expected = [all(not (any(p < cut for p in pieces) and any(p >= cut for p in pieces))
                    for pieces in ([p for t2, p in zip(token_index, piece_index) if t2 == t]
                                   for t in range(len(tokens))))
                for cut in range(n_pieces)]
    assert list(alignment.piece_may_start_segment()) == expected


def test_partly_uncovered_against_a_character_loop():
    """Against a plain loop over characters: a token is partly uncovered where
    one of its characters, not whitespace, lies under no span."""
    rng = numpy.random.default_rng(0)
    alphabet = list("ab ç\t\u3000\u00a0\u200b日")
    for _ in range(200):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 30))))
        n = len(text)
        spans = sorted(tuple(sorted(rng.integers(-3, n + 4, size=2))) for _ in range(int(rng.integers(0, 5))))
        # (Tokens may reach past the text: spaCy's Doc.from_array with SPACY moves no token.idx.)
        tokens = [tuple(sorted(rng.integers(0, n + 4, size=2))) for _ in range(int(rng.integers(1, 6)))]
        expected = [any(not text[c].isspace() and not any(s <= c < e for s, e in spans) for c in range(a, min(b, n)))
                    for a, b in tokens]
        got = partly_uncovered(text, [s for s, _ in spans], [e for _, e in spans],
                               [a for a, _ in tokens], [b for _, b in tokens])
        assert got.tolist() == expected, (text, spans, tokens)


def test_a_piece_of_no_characters_inside_a_token_feeds_nothing():
    """A byte-level BPE's lone "Ġ" between two spaces has an empty span; inside a
    token ("New  York", merged) it must feed no token, as the overlap rule says:
    [ps, pe) and [ts, te) overlap where ts < pe and ps < te, and pe > ps."""
    starts, ends = [0, 4, 5, 5], [3, 4, 9, 5]  # "New", "" at 4, "York", "" at 5
    alignment = align_pieces(starts, ends, [0], [9])
    expected = [(0, p) for p, (ps, pe) in enumerate(zip(starts, ends)) if pe > ps and 0 < pe and ps < 9]
    assert list(zip(alignment.token_index.tolist(), alignment.piece_index.tolist())) == expected == [(0, 0), (0, 2)]


def test_from_lengths_sorts_each_tokens_pieces():
    """A ragged token -> pieces table need not list a token's pieces in order;
    the pairs must come out sorted by token, then piece, as `PieceAlignment`
    promises (first/last pooling reads a token's first and last piece off its
    run). Every test built its table in order, so dropping the sort passed:
    "first" pooling then took piece 3 for token 0, not piece 1."""
    alignment = PieceAlignment.from_lengths(numpy.array([3, 1, 2, 0]), numpy.array([2, 0, 2]), n_pieces=4)
    pairs = list(zip(alignment.token_index.tolist(), alignment.piece_index.tolist()))
    assert pairs == sorted([(0, 3), (0, 1), (2, 2), (2, 0)]) == [(0, 1), (0, 3), (2, 0), (2, 2)]
    assert (alignment.n_tokens, alignment.n_pieces) == (3, 4)


def test_pairs_come_sorted_by_token_then_piece_for_any_piece_spans():
    """Against a brute-force reading of the overlap rule, in the promised order
    (by token, then piece: pooling and `doc_alignment` read a token's pieces as
    one run). Pieces here come in any order and may share a span, as a
    byte-level BPE's pieces of one multi-byte character do. The other tests
    compared the pairs as a set, or on pieces in text order where either sort
    key gives the same list, so sorting by piece first passed: two pieces with
    one span across two tokens came out (t0, p0), (t1, p0), (t0, p1), (t1, p1)."""
    rng = numpy.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 25))
        cuts = numpy.sort(rng.choice(numpy.arange(1, n + 1), size=int(rng.integers(1, n + 1)), replace=False))
        bounds = numpy.r_[0, cuts]
        tokens = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if rng.random() < 0.8]
        pieces = [tuple(sorted(int(x) for x in rng.integers(0, n + 1, size=2))) for _ in range(int(rng.integers(0, 8)))]
        pieces += pieces[:2]  # pieces that share a span
        rng.shuffle(pieces)
        expected = sorted((t, p) for t, (ts, te) in enumerate(tokens) for p, (ps, pe) in enumerate(pieces)
                          if ps < pe and ts < pe and ps < te)
        alignment = align_pieces([s for s, _ in pieces], [e for _, e in pieces],
                                 [s for s, _ in tokens], [e for _, e in tokens])
        assert list(zip(alignment.token_index.tolist(), alignment.piece_index.tolist())) == expected, (tokens, pieces)
        assert (alignment.n_tokens, alignment.n_pieces) == (len(tokens), len(pieces))


@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_text_length_is_the_length_of_the_docs_text(text):
    """`text_length` reads the length off the last token, trailing whitespace
    included ("New York " is 9 characters): placement drops stored tokens at
    or past it. No test read it on its own, so counting the last token's text
    without its trailing space passed."""
    doc = NLP(text)
    assert text_length(doc) == len(doc.text) == len(text)
    assert text_length(NLP.make_doc("New York ")) == 9
