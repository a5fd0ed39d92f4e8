"""Where a doc's outputs, vectors and tensor came from, and what may be mixed.

- `doc.tensor` set by another component (spaCy's tok2vec) after a ctxembed
  component is left to it, also in docs joined with `Doc.from_docs`;
- tokens that no stored output covers never read as "no vector";
- a non-primary component leaves the hooks set after the primary one;
- outputs of one name from different models (other layers, other widths) are
  never joined into one output or compared by `.similarity()`.

The references are what a fresh doc of the same text gets from the component
(or from spaCy's tok2vec) alone, and cosines computed here with NumPy.
"""
import copy
import pickle
import re
import warnings

import numpy
import pytest
import spacy
import srsly
from spacy.language import Language
from spacy.tokens import Doc, DocBin

from spacy_ctxembed import restore_vectors
from spacy_ctxembed.outputs import STORE, MissingOutputs, is_store_key

from .conftest import ctx_config, make_nlp

TEXT = "Apple Inc. is looking at buying U.K. startup for $1 billion."
OTHER = "Pears are fruit."
TOK2VEC = {"model": {
    "@architectures": "spacy.Tok2Vec.v2",
    "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 32, "attrs": ["NORM"], "rows": [500],
              "include_static_vectors": False},
    "encode": {"@architectures": "spacy.MaxoutWindowEncoder.v2", "width": 32, "depth": 1, "window_size": 1,
               "maxout_pieces": 2},
}}


@pytest.fixture(scope="module")
def vocab():
    return spacy.blank("en").vocab


def _pipeline(vocab, model_dir, *components):
    """A pipeline on `vocab` of (factory, name, config) components, initialized."""
    nlp = spacy.blank("en", vocab=vocab)
    for factory, name, config in components:
        nlp.add_pipe(factory, name=name, config=config)
    nlp.initialize()
    return nlp


def _bert(model_dir, **settings):
    return ctx_config(name=model_dir, **settings)


@pytest.fixture(scope="module")
def last_layer(vocab, tiny_bert_dir):
    return _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))


@pytest.fixture(scope="module")
def first_layer(vocab, tiny_bert_dir):
    return _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[1])))


def _cosine(u, v) -> float:
    u, v = numpy.asarray(u, dtype="float64"), numpy.asarray(v, dtype="float64")
    return float(u @ v / numpy.linalg.norm(u) / numpy.linalg.norm(v))


def _without_signatures(doc):
    """The doc as an earlier version stored it: outputs that do not say what made them."""
    for key in _store_keys(doc):  # (its key too: no id in the name)
        store = doc.user_data.pop(key)
        outputs = {name: {k: v for k, v in out.items() if k != "signature"} for name, out in store["outputs"].items()}
        doc.user_data[("._.", STORE, *key[2:])] = {**store, "outputs": outputs}
    return doc


# doc.tensor -----------------------------------------------------------------


def test_a_tensor_another_component_set_after_the_component_is_left_to_it(vocab, tiny_bert_dir):
    """ctxembed -> tok2vec -> ctxembed: the second one must not replace the
    tensor tok2vec's listeners read (same width: only its values tell)."""
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])),
                    ("tok2vec", "tok2vec", TOK2VEC),
                    ("ctxembed_bert", "emb2", _bert(tiny_bert_dir, layers=[1])))
    emb, tok2vec, emb2 = (nlp.get_pipe(name) for name in ("emb", "tok2vec", "emb2"))
    expected_tensor = tok2vec(emb(nlp.make_doc(TEXT))).tensor.copy()
    expected_vectors = emb2(nlp.make_doc(TEXT))._.ctx_vectors
    with pytest.warns(UserWarning, match=r"\[emb2\] set_doc_tensor: doc.tensor already holds another"):
        doc = nlp(TEXT)
    numpy.testing.assert_array_equal(doc.tensor, expected_tensor)
    numpy.testing.assert_array_equal(doc[1].vector, expected_vectors[1])
    # Joined with a doc whose tensor is the component's: the joined tensor is not all ctxembed's.
    ours, theirs = emb(nlp.make_doc(OTHER)), tok2vec(emb(nlp.make_doc(TEXT)))
    joined = Doc.from_docs([ours, theirs])
    before = joined.tensor.copy()
    with pytest.warns(UserWarning, match=r"\[emb2\] set_doc_tensor: doc.tensor already holds another"):
        emb2(joined)
    numpy.testing.assert_array_equal(joined.tensor, before)
    # What spaCy made of the component's own tensor stays the component's: replaced, no warning.
    stored = DocBin(docs=[emb(nlp.make_doc(TEXT))], store_user_data=True).to_bytes()
    cut = emb(nlp.make_doc(TEXT))[2:8].as_doc(copy_user_data=True)
    retokenized = emb(nlp.make_doc(TEXT))
    with retokenized.retokenize() as retokenizer:
        retokenizer.merge(retokenized[0:2])  # "Apple Inc."
    with retokenized.retokenize() as retokenizer:
        retokenizer.split(retokenized[5], ["U.", "K."], heads=[(retokenized[5], 1), retokenized[4]])
    for doc in (next(DocBin().from_bytes(stored).get_docs(vocab)), cut, retokenized,
                Doc.from_docs([emb(nlp.make_doc(TEXT)), emb(nlp.make_doc(OTHER))])):
        fresh = Doc(vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            emb2(doc)
        numpy.testing.assert_array_equal(doc.tensor, emb2(fresh)._.ctx_vectors)


def _split(doc, i, pieces):
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[i], pieces, heads=[(doc[i], 1)] * (len(pieces) - 1) + [doc[i].head])
    return doc


def test_what_spacy_made_of_the_components_tensor_stays_its_own_wherever_its_rows_went(vocab, tiny_bert_dir):
    """A tensor spaCy made of the component's, whose rows are not where its tokens
    are: a merge split back gives the tokens on their own spans zero rows; a split
    leaves a zero row past the doc, which `Doc.from_docs` joins in, shifting the
    next doc's rows; a cut whose text is twice in its source cannot be placed.
    Each was taken for another component's tensor: the next run (what the read
    errors advise) kept it, stale, warning of spaCy's tok2vec; a drop kept it too."""
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    emb = nlp.get_pipe("emb")
    merged_back = nlp("Send me an e-mail in May.")
    with merged_back.retokenize() as retokenizer:
        retokenizer.merge(merged_back[3:6])  # "e-mail"
    _split(merged_back, 3, ["e", "-", "mail"])
    assert not merged_back.tensor[3:6].any()  # the premise: back on their spans, with zero rows
    split = _split(nlp("I visited NewYork yesterday."), 2, ["New", "York"])
    assert len(split.tensor) == len(split) + 1
    joined = restore_vectors(Doc.from_docs([split, nlp(OTHER)]))
    assert not numpy.array_equal(joined.tensor[len(split)], nlp(OTHER).tensor[0])  # (the rows shifted)
    repeated = nlp("Dogs bark. Dogs bark.")[0:2].as_doc()
    for doc in (merged_back, joined, repeated):
        fresh = Doc(vocab, words=[t.text for t in doc], spaces=[bool(t.whitespace_) for t in doc])
        dropped = doc.copy()
        dropped._.ctx_outputs = None
        assert dropped.tensor.size == 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            emb(doc)
        numpy.testing.assert_array_equal(doc.tensor, emb(fresh)._.ctx_vectors)
    # Another component's tensor is still its own (no row of it is one of the component's).
    theirs = nlp(OTHER)
    theirs.tensor = theirs.tensor + numpy.float32(1e-3)
    with pytest.warns(UserWarning, match=r"\[emb\] set_doc_tensor: doc.tensor already holds another"):
        emb(theirs)


def test_dropping_the_outputs_of_a_cut_forgets_the_vector_spacy_copied_to_it(vocab, tiny_bert_dir):
    """spaCy's as_doc keeps the span's vector and norm (the component's) as the
    cut's own: after a drop, `cut.vector` and spaCy's similarity still read them."""
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    source = nlp(TEXT)
    cut = source[0:5].as_doc()
    numpy.testing.assert_array_equal(cut.vector, source[0:5].vector)  # the premise
    cut._.ctx_outputs = None
    plain = Doc(vocab, words=[t.text for t in cut], spaces=[bool(t.whitespace_) for t in cut])
    assert not cut.has_vector and cut.vector_norm == plain.vector_norm == 0
    numpy.testing.assert_array_equal(cut.vector, plain.vector)


# Tokens no output covers ---------------------------------------------------------


def test_tokens_no_stored_output_covers_never_read_as_having_no_vector(vocab, last_layer):
    src = last_layer(TEXT)
    other = last_layer(OTHER)
    # span.as_doc() keeps its outputs only through its hooks, which Doc.from_docs drops.
    joined = Doc.from_docs([src[0:5].as_doc(), other])
    with pytest.raises(MissingOutputs, match=r"\[emb\] no 'emb' output covers 5 of its 9 tokens .*"
                                             r"'Apple Inc\. is looking at'.*copy_user_data=True"):
        restore_vectors(joined)
    with pytest.raises(MissingOutputs, match="copy_user_data=True"):
        _ = joined._.ctx_vectors
    with pytest.raises(MissingOutputs, match="copy_user_data=True"):
        _ = joined._.ctx_outputs
    # A doc that never went through the component: the same.
    plain = Doc.from_docs([last_layer.make_doc("Plain words here."), last_layer(OTHER)], exclude=["tensor"])
    with pytest.raises(MissingOutputs, match="did not go through this component"):
        restore_vectors(plain)
    # Running the component on the joined doc gives it the outputs of a fresh doc of its text.
    again = last_layer.get_pipe("emb")(joined)
    fresh = last_layer(joined.text)
    assert [t.text for t in fresh] == [t.text for t in again]
    numpy.testing.assert_array_equal(again._.ctx_vectors, fresh._.ctx_vectors)
    # Tokens covered by stored tokens that have no vector (whitespace) simply have none.
    spaced = last_layer("Two  spaces.")
    kept = restore_vectors(Doc.from_docs([src, spaced]))
    space = next(t for t in kept if t.is_space)
    assert not space.has_vector
    n = len(src)
    numpy.testing.assert_array_equal(kept._.ctx_vectors[:n], src._.ctx_vectors)
    numpy.testing.assert_array_equal(kept._.ctx_vectors[n:], spaced._.ctx_vectors)


# Hooks -----------------------------------------------------------------------------


def _always_42(a, b):
    return 42.0


@Language.component("ctxembed_test_own_similarity")
def _own_similarity(doc):
    doc.user_hooks["similarity"] = _always_42
    doc.user_span_hooks["similarity"] = _always_42
    return doc


def test_a_non_primary_component_keeps_the_hooks_set_after_the_primary_one(vocab, tiny_bert_dir, last_layer):
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])),
                    ("ctxembed_test_own_similarity", "own", {}),
                    ("ctxembed_bert", "more", _bert(tiny_bert_dir, layers=[1], primary=False)))
    doc = nlp(TEXT)
    assert doc.user_hooks["similarity"] is _always_42
    assert doc.similarity(doc[0:3]) == 42.0 and doc[0:3].similarity(doc) == 42.0
    numpy.testing.assert_array_equal(doc[1].vector, last_layer(TEXT)[1].vector)  # still the primary's
    # span.as_doc() still finds the non-primary output through the doc's hooks.
    cut = doc[2:6].as_doc()
    numpy.testing.assert_array_equal(cut._.ctx_outputs["more"]["vectors"], doc._.ctx_outputs["more"]["vectors"][2:6])
    assert cut.user_hooks["similarity"] is _always_42


def test_a_non_primary_component_of_the_primary_outputs_name_never_replaces_them(vocab, tiny_bert_dir, last_layer,
                                                                                  first_layer):
    """A doc through two pipelines whose components share a name, the second
    one's not primary: its vectors replaced the primary ones under that
    name, and token.vector read them while doc.tensor kept the first's."""
    doc = last_layer(TEXT)
    before = numpy.array([token.vector for token in doc])
    other = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[1], primary=False)))
    with pytest.raises(ValueError, match=r"^\[emb\] \(primary = false\) would replace the doc's primary vectors, "
                                         r"which are stored under the same name 'emb' and were made by another model "
                                         r"or with other settings \(layers \[2\] vs \[1\]\)"):
        other(doc)
    numpy.testing.assert_array_equal([token.vector for token in doc], before)
    numpy.testing.assert_array_equal(doc.tensor, before)
    # The same model's are the same vectors; as primary, the other model's are the doc's.
    same = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2], primary=False)))
    numpy.testing.assert_array_equal([token.vector for token in same(doc)], before)
    doc = first_layer(doc)
    numpy.testing.assert_array_equal([token.vector for token in doc], first_layer(TEXT).tensor)
    numpy.testing.assert_array_equal(doc.tensor, first_layer(TEXT).tensor)
    # Primary outputs of the name joined from two models cannot be read: not written over either (a KeyError).
    joined = Doc.from_docs([last_layer(TEXT), first_layer(OTHER)])
    with pytest.raises(ValueError, match=r"^\[emb\] \(primary = false\) would replace the doc's primary vectors, "
                                         r"which are stored under the same name 'emb' and cannot be read"):
        same(joined)


def test_a_clash_of_joined_outputs_is_still_named_after_another_component_writes(vocab, tiny_bert_dir, last_layer,
                                                                                   first_layer):
    """Docs of two models joined (`Doc.from_docs`): their primary outputs cannot
    be read as one. A `primary = false` component of another name run on the
    joined doc then writes its own output beside them: the primary outputs
    still read as the clash they are, with the clash named, not as a store
    "edited by hand" that names a primary it does not hold."""
    clash = r"^\[emb\] this doc joins docs \(Doc\.from_docs\) whose 'emb' outputs come from different models"
    joined = Doc.from_docs([last_layer(TEXT), first_layer(OTHER)])
    with pytest.raises(MissingOutputs, match=clash):
        assert joined._.ctx_vectors is None
    aux = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "aux", _bert(tiny_bert_dir, layers=[1], primary=False)))
    joined = aux(joined)
    for read in (lambda d: d._.ctx_vectors, lambda d: d._.ctx_outputs):
        with pytest.raises(MissingOutputs, match=clash):
            read(joined)


def test_a_non_primary_component_of_the_same_model_keeps_the_stored_layers(vocab, tiny_bert_dir):
    """The same model's `primary = false` component of the primary output's
    name, storing no layers, rewrote that output without them: the layers
    that `doc._.ctx_layers` read were dropped without a word."""
    settings = dict(layers=[1, 2], combine="mean")
    storing = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, store_layers=True,
                                                                             **settings)))
    plain = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, primary=False, **settings)))
    doc = storing(TEXT)
    layers, vectors = numpy.array(doc._.ctx_layers), numpy.array(doc._.ctx_vectors)
    assert layers.shape == (2, len(doc), 32)
    doc = plain(doc)
    numpy.testing.assert_array_equal(doc._.ctx_layers, layers)
    numpy.testing.assert_array_equal(doc._.ctx_vectors, vectors)
    # Tokens changed since: the stored layers are not those of the doc's tokens, and are not kept.
    doc = storing(TEXT)
    with doc.retokenize() as retokenizer:
        retokenizer.merge(doc[0:2])
    with pytest.warns(UserWarning, match=r"^\[emb\] \(primary = false, store_layers = false\) rewrote the "
                                         r"doc's primary output 'emb', whose stored layers it cannot vouch for"):
        assert plain(doc)._.ctx_layers is None


def test_cuts_of_a_joined_doc_read_its_own_vectors(last_layer):
    """`span.as_doc()` of a doc joined with `Doc.from_docs`, across the join or
    inside one part, with or without its user data: its tokens' vectors as the
    joined doc has them. (Both ways were refused: the joined doc's stores gave
    `as_doc()` no source, and a cut carrying parts that reach past it was taken
    for several cuts of one source; found by a review helper.)"""
    nlp = last_layer
    first, second = nlp(TEXT), nlp("Pears are fruit, not vegetables.")
    joined = restore_vectors(Doc.from_docs([first, second]))
    n = len(first)
    for start, end in ((n - 3, n + 2), (1, 4), (n + 1, n + 4), (0, n), (n, len(joined))):
        for copy_user_data in (False, True):
            cut = joined[start:end].as_doc(copy_user_data=copy_user_data)
            numpy.testing.assert_allclose(cut._.ctx_vectors, joined._.ctx_vectors[start:end], atol=1e-6)
            numpy.testing.assert_allclose(cut[0:2].vector, joined[start:start + 2].vector, atol=1e-6)


def test_an_output_that_covers_part_of_a_joined_doc_says_which_tokens_it_misses(vocab, tiny_bert_dir):
    """A doc with outputs "emb" and "more" joined with one that has "emb" only:
    `ctx_outputs["more"]` has zero rows for the second part's tokens, which it
    never embedded, and said nothing (found by a review helper)."""
    both = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])),
                     ("ctxembed_bert", "more", _bert(tiny_bert_dir, layers=[1], primary=False)))
    only = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    first, second = both(TEXT), only(OTHER)
    outputs = restore_vectors(Doc.from_docs([first, second]))._.ctx_outputs
    assert "missing" not in outputs["emb"]
    assert outputs["more"]["missing"].tolist() == [False] * len(first) + [True] * len(second)
    numpy.testing.assert_array_equal(outputs["more"]["vectors"][: len(first)], first._.ctx_outputs["more"]["vectors"])


def test_another_output_written_on_a_joined_doc_keeps_which_tokens_an_output_misses(vocab, tiny_bert_dir):
    """Writing one more output on a joined doc gathers its outputs, as read,
    into one store: an output that covers only the first part ("more") must
    keep the rows of the tokens it covers and stay missing on the others.
    Kept the other way round, it held the zero rows of the second part's
    tokens, and the first part's own rows were lost."""
    both = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])),
                     ("ctxembed_bert", "more", _bert(tiny_bert_dir, layers=[1], primary=False)))
    only = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    extra = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "extra", _bert(tiny_bert_dir, layers=[1],
                                                                             primary=False)))
    first, second = both(TEXT), only(OTHER)
    joined = extra.get_pipe("extra")(Doc.from_docs([first, second]))
    outputs = joined._.ctx_outputs
    assert sorted(outputs) == ["emb", "extra", "more"]
    assert outputs["more"]["missing"].tolist() == [False] * len(first) + [True] * len(second)
    numpy.testing.assert_array_equal(outputs["more"]["vectors"][: len(first)], first._.ctx_outputs["more"]["vectors"])
    numpy.testing.assert_array_equal(outputs["emb"]["vectors"],
                                     numpy.concatenate([first._.ctx_vectors, second._.ctx_vectors]))
    numpy.testing.assert_array_equal(outputs["extra"]["vectors"], extra(joined.text)._.ctx_outputs["extra"]["vectors"])


def test_another_output_written_on_a_cut_with_its_user_data_keeps_only_the_cuts_own_tokens(vocab, tiny_bert_dir,
                                                                                              last_layer):
    """`span.as_doc(copy_user_data=True)` from a doc's first token keeps the
    source's store at a key that starts where the cut does (0) but ends where
    the source does. One more output written on the cut gathers what the cut
    reads into a store of its own tokens; taken as the cut's whole-doc store
    (by its start alone), the source's store was kept whole, its "Pears are
    fruit ." then lay in place on a doc joined after the cut, and the join was
    refused as "cannot be told" though every token has its own rows."""
    more = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "more", _bert(tiny_bert_dir, layers=[1], primary=False)))
    source = last_layer("Apple is great . Pears are fruit .")
    cut = more.get_pipe("more")(source[0:4].as_doc(copy_user_data=True))  # "Apple is great . "
    other = last_layer("Pears are fruit .")
    joined = restore_vectors(Doc.from_docs([cut, other]))
    numpy.testing.assert_array_equal(joined._.ctx_vectors,
                                     numpy.concatenate([source._.ctx_vectors[:4], other._.ctx_vectors]))
    numpy.testing.assert_array_equal(joined._.ctx_outputs["more"]["vectors"][:4],
                                     more(cut.text)._.ctx_outputs["more"]["vectors"])  # (made on the cut's text)


def test_a_cut_of_a_joined_doc_keeps_the_layers_its_own_part_stored(vocab, tiny_bert_dir):
    """Joined from a doc with stored layers and one without, the doc has no
    layers (not every token has them); but a cut of the first part alone has
    its layers (the other part's store, off its text, dropped them: found by a
    review helper)."""
    stored = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2],
                                                                            store_layers=True)))
    plain = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    first = stored(TEXT)
    joined = restore_vectors(Doc.from_docs([first, plain(OTHER)]))
    assert joined._.ctx_layers is None
    cut = joined[: len(first)].as_doc(copy_user_data=True)
    numpy.testing.assert_array_equal(cut._.ctx_layers, first._.ctx_layers)
    numpy.testing.assert_array_equal(cut._.ctx_vectors, first._.ctx_vectors)


# Outputs of different models ---------------------------------------------------------------


def test_joined_outputs_of_one_name_from_different_models_are_an_error(vocab, last_layer, first_layer):
    joined = Doc.from_docs([last_layer(TEXT), first_layer(OTHER)])
    signatures = r"signatures '[^']*layers=\[1\][^']*' and '[^']*layers=\[2\][^']*'"
    with pytest.raises(MissingOutputs, match=r"\[emb\] .*'emb' outputs come from different models \(" + signatures):
        restore_vectors(joined)
    with pytest.raises(MissingOutputs, match=signatures):
        _ = joined._.ctx_outputs
    # Another component run on it keeps the clash; the component itself settles it.
    first_layer.get_pipe("emb")(joined)
    numpy.testing.assert_array_equal(joined._.ctx_vectors, first_layer(joined.text)._.ctx_vectors)
    # Docs of one pipeline, one of them from a pickled copy, sent back as bytes (nlp.pipe(n_process=2)), join.
    copy = pickle.loads(pickle.dumps(last_layer))

    def from_copy(text):
        return Doc(vocab).from_bytes(copy(text).to_bytes())

    both = restore_vectors(Doc.from_docs([last_layer(TEXT), from_copy(OTHER)]))
    n = len(last_layer(TEXT))
    numpy.testing.assert_array_equal(both._.ctx_vectors[:n], last_layer(TEXT)._.ctx_vectors)
    numpy.testing.assert_array_equal(both._.ctx_vectors[n:], last_layer(OTHER)._.ctx_vectors)
    # The copy's outputs still say what made them.
    with pytest.raises(MissingOutputs, match=signatures):
        restore_vectors(Doc.from_docs([from_copy(TEXT), first_layer(OTHER)]))


def test_joined_outputs_of_different_widths_are_an_error(vocab, tiny_bert_dir, last_layer):
    wide = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[1, 2],
                                                                          combine="concat")))
    joined = Doc.from_docs([last_layer(TEXT), wide(OTHER)], exclude=["tensor"])
    with pytest.raises(MissingOutputs, match=r"\[emb\] .*\(vectors of widths 32 and 64"):
        restore_vectors(joined)
    # Without signatures (docs stored by an earlier version) the widths still say so.
    joined = Doc.from_docs([_without_signatures(last_layer(TEXT)), _without_signatures(wide(OTHER))],
                           exclude=["tensor"])
    with pytest.raises(MissingOutputs, match=r"\[emb\] .*\(vectors of widths 32 and 64\)"):
        _ = joined._.ctx_outputs


def test_joined_outputs_with_other_numbers_of_stored_layers_are_an_error(vocab, tiny_bert_dir):
    """Vectors of one width, stored with one layer and with two: without
    signatures (docs stored by an earlier version) the layer counts say that
    other settings made them, and the layers cannot be stacked as one output's."""
    one, two = (_pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=layers,
                                                                               store_layers=True)))
                for layers in ([2], [1, 2]))
    joined = Doc.from_docs([_without_signatures(one(TEXT)), _without_signatures(two(OTHER))])
    with pytest.raises(MissingOutputs, match=r"^\[emb\] .*'emb' outputs come from different models "
                                             r"\(1 and 2 stored layers\)"):
        restore_vectors(joined)
    # With signatures, both are said.
    joined = Doc.from_docs([one(TEXT), two(OTHER)])
    with pytest.raises(MissingOutputs, match=r"\(1 and 2 stored layers, signatures '"):
        _ = joined._.ctx_outputs


def test_similarity_compares_vectors_of_one_space_only(vocab, tiny_bert_dir, last_layer, first_layer):
    a, b = last_layer(TEXT), first_layer(TEXT)
    with pytest.raises(ValueError, match=r"Doc .* and Doc .* have vectors of different ctxembed models "
                                         r"\(layers \[2\] vs \[1\]\)"):
        a.similarity(b)
    with pytest.raises(ValueError, match=r"layers \[2\] vs \[1\]"):
        a[0].similarity(b[0])
    # One model: the cosine; outputs that do not say what made them: compared as before.
    again = last_layer(OTHER)
    assert a[0].similarity(again[0]) == pytest.approx(_cosine(a[0].vector, again[0].vector), abs=1e-6)
    old = _without_signatures(first_layer(TEXT))
    assert a[0].similarity(old[0]) == pytest.approx(_cosine(a[0].vector, b[0].vector), abs=1e-6)
    # Static vectors of the same width are another space.
    static = _pipeline(spacy.blank("en").vocab, tiny_bert_dir,
                       ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    static.vocab.set_vector("Apple", numpy.ones(32, dtype="float32"))
    doc, plain = static(TEXT), static.make_doc(TEXT)
    with pytest.raises(ValueError, match=r"Token 'Apple' has a ctxembed component's contextual vector, but "
                                         r"Lexeme 'Apple' has a vector from elsewhere"):
        doc[0].similarity(static.vocab["Apple"])
    with pytest.raises(ValueError, match="different spaces"):
        doc[0].similarity(plain[0])
    assert doc[0].similarity(plain[1]) == 0.0  # no vector at all there: as spaCy


def test_a_cut_doc_with_its_user_data_joined_with_others_keeps_to_its_own_characters(last_layer):
    """`span.as_doc(copy_user_data=True)` keeps the whole source's store (spaCy
    shifts its key, never trims it): joined with other docs, the source's tokens
    past the cut lay on the other docs' characters, and "Two" got the mean of
    "buying" and "Two", a whitespace token a vector."""
    nlp = last_layer
    source = nlp(TEXT)
    other = nlp("Two  spaces.")
    before = nlp("Before it.")
    cut = source[0:5].as_doc(copy_user_data=True)  # "Apple Inc. is looking at"
    for parts in ([cut, other], [before, cut, other], [other, cut]):
        joined = restore_vectors(Doc.from_docs(parts))
        offset = 0
        for part in parts:
            expected = source._.ctx_vectors[:5] if part is cut else part._.ctx_vectors
            numpy.testing.assert_allclose(joined._.ctx_vectors[offset:offset + len(part)], expected, atol=1e-6)
            offset += len(part)
        assert not any(token.has_vector for token in joined if token.is_space)
    # A word that repeats at the same place ("Hello"): the source's token past the cut
    # has the right text there, but the characters are the other part's. And a cut
    # part whose shifted key is the joined doc's whole-doc key ("Hello again." is as
    # long as the cut's rest): it was read as the only store.
    repeated = nlp("Hello world. Hello there.")
    for other_text in ("Hello again, friend.", "Hello again."):
        other = nlp(other_text)
        parts = [repeated[0:3].as_doc(copy_user_data=True), other]
        joined = restore_vectors(Doc.from_docs(parts))
        numpy.testing.assert_allclose(joined._.ctx_vectors[:3], repeated._.ctx_vectors[:3], atol=1e-6)
        numpy.testing.assert_allclose(joined._.ctx_vectors[3:], other._.ctx_vectors, atol=1e-6)
    # Several such cuts of one source, shifted differently: where words repeat, which
    # cut's tokens belong on which characters cannot be told (700 of 900 tokens got
    # other sentences' vectors). An error, and the component run again on the joined
    # doc gives it its own vectors (with a warning that the stored ones are dropped).
    numbered = nlp(" ".join(f"Sentence {i} talks about item {i} here ." for i in range(6)))
    cuts = [numbered[start:start + 7].as_doc(copy_user_data=True) for start in (0, 14, 28)]
    with pytest.raises(MissingOutputs, match="which outputs belong to which characters cannot be told"):
        restore_vectors(Doc.from_docs(cuts))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = nlp(Doc.from_docs(cuts))
    assert [str(w.message) for w in caught if "[emb]" in str(w.message) or "dropped" in str(w.message)] == [
        next(str(w.message) for w in caught if "stored outputs are dropped" in str(w.message))]
    numpy.testing.assert_allclose(again._.ctx_vectors, nlp(again.text)._.ctx_vectors, atol=1e-5)
    numpy.testing.assert_allclose(again.tensor, again._.ctx_vectors)  # the joined tensor was ctxembed's
    # Each sentence cut with its user data and joined again: the source's vectors.
    rejoined = restore_vectors(Doc.from_docs([source[0:6].as_doc(copy_user_data=True),
                                              source[6:].as_doc(copy_user_data=True)]))
    numpy.testing.assert_allclose(rejoined._.ctx_vectors, source._.ctx_vectors, atol=1e-6)


def test_cuts_whose_shifted_keys_are_equal_keep_their_own_stores(last_layer, first_layer):
    """`Doc.from_docs` gathers the parts' user data in one dict: two cuts with
    their user data whose shifted store spans are equal (sources of one length,
    each cut where the other part ends) shared one key, and the later part's
    store silently replaced the earlier's. Its tokens then read the other's
    rows: another sentence's "Apples grow", or another model's (one source
    annotated again between the two cuts), with no error. Each part keeps its
    own store now, and two cuts whose stores overlap are an error, as they
    are wherever their keys fall."""
    one = last_layer("Apples grow well here today.")
    for text in ("Apples grow fast here never.", "Cherry pies sell fast there."):
        other = last_layer(text)
        assert len(other.text) == len(one.text)
        parts = [one[0:2].as_doc(copy_user_data=True), other[2:4].as_doc(copy_user_data=True)]
        assert parts[0].text == "Apples grow "
        joined = Doc.from_docs(parts)
        assert len(_store_keys(joined)) == 2
        with pytest.raises(MissingOutputs, match="which outputs belong to which characters cannot be told"):
            restore_vectors(joined)
        numpy.testing.assert_allclose(last_layer(joined)._.ctx_vectors, last_layer(joined.text)._.ctx_vectors,
                                      atol=1e-6)
    # One source's text is the joined doc's: its store lies in place over both parts, and the
    # other part's own tokens would read its rows (another context's), whichever side it is on.
    for first_text, second_text in (("Apples grow well. Pears fall down.", "Apples grow well. Limes fall down."),
                                    ("Apples grow well. Limes fall down.", "Plums grown well. Limes fall down.")):
        first, second = last_layer(first_text), last_layer(second_text)
        parts = [first[:4].as_doc(copy_user_data=True), second[4:].as_doc(copy_user_data=True)]
        assert Doc.from_docs(parts).text in (first_text, second_text)
        with pytest.raises(MissingOutputs, match="which outputs belong to which characters cannot be told"):
            restore_vectors(Doc.from_docs(parts))
    # A cut of whitespace alone has characters of its own, though no vector: joined with a doc on which its
    # source's words land ("text" by chance in place), it reads as before (a false alarm for a moment).
    source, whole = last_layer("Intro.\n\nBody text here."), last_layer("Some text there.")
    for parts in ([source[2:3].as_doc(copy_user_data=True), whole], [whole, source[2:3].as_doc(copy_user_data=True)]):
        joined = restore_vectors(Doc.from_docs(parts))
        offset = 0 if parts[0] is whole else 1
        numpy.testing.assert_array_equal(joined._.ctx_vectors[offset:offset + len(whole)], whole._.ctx_vectors)
        assert [token.has_vector for token in joined if token.is_space] == [False]
    # Docs stored before keys had ids (all named "ctxembed") get ids from restore_vectors: their cuts too.
    one_before, other_before = (_saved_before(last_layer(text)) for text in (one.text, "Apples grow fast here never."))
    for doc in (one_before, other_before):
        assert [key[1] for key in _store_keys(doc)] == [STORE]
        restore_vectors(doc)
        assert [key[1][:len(STORE) + 1] for key in _store_keys(doc)] == [f"{STORE}:"]
    parts = [one_before[0:2].as_doc(copy_user_data=True), other_before[2:4].as_doc(copy_user_data=True)]
    with pytest.raises(MissingOutputs, match="which outputs belong to which characters cannot be told"):
        restore_vectors(Doc.from_docs(parts))
    # (What was read: the other source's rows for "Apples grow", which its context makes other rows.)
    assert not numpy.allclose(one._.ctx_vectors[:2], last_layer("Apples grow fast here never.")._.ctx_vectors[:2],
                              atol=1e-3)
    # One source, annotated again by another model between the cuts: an error, never one model's rows for both.
    source = last_layer("I moved to New York City last spring with friends.")
    first = source[0:6].as_doc(copy_user_data=True)
    second = first_layer(source)[6:].as_doc(copy_user_data=True)
    with pytest.raises(MissingOutputs, match=r"'emb' outputs come from different models"):
        restore_vectors(Doc.from_docs([first, second]))
    # Cuts of one store are that store's, as the source reads it.
    source = last_layer(source.text)
    rejoined = restore_vectors(Doc.from_docs([source[0:6].as_doc(copy_user_data=True),
                                              source[6:].as_doc(copy_user_data=True)]))
    assert len(_store_keys(rejoined)) == 1
    numpy.testing.assert_array_equal(rejoined._.ctx_vectors, source._.ctx_vectors)


def test_a_cut_that_ends_without_a_space_joined_flush_with_another_keeps_its_last_token(last_layer):
    """A cut whose last token ("$") touches the next part's first character, with
    no space between (`ensure_whitespace=False`): the token ends where the next
    part begins, and is still the cut's own."""
    nlp = last_layer
    source = nlp(TEXT)
    dollar = next(token.i for token in source if token.text == "$")
    assert not source[dollar].whitespace_
    cut = source[dollar - 2:dollar + 1].as_doc(copy_user_data=True)  # "startup for $"
    other = nlp("Pears are fruit.")
    joined = restore_vectors(Doc.from_docs([cut, other], ensure_whitespace=False))
    assert joined.text == "startup for $Pears are fruit."
    numpy.testing.assert_allclose(joined._.ctx_vectors[:3], source._.ctx_vectors[dollar - 2:dollar + 1], atol=1e-6)
    numpy.testing.assert_allclose(joined._.ctx_vectors[3:], other._.ctx_vectors, atol=1e-6)


def test_a_cut_doc_joined_with_its_sources_own_text_or_words_is_never_read_as_another(last_layer):
    """A cut carries its whole source's store; joined with a doc whose text is
    the rest of the source, every stored token has its text in place. Found by
    a review helper, each read without an error:
    - joined with the source's rest, embedded on its own: those tokens read the
      mean of their own rows and the source's (now an error: which part is the
      cut cannot be told when both have every token in place);
    - joined with words that never went through the component, as long as the
      source's rest: they read the source's rows ("Beets" read "Pears");
    - the cut's store, at the joined doc's whole-doc key, was taken for the
      joined doc's own by `as_doc()`, which read the source's rows (now
      `as_doc()` of a joined doc reads what the joined doc reads)."""
    nlp = last_layer
    source = nlp("Apple is great . Pears are fruit .")
    cut = source[0:4].as_doc(copy_user_data=True)  # "Apple is great . "
    for parts in ([cut, nlp("Pears are fruit .")], [nlp("Apple is great ."), source[4:].as_doc(copy_user_data=True)],
                  [cut, nlp("Pears are fruit . More")]):
        with pytest.raises(MissingOutputs, match="cannot be told"):
            restore_vectors(Doc.from_docs(parts))
    with pytest.raises(MissingOutputs, match="from token 4: 'Beets'"):
        restore_vectors(Doc.from_docs([cut, nlp.make_doc("Beets are fruit .")], exclude=["tensor"]))
    other = nlp("Pears are fruit !")
    joined = restore_vectors(Doc.from_docs([cut, other]))
    numpy.testing.assert_allclose(joined._.ctx_vectors[:4], source._.ctx_vectors[:4], atol=1e-6)
    numpy.testing.assert_allclose(joined._.ctx_vectors[4:], other._.ctx_vectors, atol=1e-6)
    numpy.testing.assert_allclose(joined[4:7].as_doc()._.ctx_vectors, other._.ctx_vectors[:3], atol=1e-6)
    with pytest.raises(MissingOutputs, match="cannot be told"):  # (both stores reach past this cut)
        _ = joined[4:7].as_doc(copy_user_data=True)._.ctx_vectors


def test_two_cuts_whose_sources_lie_on_one_anothers_words_are_an_error(last_layer):
    """Cuts of two docs that share words, joined: each one's source's tokens lie
    in place on the other's characters ("The" of both on "The"), and either
    could be the one whose words those are: an error, never the other's rows.
    A whole doc beside a cut whose source's word lands on its own still reads
    its own rows."""
    nlp = last_layer
    first, second = nlp("The cat sat down"), nlp("The cat ran")
    with pytest.raises(MissingOutputs, match="cannot be told"):
        restore_vectors(Doc.from_docs([first[0:1].as_doc(copy_user_data=True),
                                       second[1:2].as_doc(copy_user_data=True)]))
    before, source = nlp("I like the"), nlp("the cat sat")
    joined = restore_vectors(Doc.from_docs([before, source[1:2].as_doc(copy_user_data=True)]))
    numpy.testing.assert_allclose(joined._.ctx_vectors[:3], before._.ctx_vectors, atol=1e-6)
    numpy.testing.assert_allclose(joined._.ctx_vectors[3:], source._.ctx_vectors[1:2], atol=1e-6)


def test_a_cut_of_a_joined_doc_never_lends_a_carried_word_to_a_part_without_outputs(last_layer):
    """Cuts that carry their sources' stores, where a source's word lands by
    chance in place on another part's word: an error, never that word's
    vector. (Found by fuzzing joins and cuts: each case read a wrong row,
    with no error, under some version of the rules in `_own_regions`.)
    - A cut of a doc joined from a cut and a plain `as_doc()` part, which
      has no outputs: each cut's own tokens are one run in place, and a
      second run is a carried word.
    - Two cuts, one of a joined doc: with several cuts, a part in place may
      be one of theirs.
    - The same with one cut on the doc, the other showing only by its
      source's store lying wholly off the doc."""
    nlp = last_layer

    def doc(words, spaces):
        return nlp(Doc(nlp.vocab, words=words, spaces=spaces))

    first = doc([" ", "ab", "b", "b"], [False, True, False, False])
    carried = doc(["a", "a", "a", "a"], [False, False, False, True])[0:2].as_doc(copy_user_data=True)
    plain = doc(["a", "a", "."], [True, True, True])[1:3].as_doc()  # no outputs of its own
    joined = Doc.from_docs([first, carried, plain])
    cut = joined[2:7].as_doc(copy_user_data=True)  # "b aa a "
    assert [t.text for t in cut] == ["b", "b", "a", "a", "a"]
    with pytest.raises(MissingOutputs, match="cannot be told"):
        restore_vectors(cut)
    # Several cuts: a part in place may be one of theirs (here the lone "a" of a
    # doc the second cut's source was joined from, in place on the first cut's "a").
    inner = Doc.from_docs([doc(["c", "b", "a", "a"], [False, True, True, False]), doc(["a"], [False]),
                           doc(["a", "b", "b"], [False, True, True])], ensure_whitespace=False)
    first_cut = doc(["a", "a"], [False, True])[1:2].as_doc(copy_user_data=True)
    joined = Doc.from_docs([first_cut, inner[6:8].as_doc(copy_user_data=True)])
    assert joined.text == "a b b "
    with pytest.raises(MissingOutputs, match="cannot be told"):
        restore_vectors(joined)
    # The same with one cut on the doc: the other cut shows only by its source's
    # store lying wholly off the doc (the first "a a a"). The second cut's source's
    # "a" is in place on the first cut's own "a".
    pair = Doc.from_docs([doc(["a", "a", "a"], [True, True, False]), doc(["a", "a", "b"], [False, False, True])])
    second = doc(["a", "b", "."], [True, False, True])[1:3].as_doc(copy_user_data=True)  # "b. "
    joined = Doc.from_docs([pair[4:5].as_doc(copy_user_data=True), second,
                            doc(["b", "ab", "b", "a", "\n"], [True, False, True, False, False])])
    assert joined.text == "a b. b abb a\n"
    with pytest.raises(MissingOutputs, match="cannot be told"):
        restore_vectors(joined)


def test_a_cut_whose_sources_token_crosses_the_joined_docs_start_never_lends_it_to_a_part_without_outputs(
        last_layer):
    """A cut with its user data carries its source's tokens before the cut:
    joined after a doc without outputs ("Hi"), the source's "wonderful" lies
    across the joined doc's first character, over "Hi". Its text there ("ul")
    is not the doc's ("Hi"), so it is not placed and "Hi" has no output. Were
    a token across the doc's edge placed whatever its text, "Hi" would read
    "wonderful"'s row with no error."""
    nlp = last_layer
    source = nlp("Hello wonderful world today.")
    cut = source[2:].as_doc(copy_user_data=True)  # "world today."
    joined = Doc.from_docs([nlp.make_doc("Hi"), cut], exclude=["tensor"])
    assert joined.text == "Hi world today."
    with pytest.raises(MissingOutputs, match=r"1 of its 4 tokens \(from token 0: 'Hi'\)"):
        restore_vectors(joined)


def test_a_cut_beside_a_part_without_outputs_where_another_cut_shows_only_off_the_doc_is_an_error(last_layer):
    """A cut ("Cats sleep ") of a joined doc carries the stores of all of its
    parts: "Before this." (lying wholly before the cut, off the doc), its own
    part's (a cut itself, whose source's "a lot" lie past it, out of place) and
    "Dogs bark ." (past the cut). Joined with "Dogs bark ." that never went
    through the component, the carried store lands in place on it. With the
    cut off the doc, two cuts made this doc, and a part in place may be one of
    theirs: an error. Counting only the cuts on the doc (one), the part without
    outputs read the carried rows with no error."""
    nlp = last_layer
    before, dogs = nlp("Before this."), nlp("Dogs bark .")
    inner = Doc.from_docs([before, nlp("Cats sleep a lot")[0:2].as_doc(copy_user_data=True), dogs])
    assert inner.text == "Before this. Cats sleep Dogs bark ."
    cut = inner[3:5].as_doc(copy_user_data=True)  # "Cats sleep "
    joined = Doc.from_docs([cut, nlp.make_doc("Dogs bark .")], exclude=["tensor"])
    assert joined.text == "Cats sleep Dogs bark ."
    with pytest.raises(MissingOutputs, match="cannot be told"):
        restore_vectors(joined)


def test_a_cut_of_docs_joined_flush_leaves_out_the_store_that_ends_where_it_begins(last_layer, first_layer):
    """Joined without a space (`ensure_whitespace=False`), "Hello" ends on the
    character where "world" begins; a cut from "world" on, with its user data,
    carries the store of "Hello" ending exactly at its first character: it
    lies wholly off the cut. Taken as reaching the cut, that store (of another
    model) was joined with the cut's own, and the cut was refused as mixing
    two models, though every token of it has its own model's row."""
    hello, world = first_layer("Hello"), last_layer("world is here.")
    joined = Doc.from_docs([hello, world], ensure_whitespace=False)
    assert joined.text == "Helloworld is here."
    cut = joined[1:].as_doc(copy_user_data=True)
    assert len(_store_keys(cut)) == 2
    restore_vectors(cut)
    numpy.testing.assert_array_equal(cut._.ctx_vectors, world._.ctx_vectors)


def test_one_model_named_two_ways_is_one_model(vocab, tiny_bert_dir, minilm_dir, last_layer, tmp_path):
    """The signature held the config's `name` (and ELMo's file paths): one model
    given by another path, with a trailing slash, or as the embedded default
    (`name = null`) against its folder, could not be compared or joined."""
    same = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(str(tiny_bert_dir) + "/", layers=[2])))
    a, b = last_layer(TEXT), same(OTHER)
    assert a[0].similarity(b[0]) == pytest.approx(_cosine(a[0].vector, b[0].vector), abs=1e-6)
    numpy.testing.assert_array_equal(restore_vectors(Doc.from_docs([a, b]))._.ctx_vectors[len(a):], b._.ctx_vectors)
    default = _pipeline(vocab, None, ("ctxembed_bert", "emb", {}))
    by_path = _pipeline(vocab, None, ("ctxembed_bert", "emb", _bert(minilm_dir)))
    u, v = default(TEXT), by_path(OTHER)
    assert u[0].similarity(v[0]) == pytest.approx(_cosine(u[0].vector, v[0].vector), abs=1e-6)
    # ELMo files copied elsewhere.
    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    (tmp_path / "copy").mkdir()
    copies = [tmp_path / "copy" / f.name for f in (options, weights)]
    for source, target in zip((options, weights), copies):
        target.write_bytes(source.read_bytes())
    elmos = [_pipeline(vocab, None, ("ctxembed_elmo", "elmo", ctx_config(options_file=str(o), weight_file=str(w))))
             for o, w in ((options, weights), tuple(copies))]
    x, y = elmos[0](TEXT), elmos[1](OTHER)
    assert x[0].similarity(y[0]) == pytest.approx(_cosine(x[0].vector, y[0].vector), abs=1e-6)


def test_what_shapes_the_outputs_besides_the_weights_tells_models_apart(vocab, tiny_bert_dir, last_layer, tmp_path):
    """int8 vectors of the same weights are not fp32's (the same token across
    them: cosine 0.88 on MiniLM), and another tokenizer cuts other pieces."""
    from transformers import AutoTokenizer

    a = last_layer(TEXT)
    bf16 = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2],
                                                                          precision="bf16")))(TEXT)
    assert a[0].similarity(bf16[0]) == pytest.approx(_cosine(a[0].vector, bf16[0].vector), abs=1e-6)  # one model
    int8 = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2],
                                                                          precision="int8")))(TEXT)
    with pytest.raises(ValueError, match=r"different ctxembed models \(quantization none vs int8\)"):
        a[0].similarity(int8[0])
    # A doc stored by an earlier version (its signature with the config's name, without the quantization)
    # joined with a new one: the joined output keeps what both say, and int8 is still told apart.
    old = last_layer(OTHER)
    for store in old.user_data.values():
        if isinstance(store, dict) and "outputs" in store:
            for output in store["outputs"].values():
                fields = [f for f in output["signature"].split("; ")
                          if not f.startswith(("quantization=", "tokenizer="))]
                output["signature"] = "; ".join([fields[0], f"name={tmp_path / ('long' * 20)}", *fields[1:]])
    joined = restore_vectors(Doc.from_docs([old, last_layer(TEXT)]))
    with pytest.raises(ValueError, match=r"different ctxembed models \(quantization none vs int8\)"):
        joined[len(old)].similarity(int8[0])
    cased = tmp_path / "cased"
    for f in tiny_bert_dir.iterdir():
        if f.is_file() and not f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            (cased / f.name).parent.mkdir(exist_ok=True)
            (cased / f.name).write_bytes(f.read_bytes())
    AutoTokenizer.from_pretrained(tiny_bert_dir, do_lower_case=False).save_pretrained(cased)
    other = _pipeline(vocab, cased, ("ctxembed_bert", "emb", _bert(cased, layers=[2])))(TEXT)
    with pytest.raises(ValueError, match=r"different ctxembed models \(tokenizer \w+ vs \w+\)"):
        a[0].similarity(other[0])
    # ELMo: the same weights under other options (clipping) make other vectors.
    from .elmo_fixture import SMALL, write_elmo_fixture

    clipped = copy.deepcopy(SMALL)
    clipped["lstm"]["cell_clip"] = clipped["lstm"]["proj_clip"] = 0.05
    x, y = (_pipeline(vocab, None, ("ctxembed_elmo", "elmo", ctx_config(options_file=str(o), weight_file=str(w))))(TEXT)
            for o, w in (write_elmo_fixture(tmp_path / "elmo"), write_elmo_fixture(tmp_path / "clip", clipped)))
    assert not numpy.allclose(x._.ctx_vectors, y._.ctx_vectors, atol=1e-3)  # the premise
    with pytest.raises(ValueError, match=r"different ctxembed models \(options \w+ vs \w+\)"):
        x[0].similarity(y[0])


def test_models_that_differ_only_in_their_weights_are_told_apart(vocab, tiny_bert_dir, last_layer, tmp_path):
    """A fine-tuned pipeline names its base model in its config, as the base's
    does: only the weights tell their vectors apart."""
    import torch
    from transformers import BertModel

    last_layer.to_disk(tmp_path / "base")
    model_dir = tmp_path / "base" / "emb" / "model"
    torch.manual_seed(0)
    model = BertModel.from_pretrained(model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # "fine-tuned"
    model.save_pretrained(model_dir, safe_serialization=True)
    # Weights put in a saved pipeline on purpose: its cfg's fingerprint goes, as the load's error says.
    cfg = srsly.read_json(tmp_path / "base" / "emb" / "cfg")
    del cfg["encoder_weights"]
    srsly.write_json(tmp_path / "base" / "emb" / "cfg", cfg)
    tuned = spacy.load(tmp_path / "base", vocab=vocab)
    a, b = last_layer(TEXT), tuned(TEXT)
    with pytest.raises(ValueError, match=r"have vectors of different ctxembed models \(encoder_weights \w+ vs \w+; "
                                         r"weights \w+ vs \w+\)"):
        a[0].similarity(b[0])
    with pytest.raises(MissingOutputs, match=r"'emb' outputs come from different models"):
        restore_vectors(Doc.from_docs([last_layer(TEXT), tuned(OTHER)]))
    # The same weights saved and loaded again are the same model; so are
    # outputs stored by an earlier version, which did not record the weights.
    again = spacy.load(tmp_path / "base", vocab=vocab)(OTHER)
    assert b[0].similarity(again[0]) == pytest.approx(_cosine(b[0].vector, again[0].vector), abs=1e-6)
    old = last_layer(OTHER)
    for store in old.user_data.values():
        if isinstance(store, dict) and "outputs" in store:
            for output in store["outputs"].values():
                output["signature"] = output["signature"].rsplit("; encoder_weights=", 1)[0]
    assert a[0].similarity(old[0]) == pytest.approx(_cosine(a[0].vector, old[0].vector), abs=1e-6)
    joined = restore_vectors(Doc.from_docs([last_layer(TEXT), old]))
    numpy.testing.assert_array_equal(joined._.ctx_vectors[len(a):], old._.ctx_vectors)


def test_outputs_made_with_other_combiner_weights_are_another_model(vocab, tiny_bert_dir):
    """use_params (the optimizer's averages, in evaluation) and training steps
    change the mix: docs annotated before and inside are not compared."""
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[1, 2],
                                                                          combine="scalar_mix")))
    combiner = nlp.get_pipe("emb").combiner
    before = nlp(TEXT)
    with nlp.use_params({(combiner.id, "s"): numpy.asarray([2.0, -2.0], dtype="f")}):
        inside = nlp(TEXT)
    after = nlp(TEXT)
    with pytest.raises(ValueError, match=r"different ctxembed models \(weights"):
        before[0].similarity(inside[0])
    assert before[0].similarity(after[0]) == pytest.approx(1.0, abs=1e-6)
    assert not numpy.allclose(before._.ctx_vectors, inside._.ctx_vectors)


def test_the_weight_fingerprint_samples_evenly_to_the_last_element():
    """Tensors beyond 2**24 elements (BERT-base's word embeddings have 23M):
    positions in float32 would round past the end."""
    import torch

    from spacy_ctxembed.pipeline.signature import SAMPLES_PER_TENSOR, _sampled

    n = 2**24 + 5
    tensor = torch.arange(n, dtype=torch.int64) % 251  # values that tell positions apart
    positions = numpy.floor(numpy.arange(SAMPLES_PER_TENSOR) * (n - 1) / (SAMPLES_PER_TENSOR - 1)).astype("int64")
    numpy.testing.assert_array_equal(_sampled(tensor), (positions % 251).astype("float64"))
    assert positions[-1] == n - 1
    small = torch.tensor([1.5, -2.0, 3.0])
    numpy.testing.assert_array_equal(_sampled(small), [1.5, -2.0, 3.0])


def _saved_before(doc):
    """The doc as stored before store keys had ids, through DocBin bytes (which drop the hooks)."""
    for key in _store_keys(doc):
        doc.user_data[("._.", STORE, *key[2:])] = doc.user_data.pop(key)
    return next(DocBin(docs=[doc], store_user_data=True).get_docs(doc.vocab))


def _store_keys(doc):
    return [k for k in doc.user_data if is_store_key(k)]


def test_doc_cleaner_drops_the_layers_or_every_output(vocab, tiny_bert_dir):
    """spaCy's `doc_cleaner` (how pipelines drop `_.trf_data` before saving)
    set `doc._.ctx_outputs = None` as a user-data key of its own that nothing
    read: the outputs stayed, and the DocBin grew, silently."""
    config = _bert(tiny_bert_dir, layers=[1, 2], store_layers=True)
    plain = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", config))
    want = plain(TEXT)
    assert want._.ctx_layers.shape == (2, len(want), 32)  # the premise

    # (spaCy adds its own defaults to the attrs: "tensor" and "_.trf_data")
    layers_dropped = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", config),
                               ("doc_cleaner", "cleaner", {"attrs": {"_.ctx_layers": None}}))
    doc = layers_dropped(TEXT)
    assert doc._.ctx_layers is None and doc._.ctx_outputs["emb"].get("layers") is None
    numpy.testing.assert_array_equal(doc._.ctx_vectors, want._.ctx_vectors)
    assert len(DocBin(store_user_data=True, docs=[doc]).to_bytes()) < \
        len(DocBin(store_user_data=True, docs=[want]).to_bytes()) - len(want) * 32 * 4  # (half the layers' bytes)
    again = restore_vectors(next(DocBin(store_user_data=True, docs=[doc]).get_docs(vocab)))
    numpy.testing.assert_array_equal(again._.ctx_vectors, want._.ctx_vectors)
    assert again._.ctx_layers is None

    all_dropped = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", config), (
        "doc_cleaner", "cleaner", {"attrs": {"_.ctx_outputs": None}}))
    doc = all_dropped(TEXT)
    assert doc._.ctx_outputs == {} and doc._.ctx_vectors is None and doc._.ctx_layers is None
    assert not _store_keys(doc) and not [k for k in doc.user_data if "ctx" in str(k)]
    with pytest.raises(MissingOutputs, match=r"the doc holds no ctxembed outputs: .*or they were "
                                             r"\(doc\._\.ctx_outputs = None: spaCy's doc_cleaner\)"):
        restore_vectors(next(DocBin(store_user_data=True, docs=[doc]).get_docs(vocab)))
    # The tensor cleared first (doc_cleaner's own default sets it to None), then the outputs; and the cleaned
    # doc embedded again is a fresh doc's.
    tensor_first = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", config), (
        "doc_cleaner", "cleaner", {"attrs": {"tensor": None, "_.ctx_outputs": None}}))
    doc = tensor_first(TEXT)
    assert doc._.ctx_outputs == {} and doc.tensor is None
    again = tensor_first.get_pipe("emb")(doc)
    numpy.testing.assert_array_equal(again._.ctx_vectors, want._.ctx_vectors)
    numpy.testing.assert_array_equal(again.tensor, want.tensor)
    # (spaCy's has_vector cannot read a tensor of None; by hand:)
    doc = plain(TEXT)
    doc._.ctx_outputs = None
    with pytest.raises(MissingOutputs, match=r"or whose outputs were dropped \(doc\._\.ctx_outputs = None"):
        restore_vectors(Doc.from_docs([doc, want], exclude=["tensor"]))
    assert doc._.ctx_outputs == {} and doc.tensor.size == 0  # the tensor was the component's
    assert not doc.has_vector and not doc[0].has_vector and not doc[0:2].has_vector  # (a blank vocab: no vectors)


def test_dropping_outputs_of_a_cut_leaves_its_source_and_other_hooks(vocab, tiny_bert_dir):
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[1, 2],
                                                                         store_layers=True)))
    source = nlp(TEXT)
    source.user_hooks["vector_norm"] = own_norm = lambda doc: 42.0  # a user's own hook stays
    layers, vectors = source._.ctx_layers.copy(), source._.ctx_vectors.copy()
    cut = source[2:6].as_doc()
    cut._.ctx_layers = None
    assert cut._.ctx_layers is None
    numpy.testing.assert_array_equal(cut._.ctx_vectors, vectors[2:6])
    numpy.testing.assert_array_equal(source._.ctx_layers, layers)
    cut._.ctx_outputs = None
    assert cut._.ctx_outputs == {} and not cut[0].has_vector
    assert cut.user_hooks.get("vector_norm") is own_norm
    numpy.testing.assert_array_equal(source[3].vector, vectors[3])
    assert source.user_hooks.get("vector_norm") is own_norm
    for attribute, value, shown in (("ctx_outputs", {}, "{}"), ("ctx_outputs", "None", "'None'"),
                                    ("ctx_layers", layers, "a ndarray")):
        with pytest.raises(ValueError, match=rf"^doc\._\.{attribute} is written by ctxembed components; it can "
                                             rf"only be set to None, which drops it \(spaCy's doc_cleaner\), not "
                                             rf"to {re.escape(shown)}$"):
            setattr(source._, attribute, value)
    with pytest.raises(ValueError, match=r"set doc\._\.ctx_outputs = None to drop every output"):
        source._.ctx_vectors = None
    numpy.testing.assert_array_equal(source._.ctx_layers, layers)


def test_dropping_the_outputs_of_a_cut_whose_text_is_twice_in_its_source_clears_its_tensor(vocab, tiny_bert_dir):
    """Such a cut cannot be placed in its source, so its tensor (the source's
    rows) was not known as a ctxembed component's: after the drop, spaCy still
    read the contextual vectors from it, silently."""
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    source = nlp("Dogs bark. Dogs bark.")
    cut = source[0:2].as_doc()
    assert cut.tensor.shape == (2, 32)  # the premise: spaCy copied the source's rows
    cut._.ctx_outputs = None
    assert cut.tensor.size == 0 and not cut.has_vector and not cut[0].has_vector
    numpy.testing.assert_array_equal(source[3].vector, source._.ctx_vectors[3])


def test_a_non_primary_output_on_a_cut_whose_text_is_twice_in_its_source_can_be_dropped(vocab, tiny_bert_dir):
    """The cut's store names the source's output as its tensor's, which it does not hold: dropping its
    outputs is no error, and leaves none."""
    nlp = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    other = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "x", _bert(tiny_bert_dir, layers=[1], primary=False)))
    cut = other(nlp("Dogs bark. Dogs bark.")[0:2].as_doc())
    assert set(cut._.ctx_outputs) == {"x"}
    cut._.ctx_outputs = None
    assert cut._.ctx_outputs == {}


def test_a_listener_after_a_doc_cleaner_says_its_outputs_were_dropped(vocab, tiny_bert_dir):
    from spacy.training import Example

    for attrs, store_layers in (({"_.ctx_outputs": None}, False), ({"_.ctx_layers": None}, True)):
        nlp = spacy.blank("en", vocab=vocab)
        nlp.add_pipe("ctxembed_bert", name="emb", config=_bert(tiny_bert_dir, layers=[1, 2],
                                                                 store_layers=store_layers))
        nlp.add_pipe("doc_cleaner", config={"attrs": attrs})
        nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
            "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "emb"}}})
        examples = [Example.from_dict(nlp.make_doc("I ran"), {"words": ["I", "ran"], "tags": ["PRON", "VERB"]})]
        nlp.initialize(lambda: examples)  # noqa: B023 - called here, in this iteration
        key = "ctx_outputs" if "_.ctx_outputs" in attrs else "ctx_layers"
        with pytest.raises(ValueError, match=rf"or (its outputs|they) were dropped before this component "
                                             rf"\(doc\._\.{key} = None: a doc_cleaner before it, to move after it\)"):
            nlp(TEXT)


def test_a_static_vector_with_zeros_in_it_is_still_another_space(tiny_bert_dir):
    # A static vector is compared with a contextual one nowhere: also where some
    # of its values are 0 (only a vector of all zeros is "no vector", as spaCy).
    static = _pipeline(spacy.blank("en").vocab, tiny_bert_dir,
                       ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    static.vocab.set_vector("Apple", numpy.arange(32, dtype="float32"))  # its first value is 0
    doc = static(TEXT)
    with pytest.raises(ValueError, match="different spaces"):
        doc[0].similarity(static.vocab["Apple"])
    with pytest.raises(ValueError, match="different spaces"):
        doc[0].similarity(static.make_doc(TEXT)[0])


def test_the_same_model_pooled_otherwise_makes_outputs_of_another_signature(tiny_bert_dir):
    from spacy_ctxembed.pipeline.signature import output_signature

    mean = make_nlp(tiny_bert_dir, pooling="mean").pipeline[0][1].model
    first = make_nlp(tiny_bert_dir, pooling="first").pipeline[0][1].model
    assert "pooling=first" in output_signature(first)
    assert output_signature(mean) != output_signature(first)


def test_a_non_primary_rewrite_of_a_joined_and_merged_doc_drops_the_gathered_layers(vocab, tiny_bert_dir):
    """A joined doc's outputs are gathered from shifted stores; after a merge its
    layers are means of the merged tokens' rows, not the layers of the vectors
    a `primary = false` component of the same model writes now: dropped, with
    the warning, as for a retokenized whole doc."""
    settings = dict(layers=[1, 2], combine="mean")
    storing = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, store_layers=True,
                                                                             **settings)))
    plain = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "emb", _bert(tiny_bert_dir, primary=False, **settings)))
    joined = Doc.from_docs([storing(TEXT), storing(OTHER)])
    with joined.retokenize() as retokenizer:
        retokenizer.merge(joined[0:2])
    assert joined._.ctx_layers.shape == (2, len(joined), 32)  # the premise: gathered (merged) layers
    with pytest.warns(UserWarning, match=r"^\[emb\] \(primary = false, store_layers = false\) rewrote the "
                                         r"doc's primary output 'emb', whose stored layers it cannot vouch for"):
        assert plain(joined)._.ctx_layers is None


def test_a_non_primary_component_on_a_doc_joined_from_two_primaries_keeps_it_unreadable(vocab, tiny_bert_dir):
    """Joined docs whose primary outputs come from different components have no
    primary vectors (an error says so); a `primary = false` component run on
    the joined doc after must not make them read as a doc without outputs."""
    from spacy_ctxembed.outputs import MissingOutputs

    a = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "a", _bert(tiny_bert_dir, layers=[2])))
    b = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "b", _bert(tiny_bert_dir, layers=[1])))
    c = _pipeline(vocab, tiny_bert_dir, ("ctxembed_bert", "c", _bert(tiny_bert_dir, layers=[0], primary=False)))
    joined = Doc.from_docs([a(TEXT), b(OTHER)])
    conflict = r"whose primary ctxembed outputs come from different components \(a, b\)"
    with pytest.raises(MissingOutputs, match=conflict):
        _ = joined._.ctx_vectors
    joined = c(joined)
    assert "c" in joined._.ctx_outputs
    with pytest.raises(MissingOutputs, match=conflict):
        _ = joined._.ctx_vectors


def test_similarity_refuses_another_space_from_either_side(last_layer):
    """A doc whose vector hook another component replaced (its similarity
    hook still ctxembed's) has a vector from another space: compared with a
    ctxembed vector, either way round, it is refused, never a cosine of two
    spaces."""
    ours, other = last_layer(TEXT), last_layer(OTHER)
    other.user_hooks = {**other.user_hooks, "vector": lambda doc: numpy.ones(32, dtype="float32")}
    message = (r"has a ctxembed component's contextual vector, but Doc 'Pears are fruit\.' has a vector from "
               r"elsewhere")
    with pytest.raises(ValueError, match=message):
        ours.similarity(other)
    with pytest.raises(ValueError, match=message):
        other.similarity(ours)


def test_a_lexeme_of_a_vocab_without_vectors_has_no_vector_to_compare(last_layer, tiny_bert_dir):
    """`token.similarity(nlp.vocab["word"])` in a pipeline without word vectors:
    the lexeme has no vector, so 0.0, as spaCy gives without the hooks. It
    failed with spaCy's E010 ("Word vectors set to length 0"), which blamed a
    missing model (found by a review helper)."""
    doc = last_layer(TEXT)
    assert not last_layer.vocab.vectors_length
    plain = spacy.blank("en")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (spaCy's W008: similarity of empty vectors)
        assert plain(TEXT)[0].similarity(plain.vocab["banana"]) == 0.0
    for item in (doc[0], doc[0:3], doc):
        assert item.similarity(last_layer.vocab["banana"]) == 0.0
    # A word without a vector in a vocab with static vectors (here of another width): no vector either.
    static = _pipeline(spacy.blank("en").vocab, tiny_bert_dir,
                       ("ctxembed_bert", "emb", _bert(tiny_bert_dir, layers=[2])))
    static.vocab.set_vector("Apple", numpy.ones(8, dtype="float32"))
    assert static(TEXT)[0].similarity(static.vocab["banana"]) == 0.0
    with pytest.raises(ValueError, match="different widths"):
        static(TEXT)[0].similarity(static.vocab["Apple"])
