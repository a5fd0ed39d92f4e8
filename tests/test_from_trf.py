"""`ctxembed_from_trf` pools spacy-transformers' own output into the same contract."""
import re
import warnings

import numpy
import pytest
import spacy
from spacy.training import Example

from .conftest import SHARED_DATA, ctx_config, other_bert, param_copies, params_moved
from .reference import hf_hidden_states, pool, token_pieces

TEXT = "It was nice out this morning when I ran to the park."


def _with_transformer(model_dir, hidden_states: bool = False, **model):
    """A blank pipeline with a spacy-transformers `transformer` of `model_dir`
    (`model`: more settings of its model, e.g. `get_spans`)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3",
        "name": str(model_dir),
        "tokenizer_config": {"use_fast": True},
        "transformer_config": {"output_hidden_states": hidden_states},
        **model,
    }})
    return nlp


def _trf_nlp(model_dir, hidden_states: bool, **settings):
    nlp = _with_transformer(model_dir, hidden_states)
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(**settings))
    nlp.initialize()
    return nlp


@pytest.mark.parametrize("pooling", ["mean", "first", "max"])
def test_from_trf_matches_transformers(minilm_dir, hf_reference, pooling):
    tokenizer, model = hf_reference
    nlp = _trf_nlp(minilm_dir, True, pooling=pooling, layers=[0, -1], store_layers=True)
    doc = nlp(TEXT)
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    pieces = token_pieces(doc, offsets)
    expected = numpy.stack([pool(states[0], pieces, pooling), pool(states[-1], pieces, pooling)])
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=1e-4, rtol=0)
    numpy.testing.assert_allclose(doc.tensor, expected.mean(axis=0), atol=1e-4, rtol=0)
    assert doc[8].has_vector and doc[8].vector.shape == (384,)


def test_from_trf_last_layer_without_hidden_states(minilm_dir, hf_reference):
    tokenizer, model = hf_reference
    doc = _trf_nlp(minilm_dir, False)(TEXT)
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    numpy.testing.assert_allclose(doc._.ctx_vectors, pool(states[-1], token_pieces(doc, offsets), "mean"), atol=1e-4)


def test_from_trf_asks_for_hidden_states(minilm_dir):
    nlp = _trf_nlp(minilm_dir, False, layers=[0, -1])
    with pytest.raises(ValueError, match=r"layers = \[0, -1\].*output_hidden_states"):
        nlp(TEXT)


def test_from_trf_without_transformer():
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_from_trf")
    with pytest.raises(ValueError, match="trf_data is missing"):
        nlp(TEXT)


def test_a_joined_or_cut_doc_is_told_that_spacy_drops_its_transformer_output(tiny_bert_dir):
    """Doc.from_docs and Span.as_doc leave doc._.trf_data behind: the error said
    only to add a transformer, which the pipeline had."""
    from spacy.tokens import Doc

    nlp = _trf_nlp(tiny_bert_dir, False)
    transformer, component = nlp.get_pipe("transformer"), nlp.get_pipe("ctxembed_from_trf")
    first, second = (transformer(nlp.make_doc(text)) for text in (TEXT, "Then I ran some tests."))
    assert component(first.copy())._.ctx_vectors.shape == (len(first), 32)
    for doc in (Doc.from_docs([first, second]), first[:5].as_doc(copy_user_data=True)):
        with pytest.raises(ValueError, match=r"trf_data is missing: .*A doc made by Doc\.from_docs or Span\.as_doc "
                                             r"has none \(spaCy does not carry it over\): run the transformer on it"):
            component(doc)
    assert component(transformer(Doc.from_docs([first, second])))._.ctx_vectors.shape == (len(first) + len(second), 32)


def test_initialize_says_where_no_transformer_comes_before(tiny_bert_dir):
    """Known at initialize, it was said only at the first doc. A pipeline with
    no component that says it writes doc._.trf_data is warned of (a component
    of the user's may write it without saying so); one whose transformer
    comes after it is refused."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_from_trf", name="pooled")
    with pytest.warns(UserWarning, match=r"^\[pooled\] pools doc\._\.trf_data, and no component before it says it "
                                         r"writes it: add a spacy-transformers 'transformer'"):
        nlp.initialize()
    nlp = _with_transformer(tiny_bert_dir, False)
    nlp.add_pipe("ctxembed_from_trf", name="pooled", first=True)
    with pytest.raises(ValueError, match=r"^\[pooled\] pools doc\._\.trf_data, which no component before it writes: "
                                         r"'transformer' comes after it; move it before 'pooled'"):
        nlp.initialize()


def test_a_layer_given_twice_is_warned_of(tiny_bert_dir):
    with pytest.warns(UserWarning, match=r"^\[ctxembed_from_trf\] layers = \[1, 1\]: 1 is given more than once, so "
                                         r"its vector counts more than once"):
        nlp = _trf_nlp(tiny_bert_dir, True, layers=[1, 1], combine="concat")
    assert nlp(TEXT)._.ctx_vectors.shape[1] == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (said once, at initialize: not again at the first doc)
        nlp(TEXT)


def test_one_layer_named_twice_is_warned_of_at_the_first_doc(tiny_bert_dir):
    """`[-1, 2]` of the upstream's 3 hidden states is layer 2 twice: its depth is
    known from its outputs only, so this is said at the first doc."""
    nlp = _trf_nlp(tiny_bert_dir, True, layers=[-1, 2], combine="concat")
    with pytest.warns(UserWarning, match=r"^\[ctxembed_from_trf\] layers = \[-1, 2\]: -1 and 2 both select layer 2 "
                                         r"\(the model has 3 layers, counting its embedding \(token\) layer as 0\)"):
        nlp(TEXT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trf_nlp(tiny_bert_dir, True, layers=[-1, 1], combine="concat")(TEXT)


def test_the_width_comes_from_the_last_transformer_before_the_component(tiny_bert_dir, minilm_dir):
    """Two transformers of other widths: the docs keep the output of the last
    one before the component (the first in the pipeline gave the width)."""
    nlp = _with_transformer(tiny_bert_dir, False)
    nlp.add_pipe("transformer", name="wide", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(minilm_dir),
        "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": False}}})
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    assert nlp.get_pipe("ctxembed_from_trf").encoder.get_dim("nO") == 384
    assert nlp("")._.ctx_vectors.shape == (0, 384)
    assert nlp(TEXT)._.ctx_vectors.shape[1] == 384
    # Disabled while initializing, as `spacy train` disables its frozen and sourced components: it runs after.
    with nlp.select_pipes(disable=["wide"]):
        nlp.initialize()
    assert nlp("")._.ctx_vectors.shape == (0, 384) and nlp(TEXT)._.ctx_vectors.shape[1] == 384


def test_a_transformer_of_another_width_swapped_in_after_initialize_is_refused(tiny_bert_dir, minilm_dir):
    """The tiny BERT (32) replaced by MiniLM (384) after initialize: the vectors
    came out 384 wide while empty docs kept (0, 32), and a listening tagger
    failed in blis ("Shape mismatch for blis.gemm")."""
    nlp = _with_transformer(tiny_bert_dir, True)
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(layers=[0, -1]))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}})
    nlp.get_pipe("tagger").add_label("X")
    nlp.initialize()
    assert nlp(TEXT)._.ctx_vectors.shape[1] == 32
    wide = _with_transformer(minilm_dir, True)
    wide.initialize()
    nlp.remove_pipe("transformer")
    nlp.add_pipe("transformer", first=True, source=wide)
    with pytest.raises(ValueError, match=r"^\[ctxembed_from_trf\] doc\._\.trf_data holds transformer outputs of "
                                         r"width 384, but the component's width \(nO\) is 32, .*nlp\.initialize\(\)"):
        nlp(TEXT)
    nlp.remove_pipe("tagger")  # (sized for 32: a head for the new transformer is trained anew)
    nlp.initialize()  # (as the error says)
    assert nlp(TEXT)._.ctx_vectors.shape[1] == 384 and nlp("")._.ctx_vectors.shape == (0, 384)


def test_from_trf_settings_come_from_the_config_not_the_bytes(tiny_bert_dir, tmp_path):
    """A component configured with pooling = "first" that loads the bytes of a "mean"
    one pools by "first", as its config says (and as a load from disk does): the
    settings saved with the bytes used to win."""
    mean = _trf_nlp(tiny_bert_dir, False, pooling="mean")
    first = _trf_nlp(tiny_bert_dir, False, pooling="first")
    text = "Tokenization of unbelievably long words."
    expected = first(text)._.ctx_vectors  # freshly configured "first", before any loading
    assert not numpy.allclose(mean(text)._.ctx_vectors, expected)  # the two poolings differ on this text
    first.get_pipe("ctxembed_from_trf").from_bytes(mean.get_pipe("ctxembed_from_trf").to_bytes())
    numpy.testing.assert_allclose(first(text)._.ctx_vectors, expected, atol=1e-6)
    first.to_disk(tmp_path / "p")
    numpy.testing.assert_allclose(spacy.load(tmp_path / "p")(text)._.ctx_vectors, expected, atol=1e-6)


def test_tokens_cut_off_by_the_transformer_are_said_and_vectors_are_float32(tiny_bert_dir):
    """spacy-transformers cuts a span at the model's length: with doc_spans the
    tail of a long doc got zero vectors without a word. And fp16 outputs of the
    transformer gave fp16 vectors."""
    nlp = _with_transformer(tiny_bert_dir, get_spans={"@span_getters": "spacy-transformers.doc_spans.v1"})
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    with pytest.warns(UserWarning, match=r"\[ctxembed_from_trf\] \d+ of \d+ tokens .* no wordpiece"):
        doc = nlp(" ".join(["word"] * 700))
    assert not doc[-1].has_vector and doc[0].has_vector
    short = nlp.get_pipe("transformer")(nlp.make_doc(TEXT))
    short._.trf_data.model_output["last_hidden_state"] = short._.trf_data.model_output["last_hidden_state"].astype(
        "float16")
    assert nlp.get_pipe("ctxembed_from_trf")(short)._.ctx_vectors.dtype == numpy.float32


@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_a_token_cut_at_the_models_length_gets_no_vector_and_is_said(tiny_bert_dir, pooling):
    """spacy-transformers cuts a long span inside a token: that token kept its
    first pieces, was pooled from them (with "last" pooling, a middle piece's
    state) and had a vector that looked whole, not counted in the warning.
    "first" pooling has its first piece, and keeps it."""
    nlp = _with_transformer(tiny_bert_dir, get_spans={"@span_getters": "spacy-transformers.doc_spans.v1"})
    nlp.add_pipe("ctxembed_from_trf", name="trf_vectors", config=ctx_config(pooling=pooling))
    nlp.initialize()
    # Words of 3 wordpieces ("word", "##x", "##14") after [CLS] and "a": the cut at the
    # model's length (64 for this model, 512 for MiniLM) falls inside one.
    with pytest.warns(UserWarning) as record:
        doc = nlp("a " + " ".join(f"wordx{i}" for i in range(10, 99)))
    trf = doc._.trf_data
    lengths = numpy.asarray(trf.align.lengths)
    pieces = numpy.split(numpy.asarray(trf.align.dataXd).ravel(), numpy.cumsum(lengths)[:-1])
    width = trf.model_output.last_hidden_state.shape[1]
    cut = [i for i, p in enumerate(pieces) if len(p) and p.max() % width == width - 1]
    assert len(cut) == 1
    (t,) = cut
    tokenizer = nlp.get_pipe("transformer").model.tokenizer
    assert 0 < len(pieces[t]) < len(tokenizer.tokenize(doc[t].text))  # the cut is inside it
    first_without = t + 1 if pooling == "first" else t
    messages = [str(w.message) for w in record if "have no wordpiece" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].startswith(  # (the instance's name, as its errors give it)
        f"[trf_vectors] {len(doc) - first_without} of {len(doc)} tokens (the first: "
        f"'{doc[first_without].text}' at {first_without}) have no wordpiece, or only some of theirs")
    assert not doc[first_without].has_vector and not doc._.ctx_vectors[first_without:].any()
    # The tokens with vectors: pooled from their pieces' states, read here from trf_data.
    states = trf.model_output.last_hidden_state.reshape(-1, trf.model_output.last_hidden_state.shape[-1])
    pooled = {"last": lambda p: states[p.max()], "first": lambda p: states[p.min()],
              "mean": lambda p: states[p].mean(axis=0)}[pooling]
    expected = numpy.stack([pooled(p) for p in pieces[:first_without]])
    numpy.testing.assert_allclose(doc._.ctx_vectors[:first_without], expected, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "max", "first"])
def test_a_token_cut_at_a_strided_spans_end_is_pooled_from_the_span_that_has_it_whole(tiny_bert_dir, pooling):
    """With strided_spans the word after a cut has pieces in the next span, which
    has the cut token whole too: the token was pooled over its first pieces in
    the cut span and all of them in the next ("mean" 0.43 off, "max" 1.09). Now
    the cut span's pieces of it go; a token that ends exactly at a cut keeps both
    spans' pieces, and "first" keeps the cut token's first piece."""
    nlp = _with_transformer(tiny_bert_dir, get_spans={
        "@span_getters": "spacy-transformers.strided_spans.v1", "window": 30, "stride": 15})
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(pooling=pooling))
    nlp.initialize()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # (every token keeps a vector)
        doc = nlp("a " + " ".join(f"wordx{i}" for i in range(10, 60)))
    trf = doc._.trf_data
    states = trf.model_output.last_hidden_state.astype("float64")
    span_length, width = states.shape[1:]
    states = states.reshape(-1, width)
    tokenizer = nlp.get_pipe("transformer").model.tokenizer
    pieces = numpy.split(numpy.asarray(trf.align.dataXd).ravel(), numpy.cumsum(trf.align.lengths)[:-1])
    expected, cut, at_cut_whole = [], [], []
    for i, own in enumerate(pieces):
        whole = len(tokenizer.tokenize(doc[i].text))
        runs = [own[own // span_length == s] for s in numpy.unique(own // span_length)]
        kept = numpy.concatenate([run for run in runs if len(run) == whole])  # (a cut run lost its last pieces)
        at_cut = [run for run in runs if run.max() % span_length == span_length - 1]
        cut += [i] if len(kept) < len(own) else []
        at_cut_whole += [i] if at_cut and len(kept) == len(own) and len(runs) > 1 else []
        if pooling == "first":
            expected.append(states[own.min()])
        else:
            expected.append(states[kept].mean(axis=0) if pooling == "mean" else states[kept].max(axis=0))
    assert cut and at_cut_whole  # (both cases are in this doc)
    numpy.testing.assert_allclose(doc._.ctx_vectors, numpy.stack(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_a_token_cut_alone_in_its_span_gets_no_vector(tiny_bert_dir, pooling):
    """A token cut at the model's length that no other span has, while the word
    after it has pieces in the next span (strided_spans with stride = window)
    or there is none (the doc's last token), was pooled from its first pieces
    and read as whole, unsaid (|v| up to 1.8 with "mean", 2.1 "max"). It goes, said; a
    token that ends exactly at the cut (only [SEP] cut) keeps its vector.
    Checked against the pieces of each span's text as the tokenizer splits
    it whole (its offsets), in float64."""
    nlp = _with_transformer(tiny_bert_dir, get_spans={
        "@span_getters": "spacy-transformers.strided_spans.v1", "window": 22, "stride": 22})
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(pooling=pooling))
    nlp.initialize()
    tokenizer = nlp.get_pipe("transformer").model.tokenizer
    words = " ".join(f"wordx{i}" for i in range(10, 52))  # (3 pieces each: "word", "##x", "##10")
    # [CLS] "a" and 20 words fill 62 of the 64 columns: the 22nd token is cut after 2 pieces,
    # in the span's last column, and the next span starts right after it (or the doc ends);
    # the next span's [CLS] and 21 words fill 64: its last word ends right at the cut.
    for text, ends_at_cut in [("a " + words, True), ("a " + " ".join(words.split()[:21]), False)]:
        with pytest.warns(UserWarning, match=r"\] 1 of \d+ tokens \(the first: 'wordx30' at 21\) have no wordpiece"):
            doc = nlp(text)
        trf = doc._.trf_data
        states = trf.model_output.last_hidden_state.astype("float64")
        span_length = states.shape[1]
        states = states.reshape(-1, states.shape[-1])
        pieces = [[] for _ in doc]
        for s, span in enumerate(nlp.get_pipe("transformer").model.attrs["get_spans"]([doc])[0]):
            offsets = tokenizer(span.text, return_offsets_mapping=True)["offset_mapping"]
            for token in span:
                start, end = token.idx - span.start_char, token.idx - span.start_char + len(token)
                own = [j for j, (a, b) in enumerate(offsets) if b > a and a < end and start < b]
                pieces[token.i] += [s * span_length + j for j in own] if max(own) < span_length else []
        assert [i for i, p in enumerate(pieces) if not p] == [21]
        assert not ends_at_cut or max(pieces[-1]) % span_length == span_length - 1 == 63
        expected = numpy.stack([(states[p].mean(axis=0) if pooling == "mean" else states[p].max(axis=0))
                                if p else numpy.zeros(states.shape[-1]) for p in pieces])
        numpy.testing.assert_allclose(doc._.ctx_vectors, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pooling", ["mean", "last", "max"])
def test_a_token_cut_in_every_span_that_has_it_gets_no_vector(tiny_bert_dir, pooling):
    """A token of more pieces than the model takes (a long URL) is cut in
    every strided span that has it: the run that kept the most of its pieces
    was read as whole, and the token pooled from part of its pieces, unsaid
    (|v| about 1). It goes, said, as a cut token alone in its span does; the
    tokens around it keep theirs. Cut in every span: told by the tokenizer's
    own pieces of each span's text."""
    nlp = _with_transformer(tiny_bert_dir, get_spans={
        "@span_getters": "spacy-transformers.strided_spans.v1", "window": 2, "stride": 1})
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(pooling=pooling))
    nlp.initialize()
    url = "http://example.com/" + "abc/" * 30
    tokenizer = nlp.get_pipe("transformer").model.tokenizer
    with pytest.warns(UserWarning, match=r"\] 1 of 5 tokens \(the first: 'http://example\.com/abc/.*' at 2\) have no"):
        doc = nlp(f"a b {url} c d")
    spans = nlp.get_pipe("transformer").model.attrs["get_spans"]([doc])[0]
    assert [len(tokenizer(span.text)["input_ids"]) > 64 for span in spans if doc[2] in span] == [True, True]
    assert [token.has_vector for token in doc] == [True, True, False, True, True]
    assert not doc._.ctx_vectors[2].any()


@pytest.mark.parametrize("last", ["word\u00adx51", "wordx5\u03081", "word\u200cx51"])
def test_a_whole_token_at_the_cut_with_characters_the_tokenizer_drops_keeps_its_vector(tiny_bert_dir, last):
    """The doc's last word ends right at the second span's cut (as in the test
    above), with a character that the uncased tokenizer drops (a soft hyphen,
    a combining mark, a zero-width non-joiner): its pieces are those of
    "wordx51" and hold 7 of its 8 characters. It was taken for a cut one and
    lost its vector. Its vector is the one "wordx51" gets there (the same
    piece ids), and only the cut "wordx30" goes."""
    nlp = _with_transformer(tiny_bert_dir, get_spans={
        "@span_getters": "spacy-transformers.strided_spans.v1", "window": 22, "stride": 22})
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config())
    nlp.initialize()
    tokenizer = nlp.get_pipe("transformer").model.tokenizer
    assert tokenizer.tokenize(last) == tokenizer.tokenize("wordx51")
    words = [f"wordx{i}" for i in range(10, 51)]
    docs = []
    for word in ("wordx51", last):
        with pytest.warns(UserWarning, match=r"\] 1 of 43 tokens \(the first: 'wordx30' at 21\) have no wordpiece"):
            docs.append(nlp("a " + " ".join(words + [word])))
    plain, dropped = docs
    assert numpy.abs(plain._.ctx_vectors[-1]).sum() > 0
    numpy.testing.assert_allclose(dropped._.ctx_vectors, plain._.ctx_vectors, atol=1e-6, rtol=0)


def _first_word_texts(n_pieces):
    """Texts whose first word is cut at a 32-piece model's length (2-token windows) at each place around it."""
    return ["q" * n + " as governor , so against the park" for n in range(n_pieces - 14, n_pieces)]


def _contraction_texts(words, n):
    """Texts with a word spaCy splits ("don't": "do" "n't") after `words` and n words "a" of one
    piece: their pieces reach a 32-piece model's length within the contraction."""
    return [" ".join(words + ["a"] * n + [word] + ["b", "c"] * 3) for word in ["don't", "can't", "ain't"]]


STRIDED_CUTS = {
    # A span's first token splits otherwise (byte-level BPE without its space, SentencePiece after a lone "▁").
    "bpe": ("bpe", 2, 1, _first_word_texts(32), ["whole at the cut, fewer pieces elsewhere",
                                                "cut, no more pieces than a whole run"]),
    "sentencepiece": ("sentencepiece", 2, 1, _first_word_texts(32), ["whole at the cut, fewer pieces elsewhere"]),
    "sentencepiece-words": ("sentencepiece-words", 2, 1, _first_word_texts(32),
                            ["whole at the cut, fewer pieces elsewhere"]),
    # A piece shared with the token before ("don" of "do" and "n't"), its own where the token opens a span.
    "wordpiece-shared": ("wordpiece", 30, 29, _contraction_texts(["wordx"], 27), ["shared piece at the cut"]),
    "bpe-shared": ("bpe", 33, 27, _contraction_texts([], 27), ["shared piece at the cut"]),
    "bpe-shared-opening": ("bpe", 34, 28, _contraction_texts([], 27), ["shared piece at the cut"]),
    # A piece shared with the token after ("cannot" of "can" and "not") where the token opens a span.
    "wordpiece-shared-after": ("wordpiece", 30, 29, [" ".join(["wordx"] + ["a"] * 28 + ["cannot", "b", "c"])],
                               ["shared piece at the cut"]),
    # A piece that takes in the space before it ("▁the"), aligned to the word before for that space
    # only: not shared with it ("qqwith" and "th" must not be read as an overlap).
    "sentencepiece-space": ("sentencepiece", 2, 1, ["q" * n + "with the park" for n in range(12, 27)],
                            ["whole at the cut, other spans too"]),
    "bpe-untrimmed-space": ("bpe-untrimmed", 2, 1, ["q" * n + "with the park" for n in range(12, 27)],
                            ["whole at the cut, other spans too"]),
    # A whole token at the cut, the next one of characters the tokenizer drops (no piece in any span).
    "wordpiece-dropped-next": ("wordpiece", 40, 20, [" ".join(["a"] * n + [mark] + ["b", "c"] * 8)
                                                     for n in range(28, 34) for mark in ["\u200b", "\x07"]],
                               ["whole at the cut, other spans too"]),
}


@pytest.mark.parametrize("case", list(STRIDED_CUTS))
def test_a_strided_cut_is_told_by_the_characters_a_token_keeps_not_by_its_pieces(tiny_bert_dir, tmp_path, case):
    """A span's first token splits otherwise: byte-level BPE splits a word
    without the space before it ("against" in four pieces, "Ġagainst" in
    three), and SentencePiece opens a span with a lone "▁". The first version
    of the strided cut rule counted pieces: it dropped a whole token's pieces
    at a span's end (0.6 off) and pooled a cut one's ("Ġa" of "as", 1.36 off).
    Its second counted their characters, a piece shared with the token before
    in full: "n't" cut after "don" "'" held as many as "n" "'" "t" where it
    opens the next span (0.5 off), and a whole "n't" fewer than "ain" "'" "t"
    (0.75); its third took "▁the", aligned to "qqwith" for the space only, for
    shared with it ("th", 0.73 off), and left "cannot" whole to "can" (1.72).
    Reference: each span tokenized by the tokenizer itself, a token's
    pieces those whose offsets cover its characters, those of a span cut
    inside it left out; the mean of the rest in float64."""
    from collections import Counter

    from spacy_transformers.span_getters import configure_strided_spans
    from transformers import AutoTokenizer

    family, window, stride, texts, expected_cases = STRIDED_CUTS[case]
    nlp = _family_nlp(family, tmp_path, tiny_bert_dir, max_length=32, get_spans={
        "@span_getters": "spacy-transformers.strided_spans.v1", "window": window, "stride": stride})
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    spans_of = configure_strided_spans(window, stride)
    seen: Counter = Counter()
    for text in texts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # (tokens cut with no other span: said, no vector)
            doc = nlp(text)
        states = doc._.trf_data.model_output.last_hidden_state.astype("float64")
        length = states.shape[1]
        states = states.reshape(-1, states.shape[-1])
        kept, runs = [[] for _ in doc], [[] for _ in doc]
        for s, span in enumerate(spans_of([doc])[0]):
            offsets = tokenizer(span.text, return_offsets_mapping=True)["offset_mapping"]
            for token in span:
                start = token.idx - span.start_char
                rows = [j for j, (a, b) in enumerate(offsets) if a < b and a < start + len(token.text) and b > start]
                if not rows:  # (characters the tokenizer drops)
                    continue
                cut = max(rows) >= length
                shared = offsets[rows[0]][0] < start or offsets[rows[-1]][1] > start + len(token.text)
                runs[token.i].append((len([j for j in rows if j < length]), cut, max(rows) >= length - 1, shared))
                kept[token.i] += [] if cut else [s * length + j for j in rows]
        for i, token in enumerate(doc):
            counts = {count for count, cut, _, _ in runs[i] if not cut}
            seen["whole at the cut, fewer pieces elsewhere"] += len(counts) > 1 and any(
                at and not cut for _, cut, at, _ in runs[i])
            seen["cut, no more pieces than a whole run"] += any(
                cut and count and count >= min(counts, default=99) for count, cut, _, _ in runs[i])
            seen["shared piece at the cut"] += len(runs[i]) > 1 and any(at for _, _, at, _ in runs[i]) and any(
                shared for _, _, _, shared in runs[i])
            seen["whole at the cut, other spans too"] += len(runs[i]) > 1 and any(
                at and not cut for _, cut, at, _ in runs[i])
            assert token.has_vector == bool(kept[i]), (token.text, text)
            if kept[i]:
                numpy.testing.assert_allclose(token.vector, states[kept[i]].mean(axis=0), atol=1e-5,
                                              err_msg=f"{token.text!r} at {i} in {text!r}")
    assert all(seen[name] for name in expected_cases), seen  # (the cases are in these docs)


def test_a_piece_shared_with_a_ligature_is_matched_as_the_tokenizer_normalizes_it(tmp_path):
    """An NFKC SentencePiece writes "ﬁ" as "fi": the piece "▁fin" of spaCy's "ﬁ" and
    "ne" (a special case) held three of "ne"'s characters for the strided cut's count
    (nothing matched "ﬁ" one for one), as many as its whole run in the next span, so
    the cut run ("e" past the model's length) was pooled with it (0.64 off)."""
    from spacy.attrs import ORTH

    nlp, tokenizer = _metaspace_nlp(tmp_path, ["\u2581fin", "\u2581a", "\u2581b", "\u2581c"], max_length=32,
                                    get_spans={"@span_getters": "spacy-transformers.strided_spans.v1",
                                               "window": 35, "stride": 31})
    nlp.tokenizer.add_special_case("ﬁne", [{ORTH: "ﬁ"}, {ORTH: "ne"}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        doc = nlp(" ".join(["a"] * 30 + ["ﬁne"] + ["b", "c"] * 5))
    token = doc[31]
    assert token.text == "ne"
    states = doc._.trf_data.model_output.last_hidden_state.astype("float64")
    length = states.shape[1]
    spans = [doc[0:35], doc[31:66]]
    rows = []
    for span in spans:  # (the tokenizer's own offsets: "▁fin" in the first span, cut before "e")
        offsets = tokenizer(span.text, return_offsets_mapping=True)["offset_mapping"]
        start = token.idx - span.start_char
        rows.append([j for j, (a, b) in enumerate(offsets) if a < b and a < start + len(token.text) and b > start])
    assert max(rows[0]) >= length > max(rows[1])  # cut in the first span, whole in the second
    numpy.testing.assert_allclose(token.vector, states[1][rows[1]].mean(axis=0), atol=1e-5)


def test_a_tokenizer_without_a_closing_token_keeps_every_vector_of_uncut_spans(tiny_bert_dir, tmp_path):
    """Without a closing special token (GPT-2's, LLaMA's tokenizers) the batch's longest
    span ends with a whole word in its last column, as a cut one does: the first version of
    the cut check took that word for cut (no vector, and a warning on every batch)."""
    import json
    import shutil

    path = tmp_path / "no-closing-token"
    shutil.copytree(tiny_bert_dir, path)
    tokenizer = json.loads((path / "tokenizer.json").read_text(encoding="utf8"))
    cls = {"SpecialToken": {"id": "[CLS]", "type_id": 0}}
    tokenizer["post_processor"] = {  # [CLS] first, nothing after
        "type": "TemplateProcessing", "single": [cls, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [cls, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [101], "tokens": ["[CLS]"]}}}
    (path / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf8")
    nlp = _with_transformer(path)
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(pooling="last"))
    nlp.initialize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        docs = list(nlp.pipe(["Hello world.", "I like green eggs and ham"]))
    for doc in docs:
        trf = doc._.trf_data
        assert trf.wordpieces.strings[0][-1] != "[SEP]"  # (the tokenizer as meant)
        states = trf.model_output.last_hidden_state.reshape(-1, trf.model_output.last_hidden_state.shape[-1])
        pieces = numpy.split(numpy.asarray(trf.align.dataXd).ravel(), numpy.cumsum(trf.align.lengths)[:-1])
        numpy.testing.assert_allclose(doc._.ctx_vectors, numpy.stack([states[p.max()] for p in pieces]), atol=1e-6)


def _no_spans_for(prefix: str):
    """A span getter that gives the docs starting with `prefix` no span (and every other doc one)."""
    def get_spans(docs):
        return [[] if doc.text.startswith(prefix) else [doc[:]] for doc in docs]
    return get_spans


def test_docs_without_spans_get_zeros_said_and_the_others_stay_exact(minilm_dir, hf_reference):
    """A span getter may give a non-empty doc no span; its trf_data is then empty and
    pooling it crashed with an AttributeError. Its tokens have no piece: zero vectors,
    with a warning, and the batch's other docs keep their exact vectors."""
    from spacy_transformers.util import registry

    registry.span_getters.register("test-no-spans-for-n.v1", func=lambda: _no_spans_for("n"))
    nlp = _with_transformer(minilm_dir, get_spans={"@span_getters": "test-no-spans-for-n.v1"})
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    with pytest.warns(UserWarning, match=r"\[ctxembed_from_trf\] 3 of 3 tokens .* no wordpiece"):
        spanned, unspanned = nlp.pipe([TEXT, "no spans here"])
    assert unspanned._.ctx_vectors.shape == (3, 384) and not unspanned._.ctx_vectors.any()
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, TEXT)
    numpy.testing.assert_allclose(spanned._.ctx_vectors, pool(states[-1], token_pieces(spanned, offsets), "mean"),
                                  atol=1e-4)


def test_a_span_getter_that_leaves_out_the_first_tokens_is_named(tiny_bert_dir):
    """spacy-transformers aligns only the tokens from the first span to the last:
    the error blamed a retokenization that never happened."""
    from spacy_transformers.util import registry

    registry.span_getters.register("test-skip-first-token.v1", func=lambda: lambda docs: [
        [doc[1:] if len(doc) > 1 else doc[:]] for doc in docs])  # (the samples initialize runs on are 1 token)
    nlp = _with_transformer(tiny_bert_dir, get_spans={"@span_getters": "test-skip-first-token.v1"})
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    with pytest.raises(ValueError, match=r"aligns 12 tokens but the doc has 13: .*or the transformer's span getter "
                                         r"left the doc's first or last tokens out of every span \(give them a "
                                         r"span\)$"):
        nlp(TEXT)


def test_no_output_and_no_known_width_is_an_error():
    """With no transformer output in the batch and the width never learned, the
    vectors would be 0 wide: an error, not (n, 0) vectors."""
    from spacy_transformers.data_classes import TransformerData
    from spacy_transformers.pipeline_component import install_extensions

    install_extensions()  # (a transformer component would; this test, run alone, makes none)
    nlp = spacy.blank("en")
    component = nlp.add_pipe("ctxembed_from_trf")
    doc = nlp.make_doc("no spans here")
    doc._.trf_data = TransformerData.empty()
    with pytest.warns(UserWarning, match="no wordpiece"), pytest.raises(ValueError, match=r"width is unknown"):
        component(doc)


def test_added_to_a_loaded_transformer_without_initialize(tiny_bert_dir, tmp_path):
    """Added to a loaded transformer pipeline and never initialized, the component
    learns the width from the first output: empty docs after it got (0, 0) vectors."""
    nlp = _with_transformer(tiny_bert_dir)
    nlp.initialize()
    nlp.to_disk(tmp_path / "trf")
    loaded = spacy.load(tmp_path / "trf")
    loaded.add_pipe("ctxembed_from_trf")
    assert loaded(TEXT)._.ctx_vectors.shape == (len(loaded.make_doc(TEXT)), 32)
    empty = loaded("")
    assert empty._.ctx_vectors.shape == (0, 32) and empty.tensor.shape == (0, 32)


@pytest.mark.parametrize("combiner, width", [("MeanLayers", 32), ("ConcatLayers", 64), ("ScalarMix", 32)])
def test_added_without_initialize_keeps_the_width_it_learned_when_saved(tiny_bert_dir, tmp_path, combiner, width):
    """Saved and loaded again, it knows the width it learned before any doc comes:
    an empty first doc got (0, 0) vectors (a ScalarMix, with weights, too)."""
    nlp = _with_transformer(tiny_bert_dir, hidden_states=True)
    nlp.initialize()
    nlp.to_disk(tmp_path / "trf")
    loaded = spacy.load(tmp_path / "trf")
    loaded.add_pipe("ctxembed_from_trf", config={"model": {
        "@architectures": "spacy-ctxembed.Embedder.v2",
        "encoder": {"@architectures": "spacy-ctxembed.TrfEncoder.v2", "layers": [-2, -1]},
        "combiner": {"@layers": f"spacy-ctxembed.{combiner}.v1"}}})
    expected = loaded(TEXT)._.ctx_vectors
    assert expected.shape == (len(loaded.make_doc(TEXT)), width)
    loaded.to_disk(tmp_path / "both")
    again = spacy.load(tmp_path / "both")
    empty = again("")
    assert empty._.ctx_vectors.shape == (0, width) and empty.tensor.shape == (0, width)
    numpy.testing.assert_array_equal(again(TEXT)._.ctx_vectors, expected)


def test_from_trf_layers_edited_in_a_saved_pipeline_are_refused(tiny_bert_dir, tmp_path):
    """The upstream's depth is known only from its outputs, so negative layers
    stay as written; an edit of them (here the default's kind, [-1, -3]) must
    still be refused: the trained mix would apply to other layers."""
    from spacy.util import load_config

    from spacy_ctxembed.errors import SettingError

    nlp = _trf_nlp(tiny_bert_dir, True, layers=[-1, -3], combine="scalar_mix")
    nlp.get_pipe("ctxembed_from_trf").combiner.set_param("s", numpy.asarray([2.0, -1.0], dtype="f"))
    expected = nlp(TEXT)._.ctx_vectors.copy()
    nlp.to_disk(tmp_path / "p")
    numpy.testing.assert_allclose(spacy.load(tmp_path / "p")(TEXT)._.ctx_vectors, expected, atol=1e-6)
    config = load_config(tmp_path / "p" / "config.cfg")
    config["components"]["ctxembed_from_trf"]["model"]["encoder"]["layers"] = [-3, -1]
    config.to_disk(tmp_path / "p" / "config.cfg")
    with pytest.raises(SettingError, match=r"^\[ctxembed_from_trf\] combiner = .*it was saved for layers "
                                           r"\[-1, -3\], but the config's layers select \[-3, -1\]"):
        spacy.load(tmp_path / "p")


def test_from_trf_pooling_edited_under_a_trained_mix_is_refused(tiny_bert_dir, tmp_path):
    """(Without weights trained on its vectors, the config's pooling is taken:
    test_from_trf_settings_come_from_the_config_not_the_bytes.)"""
    from spacy.util import load_config

    from spacy_ctxembed.errors import SettingError

    nlp = _trf_nlp(tiny_bert_dir, True, combine="scalar_mix")
    nlp.get_pipe("ctxembed_from_trf").combiner.set_param("gamma", numpy.asarray([1.5], dtype="f"))  # trained
    nlp.to_disk(tmp_path / "p")
    config = load_config(tmp_path / "p" / "config.cfg")
    assert config["components"]["ctxembed_from_trf"]["model"]["encoder"]["pooling"] == "mean"
    config["components"]["ctxembed_from_trf"]["model"]["encoder"]["pooling"] = "first"
    config.to_disk(tmp_path / "p" / "config.cfg")
    with pytest.raises(SettingError, match=r"^\[ctxembed_from_trf\] pooling = 'first': the encoder was saved "
                                           r"with pooling = 'mean', and what was trained on those vectors \(its "
                                           r"scalar_mix\) reads them: put back .*; to load it"):
        spacy.load(tmp_path / "p")
    for load in (lambda receiver: receiver.from_bytes(nlp.to_bytes()),
                 lambda receiver: receiver.get_pipe("ctxembed_from_trf").from_bytes(
                     nlp.get_pipe("ctxembed_from_trf").to_bytes())):
        receiver = _trf_nlp(tiny_bert_dir, True, pooling="max", combine="scalar_mix")
        with pytest.raises(SettingError, match=r"^\[ctxembed_from_trf\] pooling = 'max': the encoder was saved "
                                               r"with pooling = 'mean'.*, or train again$"):
            load(receiver)


@pytest.mark.parametrize("setting, edited", [("layers", [2, 1, 0]), ("pooling", "mean")])
def test_a_replace_listeners_copy_of_from_trf_refuses_its_settings_edited(tiny_bert_dir, tmp_path, setting, edited):
    """The tagger's own copy of the encoder (`replace_listeners`), its block in a
    saved config.cfg edited: the tagger's weights, trained on the copy's
    vectors, ran silently on other layers or another pooling (a BERT copy's
    shim records and checks them; a TrfEncoder has none)."""
    from spacy.util import load_config

    from spacy_ctxembed.errors import SettingError

    nlp = _with_transformer(tiny_bert_dir, hidden_states=True)
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(layers=[0, 1, 2], pooling="max", combine="scalar_mix"))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "mix_layers": False}}})
    words, tags = ["I", "ran", "home"], ["PRON", "VERB", "ADV"]
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})])
    nlp.replace_listeners("ctxembed_from_trf", "tagger", ["model.tok2vec"])
    expected = nlp.get_pipe("tagger").model.predict([nlp(TEXT)])[0]
    nlp.to_disk(tmp_path / "p")
    loaded = spacy.load(tmp_path / "p")  # unedited: as saved
    numpy.testing.assert_allclose(loaded.get_pipe("tagger").model.predict([loaded(TEXT)])[0], expected, atol=1e-5)
    config = load_config(tmp_path / "p" / "config.cfg")
    copy = config["components"]["tagger"]["model"]["tok2vec"]["embedder"]["encoder"]
    saved = copy[setting]
    copy[setting] = edited
    config.to_disk(tmp_path / "p" / "config.cfg")
    edited_nlp = spacy.load(tmp_path / "p")
    with pytest.raises(SettingError, match=rf"^\[ContextualTok2Vec\] embedder\.encoder\.{setting} = "
                                           rf"{re.escape(repr(edited))}: the copied encoder was saved with "
                                           rf"{setting} = {re.escape(repr(saved))}"):
        edited_nlp(TEXT)
    # As the error says, it can be trained again (in this process too): then it runs.
    # (The copy predicts on the samples: they need the transformer's output.)
    sample = edited_nlp.get_pipe("transformer")(edited_nlp.make_doc(" ".join(words)))
    edited_nlp.get_pipe("tagger").initialize(
        lambda: [Example.from_dict(sample, {"words": words, "tags": tags})], nlp=edited_nlp)
    assert [t.tag_ for t in edited_nlp(TEXT)] and edited_nlp.get_pipe("tagger").labels == ("ADV", "PRON", "VERB")


def test_a_listener_of_from_trf_trains_with_the_transformer_frozen_and_annotating(tiny_bert_dir):
    """spacy-transformers' update puts no outputs on the docs: without annotating
    the error named only a missing transformer, which was there."""
    from spacy.training import Example

    nlp = _with_transformer(tiny_bert_dir)
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config(combine="scalar_mix"))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "mix_layers": False}}})
    words, tags = ["I", "ran", "home"], ["PRON", "VERB", "ADV"]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})]
    nlp.initialize(lambda: examples)
    optimizer = nlp.create_optimizer()
    for exclude in ([], ["transformer"]):
        with pytest.raises(ValueError, match=r"trf_data is missing: .*; in training, list it in \[training\] "
                                             r"annotating_components, and in frozen_components"):
            nlp.update(examples, sgd=optimizer, exclude=exclude)
    mix = nlp.get_pipe("ctxembed_from_trf").combiner
    gamma_before = mix.get_param("gamma").copy()  # (one layer: its weight s has no gradient)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, exclude=["transformer"], annotates=["transformer"])
    assert not numpy.array_equal(mix.get_param("gamma"), gamma_before)  # the mix trains through the listener


def test_a_from_trf_component_initialized_alone_cannot_size_its_listener_and_says_how(tiny_bert_dir):
    """`component.initialize()` without `nlp=` never looks at the transformer
    whose width it pools (initialized here): the listener cannot be sized,
    and the error says so; initialized with the pipeline, as it says, the
    listener takes the tiny BERT's width and the tagger trains."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    nlp = _with_transformer(tiny_bert_dir)
    component = nlp.add_pipe("ctxembed_from_trf")
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "mix_layers": False}}})
    words, tags = ["I", "ran", "home"], ["PRON", "VERB", "ADV"]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})]
    nlp.get_pipe("transformer").initialize(lambda: examples, nlp=nlp)
    with pytest.raises(ValueError, match=r"^\[ctxembed_from_trf\] cannot size the listener of 'tagger': the width of "
                                         r"the vectors it pools is that of the spacy-transformers transformer before "
                                         r"it, .* it was initialized on its own \(component\.initialize\(\) without "
                                         r"nlp=.*nlp\.get_pipe\('ctxembed_from_trf'\)\.initialize\(nlp=nlp\)\)$"):
        component.initialize()
    assert not component.loaded
    component.initialize(nlp=nlp)
    nlp.get_pipe("tagger").initialize(lambda: examples, nlp=nlp)
    (listener,) = [node for node in nlp.get_pipe("tagger").model.walk() if isinstance(node, ContextualListenerNode)]
    assert listener.get_dim("nO") == 32  # (the tiny BERT's width)
    tagger = nlp.get_pipe("tagger").model
    before = param_copies(tagger)
    optimizer = nlp.create_optimizer()
    for _ in range(2):
        nlp.update(examples, sgd=optimizer, exclude=["transformer"], annotates=["transformer"])
    assert params_moved(before)


def test_a_listener_of_a_from_trf_component_renamed_away_reads_no_outputs_under_its_old_name(tiny_bert_dir):
    """Two transformers, each pooled by a `ctxembed_from_trf` ("A", "B"), taken
    into another pipeline under each other's names: spaCy renames them in
    both, and each head read the other transformer's features, silently. The
    outputs' signatures (the pooling settings) cannot tell whose they are:
    refused, even those made before the rename."""
    nlp = _with_transformer(tiny_bert_dir)
    nlp.add_pipe("ctxembed_from_trf", name="A", config=ctx_config())
    nlp.add_pipe("transformer", name="transformer2", source=_with_transformer(tiny_bert_dir))
    nlp.add_pipe("ctxembed_from_trf", name="B", config=ctx_config(primary=False))
    for name in ("A", "B"):
        nlp.add_pipe("tagger", name=f"t{name}", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
            "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "mix_layers": False,
            "upstream": name}}})
        nlp.get_pipe(f"t{name}").add_label("X")
    nlp.initialize()
    annotated = nlp(TEXT)
    other = spacy.blank("en", vocab=nlp.vocab)
    other.add_pipe("B", source=nlp, name="A")
    other.add_pipe("A", source=nlp, name="B")
    refused = (r"^\[tA\] ContextualListener upstream = 'A': the component it was linked to as 'A' is named 'B' now, "
               r"and stores its outputs under 'B': those under 'A' on the doc cannot be told to be its own "
               r"\(ctxembed_from_trf's")
    with pytest.raises(ValueError, match=refused):
        nlp(TEXT)
    with pytest.raises(ValueError, match=refused):
        nlp.get_pipe("tA").model.predict([annotated])


def test_whitespace_tokens_get_no_vector_with_a_byte_level_bpe(tmp_path):
    """RoBERTa's byte-level BPE (en_core_web_trf's) has pieces of newlines ("Ċ"),
    which spacy-transformers aligns to a "\\n\\n" token: it got their state as its
    vector, and doc.vector and similarities took it in. Whitespace tokens have no
    vector here, as with ctxembed_bert; the words keep their pieces (NumPy pooling
    of trf_data here)."""
    import torch

    from .test_bert_exactness import _byte_level_bpe_model

    torch.manual_seed(0)
    tokenizer, model = _byte_level_bpe_model(tmp_path / "vocab")
    tokenizer.save_pretrained(tmp_path / "model")
    model.eval().save_pretrained(tmp_path / "model")
    nlp = _trf_nlp(tmp_path / "model", False)
    doc = nlp("the fox\n\nthe dog  ran")
    data = doc._.trf_data
    spaces = [t.i for t in doc if t.is_space]
    assert spaces and any(data.align[i].lengths.sum() for i in spaces)  # the premise: pieces aligned to them
    states = data.model_output.last_hidden_state.reshape(-1, 32)
    for token in doc:
        if token.is_space:
            assert not token.has_vector and not token.vector.any()
        else:
            rows = data.align[token.i].dataXd.ravel()
            numpy.testing.assert_allclose(token.vector, states[rows].astype("float64").mean(axis=0), atol=1e-6)
    words = [t.vector for t in doc if not t.is_space]
    numpy.testing.assert_allclose(doc.vector, numpy.mean(words, axis=0), atol=1e-6)


def test_a_non_primary_component_over_another_transformer_drops_the_stored_layers(tiny_bert_dir, minilm_dir,
                                                                                   tmp_path):
    """Two pipelines' `ctxembed_from_trf` of one name over different
    transformers, the second not primary and storing no layers: their
    signatures are the same string (they hold the pooling settings only), and
    the first's layers were kept beside the second's vectors; found by a
    review helper. They are dropped, with the warning."""
    first = _trf_nlp(tiny_bert_dir, True, layers=[1, 2], store_layers=True)
    second = _trf_nlp(other_bert(tmp_path / "other", minilm_dir), True, layers=[1, 2], primary=False)
    doc = first(TEXT)
    assert doc._.ctx_layers is not None
    with pytest.warns(UserWarning, match=r"whose stored layers it cannot vouch for as its own"):
        doc = second(doc)
    assert doc._.ctx_layers is None


FAMILIES = ["wordpiece", "bpe", "bpe-untrimmed", "sentencepiece", "sentencepiece-words"]


def _family_nlp(family, tmp_path, tiny_bert_dir, *, max_length=128, **model):
    """A transformer of each tokenizer family and ctxembed_from_trf:
    WordPiece (the MiniLM tokenizer), byte-level BPE (its offsets trimmed,
    as RoBERTa's, or not), and SentencePiece (NFKC, "▁" pieces whose offsets
    take in the space before them): of pieces of a few characters, or of
    whole words, as real vocabularies have for common words. Other than
    WordPiece, cut at `max_length` pieces; `model`: more settings of the
    transformer's model (e.g. `get_spans`)."""
    import torch
    from transformers import (
        AutoModel,
        AutoTokenizer,
        PreTrainedTokenizerFast,
        RobertaTokenizerFast,
        XLMRobertaConfig,
        XLMRobertaModel,
    )

    from .test_bert_exactness import _SMALL, _byte_level_bpe_model, _sentencepiece_model

    torch.manual_seed(0)
    if family == "wordpiece":
        if max_length >= 64 and not model:
            return _trf_nlp(tiny_bert_dir, False)
        tokenizer, encoder = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir)
        tokenizer.model_max_length = min(max_length, 64)  # (the tiny BERT's own)
    elif family.startswith("bpe"):
        tokenizer, encoder = _byte_level_bpe_model(tmp_path / "vocab")
        if family == "bpe-untrimmed":  # (offsets take in the space before a word, as GPT-2's do)
            tokenizer = RobertaTokenizerFast(str(tmp_path / "vocab" / "vocab.json"),
                                             str(tmp_path / "vocab" / "merges.txt"), model_max_length=128,
                                             trim_offsets=False)
        tokenizer.model_max_length = max_length
    else:
        if family == "sentencepiece":
            backend = _sentencepiece_model(tmp_path / "vocab")[0].backend_tokenizer
        else:
            backend = _whole_word_sentencepiece()
        # (A plain fast tokenizer: spacy-transformers reads an XLM-R tokenizer's
        # SentencePiece model file, which one built here has not.)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                            pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                            model_max_length=max_length)
        encoder = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                   **_SMALL))
    tokenizer.save_pretrained(tmp_path / "model")
    encoder.eval().save_pretrained(tmp_path / "model")
    nlp = _with_transformer(tmp_path / "model", **model)
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    return nlp


def _whole_word_sentencepiece():
    """A unigram SentencePiece tokenizer (NFKC, Metaspace) with whole words,
    and single characters for the rest."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = "New York City is big and the park nice It was out this morning when I ran to Brand".split()
    vocab = [(special, 0.0) for special in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]]
    vocab += [("\u2581" + word, -1.0) for word in words] + [("\u2581", -5.0)]
    vocab += [(char, -8.0) for char in string.ascii_letters + string.digits + string.punctuation]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.normalizer = normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC()])
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    return backend


@pytest.mark.parametrize("family", FAMILIES)
def test_a_retokenization_that_keeps_the_number_of_tokens_is_refused(tiny_bert_dir, tmp_path, family):
    """trf_data's alignment is per token index: a merge and a split between
    the transformer and ctxembed_from_trf that keep the number of tokens gave
    each token between them its neighbour's vector ("is" got "York"'s), with
    no error. A wordpiece lies in the text of the tokens it is aligned to;
    here one does not. So is another doc's trf_data of as many tokens."""
    nlp = _family_nlp(family, tmp_path, tiny_bert_dir)
    refused = r"^\[ctxembed_from_trf\] doc._.trf_data aligns the wordpiece '[^']+' with token \d+ \('[^']+'\)"
    doc = nlp.get_pipe("transformer")(nlp.make_doc("New York City is big and the park is nice"))
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[3], ["bi", "g"], heads=[(doc[3], 0), (doc[3], 0)])
    assert [token.text for token in doc][:5] == ["New York", "City", "is", "bi", "g"]
    with pytest.raises(ValueError, match=refused + r".*: the doc was retokenized after the transformer ran"):
        nlp.get_pipe("ctxembed_from_trf")(doc)
    other = nlp.make_doc("It was nice out this morning")
    other._.trf_data = nlp.get_pipe("transformer")(nlp.make_doc("I ran to the park today"))._.trf_data
    with pytest.raises(ValueError, match=refused):
        nlp.get_pipe("ctxembed_from_trf")(other)


HARD_TEXTS = [
    "Café naïve Zürich ﬁne １２３ x² Ⅻ straße İstanbul don't U.K. e-mail http://x.com/a?b=c :) 😀 日本語 한국어 —",
    "NEW YORK  ran\n\nto the park... 'quoted' ``ticks'' $4.50 (aside) #tag @user",
    # Decomposed to capitals, lowercased after (NFKC tokenizers, SentencePiece's), and a
    # combining mark that case-folding turns into a letter:
    "№ 5 was Nice, Brand™ products, 𝐍𝐞𝐰 𝐘𝐨𝐫𝐤 ℂity ℐt ㎒ th\u0345e park",
    # No token with a piece (whitespace, characters the tokenizers drop), in a batch with others:
    "\n\n", " ", "\t", "\u200b", "\x00 \ufeff",
]


def _corpus_texts(limit):
    """UD EWT dev sentences and WNUT-17 dev tweets (URLs, emoji, other
    scripts), where ../shared/data is present; HARD_TEXTS always."""
    texts = list(HARD_TEXTS)
    ud = SHARED_DATA / "ud_english_ewt" / "en_ewt-ud-dev.conllu"
    if ud.is_file():
        texts += [line[len("# text = "):] for line in ud.read_text(encoding="utf8").splitlines()
                  if line.startswith("# text = ")][:limit]
    wnut = SHARED_DATA / "wnut17" / "emerging.dev.conll"
    if wnut.is_file():
        tweets = wnut.read_text(encoding="utf8").split("\n\n")
        texts += [" ".join(line.split("\t")[0] for line in tweet.splitlines() if line.strip())
                  for tweet in tweets if tweet.strip()][:limit]
    return texts


@pytest.mark.parametrize("family", FAMILIES)
def test_docs_as_the_transformer_left_them_are_never_refused_as_retokenized(tiny_bert_dir, tmp_path, family):
    """The check of the wordpieces against their tokens' text refuses none of
    a corpus's docs left as the transformer saw them, in each tokenizer
    family (accents, ligatures, full-width digits, contractions, URLs, emoji,
    other scripts, whitespace tokens, docs where no token has a piece: a
    first version failed on those). And each word's vector is the mean of
    the states of the pieces whose offsets (the tokenizer's own) cover its
    characters, in NumPy, float64: with SentencePiece, spacy-transformers
    also aligns "▁York" (offsets " York") to "New", for the space between
    them, and "New" read the mean of "▁New" and "▁York" (found by a review)."""
    from transformers import AutoTokenizer

    nlp = _family_nlp(family, tmp_path, tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir if family == "wordpiece" else tmp_path / "model")
    compared = 0
    for doc in nlp.pipe(_corpus_texts(200)):
        if not any(token.has_vector for token in doc):
            assert doc.tensor.shape[0] == len(doc) and not doc.tensor.any()
            continue
        offsets = tokenizer(doc.text, return_offsets_mapping=True)["offset_mapping"]
        states = doc._.trf_data.model_output.last_hidden_state
        if states.shape[0] > 1 or len(offsets) > states.shape[1]:
            continue  # (more than one span, or cut at the model's length: not this test's reference)
        states = states[0].astype("float64")
        for token in doc:
            if token.is_space:
                continue
            rows = [j for j, (start, end) in enumerate(offsets)
                    if start < end and start < token.idx + len(token.text) and end > token.idx]
            assert token.has_vector == bool(rows), (token.text, doc.text)
            if rows:
                numpy.testing.assert_allclose(token.vector, states[rows].mean(axis=0), atol=1e-5,
                                              err_msg=f"{token.text!r} in {doc.text!r}")
                compared += 1
    assert compared > 2000


@pytest.mark.parametrize("family", ["sentencepiece", "sentencepiece-words"])
def test_a_character_made_a_space_inside_a_word_is_the_words_own_piece(tiny_bert_dir, tmp_path, family):
    """SentencePiece's Nmt normalizer makes zero-width joiners and non-joiners,
    direction marks and the BOM spaces: "non\u200djoiner" gives "▁non", a lone
    "▁" (the joiner's offsets), then the rest. That lone mark, inside a word
    followed by a space, was taken for the space after the word and left
    out of it. Each word's vector is the mean of the states of the pieces whose
    offsets cover its characters, in NumPy, float64; and the lone mark of the
    space after a word (before an emoji the vocabulary lacks) is still left out of it."""
    from transformers import AutoTokenizer

    nlp = _family_nlp(family, tmp_path, tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    for text in ["It was non\u200djoiner and zero\u200cwidth ok", "שלום\u200fעולם x", "It 😀\u200d😀 was"]:
        _check_mean_of_covering_pieces(nlp(text), tokenizer(text, return_offsets_mapping=True)["offset_mapping"])


def _metaspace_nlp(tmp_path, pieces, *, split=True, max_length=128, get_spans=None):
    """A transformer whose tokenizer is a unigram SentencePiece with the given
    pieces (and single characters), its Metaspace pre-tokenizer splitting at
    spaces or not, cut at `max_length` pieces, one span per doc (or those of
    `get_spans`); and ctxembed_from_trf. Returns the pipeline and the tokenizer."""
    import string

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaModel

    from .test_bert_exactness import _SMALL

    vocab = [(special, 0.0) for special in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]]
    vocab += [(piece, -1.0) for piece in pieces] + [("\u2581", -5.0)]
    vocab += [(char, -8.0) for char in string.ascii_letters + string.punctuation]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=split)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                           special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                                        model_max_length=max_length)
    torch.manual_seed(0)
    tokenizer.save_pretrained(tmp_path / "model")
    XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tokenizer), pad_token_id=1, **_SMALL)).eval().save_pretrained(
        tmp_path / "model")
    nlp = _with_transformer(tmp_path / "model", False,
                            get_spans=get_spans or {"@span_getters": "spacy-transformers.doc_spans.v1"})
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config())
    nlp.initialize()
    return nlp, tokenizer


@pytest.mark.parametrize("split,max_length,text,words", [
    # "▁New▁York" at the span's start holds "New" (the prepended mark has the first character's offsets)
    (False, 128, "New York is big", ["\u2581New\u2581York", "\u2581is", "\u2581big"]),
    (False, 128, "It is big New York is big", ["\u2581New\u2581York", "\u2581is", "\u2581big"]),
    # a lone "▁" (the space before "(") in the last column kept by the cut: "is" is whole
    (True, 4, "New is (big) now", ["\u2581New", "\u2581is", "\u2581big", "\u2581now"]),
])
def test_a_mark_at_a_span_start_or_at_the_cut_is_read_as_the_offsets_say(tmp_path, split, max_length, text, words):
    """Where a piece with the word-start mark is a word's own (at a span's
    start) or only the space after it (a lone mark at the model's length),
    each word's vector is the mean of the states of the pieces whose offsets
    cover its characters, in NumPy, float64; found by a review of the fix
    that leaves a space's piece out of the word before it (which first
    dropped "▁New▁York" from "New", and took "is" for cut)."""
    nlp, tokenizer = _metaspace_nlp(tmp_path, words, split=split, max_length=max_length)
    doc = nlp(text) if max_length > 10 else _cut_quietly(nlp, text)
    _check_mean_of_covering_pieces(doc, tokenizer(text, return_offsets_mapping=True)["offset_mapping"][:max_length])


@pytest.mark.parametrize("family", ["sentencepiece", "sentencepiece-words"])
def test_a_token_of_dropped_characters_does_not_take_the_next_words_piece(tiny_bert_dir, tmp_path, family):
    """A zero-width space, a BOM, a direction mark or a control character
    between spaces is a token of its own, whose characters a SentencePiece
    tokenizer drops (XLM-R's collapses the spaces around them): its only piece
    was the next word's first ("▁sat" over " sat", aligned to it for the space
    after it), or a lone "▁" before a character it does not join, and it took
    that piece's state (|v| about 2), unsaid. Each token's vector is the mean
    (NumPy, float64) of the pieces whose offsets cover its characters; none:
    no vector."""
    from transformers import AutoTokenizer

    nlp = _family_nlp(family, tmp_path, tiny_bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    for text in ["The cat \u200b sat down", "\ufeff It was nice", "It was \u200e ( nice )", "I ran \x07 ?",
                 "It \u200b\u200e was"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # (the tokens without a piece: said)
            doc = nlp(text)
        _check_mean_of_covering_pieces(doc, tokenizer(text, return_offsets_mapping=True)["offset_mapping"])


def _check_mean_of_covering_pieces(doc, offsets):
    """Each token's vector is the mean (NumPy, float64) of the states of the
    pieces whose character offsets cover its characters; none: no vector."""
    states = doc._.trf_data.model_output.last_hidden_state[0].astype("float64")
    for token in doc:
        rows = [j for j, (start, end) in enumerate(offsets)
                if start < end and start < token.idx + len(token.text) and end > token.idx]
        assert token.has_vector == bool(rows), token.text
        if rows:
            numpy.testing.assert_allclose(token.vector, states[rows].mean(axis=0), atol=1e-5, err_msg=token.text)


def _cut_quietly(nlp, text):
    with pytest.warns(UserWarning, match=r"have no wordpiece, or only some of theirs"):
        return nlp(text)


def test_text_lengths_are_never_negative():
    """"aa" "a" "aa" written together, and a piece "aaa" over the last "a" of the
    first, the second, and the first "a" of the third: the shared piece holds
    one character of the middle token. Matched by its letters, repeated across
    the joins, the count may be off (documented), but a count of characters
    is never below zero."""
    from spacy.tokens import Doc

    from spacy_ctxembed.alignment import PieceAlignment
    from spacy_ctxembed.trf_alignment import AlignedPieces, text_lengths

    doc = Doc(spacy.blank("en").vocab, words=["aa", "a", "aa"], spaces=[False, False, False])
    # token 0 <- pieces 0, 1; token 1 <- piece 1; token 2 <- pieces 1, 2
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1, 1, 1, 2]), numpy.array([2, 1, 2]), n_pieces=3)
    pieces = AlignedPieces.of(alignment, [["a", "##aaa", "##a"]], 3)
    lengths = text_lengths(doc, alignment, pieces)
    assert lengths is not None and len(lengths) == 5
    assert (lengths >= 0).all() and (lengths <= numpy.array([1, 3, 3, 3, 1])).all()


def test_a_configs_transformer_is_pretrained_not_left_out_untrained(tiny_bert_dir):
    """A corpus job leaves out what a training config builds untrained (the tagger
    here); spacy-transformers' `transformer` is a trainable component too, but
    pretrained, and what `ctxembed_from_trf` reads: it runs."""
    from spacy_ctxembed.pipeline.build import untrained_components

    nlp = _with_transformer(tiny_bert_dir, True)
    nlp.add_pipe("ctxembed_from_trf", config=ctx_config())
    nlp.add_pipe("tagger")
    assert untrained_components(nlp, nlp.config) == ["tagger"]


def test_an_unknown_pooling_is_refused_when_the_component_is_made():
    """`pooling` is one of the four modes; another is refused, naming the
    component and the setting, before any doc runs (it would otherwise
    reach the pooling with a mode it does not have)."""
    from spacy_ctxembed.errors import SettingError

    with pytest.raises(SettingError, match=r"^\[ctxembed_from_trf\] pooling = 'avg': expected one of 'mean', "
                                           r"'first', 'last', 'max'"):
        spacy.blank("en").add_pipe("ctxembed_from_trf", config=ctx_config(pooling="avg"))


def test_whitespace_tokens_without_pieces_are_not_warned_of(tiny_bert_dir):
    """A WordPiece tokenizer gives whitespace no piece, and whitespace tokens have
    no vector by contract: they are not the tokens cut off by the transformer,
    and a doc with a double space or a blank line must not warn that they are."""
    nlp = _trf_nlp(tiny_bert_dir, False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        doc = nlp("the fox\n\nthe dog  ran")
    spaces = [t for t in doc if t.is_space]
    assert spaces and not any(doc._.trf_data.align[t.i].lengths.sum() for t in spaces)  # the premise
    assert not [w for w in caught if "have no wordpiece" in str(w.message)]
    assert all(t.has_vector for t in doc if not t.is_space)


def test_a_transformer_output_of_no_pieces_gives_zeros_said(tiny_bert_dir):
    """An upstream output whose states hold no piece (spans of nothing) leaves every
    token without a piece, as a doc given no span does: zero vectors, and said so
    (they were zeros without a word)."""
    from spacy_transformers.data_classes import TransformerData
    from transformers.utils import ModelOutput

    nlp = _trf_nlp(tiny_bert_dir, True)
    doc = nlp("I ran home")
    empty = numpy.zeros((0, 0, 32), dtype="float32")
    doc._.trf_data = TransformerData(wordpieces=doc._.trf_data.wordpieces, align=doc._.trf_data.align,
                                     model_output=ModelOutput(last_hidden_state=empty, hidden_states=(empty,) * 3))
    with pytest.warns(UserWarning, match=r"\[ctxembed_from_trf\] 3 of 3 tokens .* no wordpiece"):
        nlp.get_pipe("ctxembed_from_trf")(doc)
    assert doc._.ctx_vectors.shape == (3, 32) and not doc._.ctx_vectors.any()


def test_a_shared_piece_counts_the_longest_overlap_with_the_token_before():
    """"baa" "n" written together as "baan", pieces "b" and "##aan": the shared
    piece holds "aa" of the first token and "n" of the second. Its text
    overlaps the first token's end by "aa" (and, shorter, by "a"); the
    token's share is what the longest overlap leaves, 1 character. Only
    non-negativity was checked for shared pieces before. Expected counts
    are read off the text by hand: "b" | "aa" | "n"."""
    from spacy.tokens import Doc

    from spacy_ctxembed.alignment import PieceAlignment
    from spacy_ctxembed.trf_alignment import AlignedPieces, text_lengths

    doc = Doc(spacy.blank("en").vocab, words=["baa", "n"], spaces=[False, False])
    # token 0 <- pieces 0, 1; token 1 <- piece 1
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1, 1]), numpy.array([2, 1]), n_pieces=2)
    pieces = AlignedPieces.of(alignment, [["b", "##aan"]], 2)
    assert text_lengths(doc, alignment, pieces).tolist() == [1, 2, 1]


def test_punctuation_inside_a_token_is_no_part_of_its_comparable_text():
    """A piece whose normalized text skips a token's punctuation ("us" of
    "U.S.", as a normalizer that drops punctuation writes it) lies in that
    token's text as check_not_retokenized compares it (letters and digits
    only, lowercased), so it is not refused; the same piece aligned to
    another token is. Not seen before: the tokenizers tried split at
    punctuation, so no piece ran across it."""
    from spacy.tokens import Doc

    from spacy_ctxembed.alignment import PieceAlignment
    from spacy_ctxembed.trf_alignment import AlignedPieces, check_not_retokenized

    doc = Doc(spacy.blank("en").vocab, words=["U.S.", "rules"], spaces=[True, False])
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1]), numpy.array([1, 1]), n_pieces=2)
    check_not_retokenized("c", doc, AlignedPieces.of(alignment, [["us", "rules"]], 2), {})
    with pytest.raises(ValueError, match=r"aligns the wordpiece 'rules' with token 0 \('U.S.'\)"):
        check_not_retokenized("c", doc, AlignedPieces.of(alignment, [["rules", "us"]], 2), {})


def test_a_word_end_mark_is_no_part_of_a_pieces_text():
    """CLIP's BPE ends a word's last piece with "</w>": "new</w>" holds the 3
    characters of "new", and a retokenization that moves it onto "york" is seen
    by its text, as a piece without the mark would be. (With the mark counted,
    every such piece held 4 characters more than its token, and its text, not
    letters and digits only, could not be read back: the shift went unseen.)"""
    from spacy.tokens import Doc

    from spacy_ctxembed.alignment import PieceAlignment
    from spacy_ctxembed.trf_alignment import AlignedPieces, check_not_retokenized, text_lengths

    doc = Doc(spacy.blank("en").vocab, words=["new", "york"], spaces=[True, False])
    alignment = PieceAlignment.from_lengths(numpy.array([0, 1]), numpy.array([1, 1]), n_pieces=2)
    pieces = AlignedPieces.of(alignment, [["new</w>", "york</w>"]], 2)
    assert text_lengths(doc, alignment, pieces).tolist() == [3, 4]
    check_not_retokenized("c", doc, pieces, {})
    with pytest.raises(ValueError, match=r"aligns the wordpiece 'york</w>' with token 0 \('new'\)"):
        check_not_retokenized("c", doc, AlignedPieces.of(alignment, [["york</w>", "new</w>"]], 2), {})
