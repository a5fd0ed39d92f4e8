"""The component's contract with spaCy: assigns, cfg, the trf extra, named errors."""
import json
import sys
import warnings

import numpy
import pytest
import spacy

from spacy_ctxembed.errors import SettingError

from .conftest import ctx_config, make_nlp


def test_analyze_pipes_shows_what_each_component_writes(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    analysis = nlp.analyze_pipes()
    assigns = analysis["summary"]["ctxembed_bert"]["assigns"]
    assert set(assigns) == {"doc._.ctx_outputs", "doc._.ctx_vectors", "doc._.ctx_layers", "doc.tensor"}


def test_cfg_is_read_back_and_a_newer_format_is_refused(tiny_bert_dir, tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="bert_a", config=ctx_config(name=tiny_bert_dir))
    nlp.initialize()
    nlp.to_disk(tmp_path / "p")
    cfg_path = tmp_path / "p" / "bert_a" / "cfg"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["format"] == 2 and cfg["primary"] is True
    cfg_path.write_text(json.dumps({**cfg, "format": 99}))
    with pytest.raises(SettingError, match=r"^\[bert_a\] cfg = .*format 99 was written by a newer"):
        spacy.load(tmp_path / "p")
    cfg_path.write_text("{not json")
    with pytest.raises(SettingError, match=r"^\[bert_a\] cfg = .*not valid JSON"):
        spacy.load(tmp_path / "p")


def test_from_trf_says_what_to_install(monkeypatch):
    # (Made first: spaCy loads the registries' entry points as it makes a
    # pipeline, spacy-transformers' among them where it is installed, which
    # fails with it hidden unless an earlier test loaded them.)
    nlp = spacy.blank("en")
    monkeypatch.setitem(sys.modules, "spacy_transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"\[pooler\] .*pip install 'spacy-ctxembed\[trf\]'"):
        nlp.add_pipe("ctxembed_from_trf", name="pooler")


def test_initialize_errors_name_the_instance(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="bert_a", config=ctx_config(name=tiny_bert_dir, layers=[0, 9]))
    with pytest.raises(SettingError, match=r"^\[bert_a\] layers = \[0, 9\]: index 9 is out of range"):
        nlp.initialize()


def test_primary_chooses_the_doc_vectors(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="a", config=ctx_config(name=tiny_bert_dir, layers=[0]))
    nlp.add_pipe("ctxembed_bert", name="b", config=ctx_config(name=tiny_bert_dir, layers=[2], primary=False))
    nlp.initialize()
    doc = nlp("I ran to the park")
    assert set(doc._.ctx_outputs) == {"a", "b"}
    assert (doc._.ctx_vectors == doc._.ctx_outputs["a"]["vectors"]).all()
    assert (doc.tensor == doc._.ctx_outputs["a"]["vectors"]).all()
    assert not (doc._.ctx_outputs["b"]["vectors"] == doc._.ctx_outputs["a"]["vectors"]).all()
    assert (doc[1].vector == doc._.ctx_outputs["a"]["vectors"][1]).all()


def test_doc_tensor_of_another_component_is_left_alone(tiny_bert_dir):
    """spaCy's tok2vec sets doc.tensor, and its listeners read it when they
    predict: a ctxembed component after it warns and leaves it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("tok2vec")
    nlp.initialize()
    expected = nlp("I ran to the park").tensor.copy()
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    nlp.get_pipe("ctxembed_bert").initialize(lambda: [], nlp=nlp)
    with pytest.warns(UserWarning, match=r"\[ctxembed_bert\] set_doc_tensor: doc.tensor already holds another "):
        doc = nlp("I ran to the park")
    assert (doc.tensor == expected).all()
    assert doc[1].has_vector and doc[1].vector.shape == (32,)
    # Its own tensor it replaces: a doc run again, with other layers, gets the new vectors.
    alone = make_nlp(tiny_bert_dir, layers=[0])
    doc = make_nlp(tiny_bert_dir)("I ran to the park")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = alone.get_pipe("ctxembed_bert")(doc)
    assert (again.tensor == again._.ctx_vectors).all()


def test_doc_tensor_of_a_doc_stored_by_an_earlier_version(tiny_bert_dir):
    """Stores written before `tensor_set` was recorded: the tensor is the
    component's own where it equals its primary vectors."""
    from spacy_ctxembed.outputs import STORE, is_store_key

    nlp, other_layers = make_nlp(tiny_bert_dir), make_nlp(tiny_bert_dir, layers=[0])

    def as_earlier_version(doc):  # (its key too: no id in the name)
        key = next(k for k in doc.user_data if is_store_key(k))
        store = doc.user_data.pop(key)
        doc.user_data[("._.", STORE, *key[2:])] = {k: v for k, v in store.items() if k != "tensor_set"}
        return doc

    doc = as_earlier_version(nlp("I ran to the park"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = other_layers.get_pipe("ctxembed_bert")(doc)
    assert (again.tensor == again._.ctx_vectors).all()
    doc = as_earlier_version(nlp("I ran to the park"))
    doc.tensor = numpy.ones((len(doc), 7), dtype="float32")  # another component's, set after it
    with pytest.warns(UserWarning, match="set_doc_tensor: doc.tensor already holds another"):
        again = other_layers.get_pipe("ctxembed_bert")(doc)
    assert (again.tensor == 1).all()


def test_doc_tensor_is_the_primary_vectors_array_on_the_host(tiny_bert_dir):
    """README: doc.tensor is the same array as the primary vectors (a copy only on GPU), not a second copy."""
    doc = make_nlp(tiny_bert_dir)("I ran to the park")
    assert numpy.shares_memory(doc.tensor, doc._.ctx_vectors)


def test_a_tensor_of_another_dtype_is_another_components(tiny_bert_dir):
    """Same width as the component's vectors but float64: no row of it is one of theirs, so it is left
    alone, with the warning."""
    nlp = make_nlp(tiny_bert_dir)
    doc = nlp("I ran to the park")
    doc.tensor = numpy.ones((len(doc), 32), dtype="float64")
    with pytest.warns(UserWarning, match="set_doc_tensor: doc.tensor already holds another"):
        nlp.get_pipe("ctxembed_bert")(doc)
    assert doc.tensor.dtype == numpy.float64 and (doc.tensor == 1).all()


def test_a_tensor_with_fewer_rows_than_tokens_is_not_the_components(tiny_bert_dir):
    """spaCy never makes such a tensor of the component's (a merge drops rows with their tokens, a split
    adds rows): one a token's row short is another's, even where its rows are the component's."""
    nlp = make_nlp(tiny_bert_dir)
    doc = nlp("I ran to the park")
    doc.tensor = doc.tensor[1:].copy()
    with pytest.warns(UserWarning, match="set_doc_tensor: doc.tensor already holds another"):
        nlp.get_pipe("ctxembed_bert")(doc)
    assert doc.tensor.shape == (len(doc) - 1, 32)


def test_dropping_the_outputs_clears_a_tensor_an_earlier_primary_set(tiny_bert_dir):
    """'a' set doc.tensor; 'b', the primary after it, does not set it (set_doc_tensor = false): the
    tensor is still a's vectors, and dropping the outputs clears it (spaCy would read token vectors from it)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="a", config=ctx_config(name=tiny_bert_dir, layers=[0]))
    nlp.add_pipe("ctxembed_bert", name="b", config=ctx_config(name=tiny_bert_dir, layers=[2], set_doc_tensor=False))
    nlp.initialize()
    doc = nlp("I ran to the park")
    assert (doc.tensor == doc._.ctx_outputs["a"]["vectors"]).all()  # the premise
    assert (doc[1].vector == doc._.ctx_outputs["b"]["vectors"][1]).all()
    doc._.ctx_outputs = None
    assert doc.tensor.size == 0 and not doc[1].has_vector


def test_similarity_of_vectors_from_different_models_is_a_clear_error(tiny_bert_dir):
    nlp = make_nlp(tiny_bert_dir)
    nlp.vocab.set_vector("dog", numpy.ones(5, dtype="float32"))
    doc, static = nlp("a cat"), nlp.make_doc("a dog")
    with pytest.raises(ValueError, match=r"Token 'cat' and Token 'dog' have vectors of different widths "
                                         r"\(32 and 5\), so they come from different models"):
        doc[1].similarity(static[1])
    assert doc[1].similarity(spacy.blank("en")("no vectors")[0]) == 0.0  # one side has none at all: as spaCy


def test_docs_are_freed_by_reference_counting(tiny_bert_dir):
    # Nothing in a doc's hooks or user data may point back at the doc: a cycle
    # would keep every doc (and its vectors) until the cyclic collector runs.
    import collections
    import gc

    from spacy.tokens import Doc

    from spacy_ctxembed.outputs import SOURCE_HOOK

    nlp = make_nlp(tiny_bert_dir)
    assert SOURCE_HOOK in nlp("I ran to the park.").user_hooks

    def live_docs():
        return sum(1 for o in gc.get_objects() if isinstance(o, Doc))

    gc.collect()
    before = live_docs()
    gc.disable()
    try:
        collections.deque(nlp.pipe(["I ran to the park.", "Then I ran some tests."] * 20), maxlen=0)
        assert live_docs() == before
    finally:
        gc.enable()


def test_bert_component_stores_no_layers_by_default(tiny_bert_dir):
    """`store_layers = false` is the factory default: a doc carries its vectors,
    not the (n_layers, n_tokens, width) stack, unless asked for."""
    doc = make_nlp(tiny_bert_dir)("A short doc.")
    assert doc._.ctx_vectors.shape == (len(doc), 32)
    assert doc._.ctx_layers is None


def test_analyze_pipes_shows_what_from_trf_requires():
    """ctxembed_from_trf reads doc._.trf_data, and says so to spaCy, which warns
    about a pipeline without a component that writes it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_from_trf")
    analysis = nlp.analyze_pipes()
    assert analysis["summary"]["ctxembed_from_trf"]["requires"] == ["doc._.trf_data"]
    assert analysis["problems"]["ctxembed_from_trf"] == ["doc._.trf_data"]


def test_vectors_and_layers_read_from_a_doc_cannot_be_rewritten_in_place(tiny_bert_dir):
    """`token.vector` and the stored layers are views of the stored rows:
    `v = token.vector; v /= norm` would rewrite them for every later read
    (spans, similarity, listeners) without a word. They are read-only, and
    the values read afterwards are those read first."""
    nlp = make_nlp(tiny_bert_dir, layers=[0, 2], store_layers=True)
    doc = nlp("I ran to the park")
    vector, layers = doc[1].vector.copy(), doc._.ctx_layers.copy()
    with pytest.raises(ValueError, match="read-only"):
        doc[1].vector /= 2.0
    with pytest.raises(ValueError, match="read-only"):
        doc._.ctx_layers[:, 1] *= 0.0
    numpy.testing.assert_array_equal(doc[1].vector, vector)
    numpy.testing.assert_array_equal(doc._.ctx_layers, layers)


def test_a_span_has_a_vector_where_any_of_its_tokens_has_one(tiny_bert_dir):
    """`span.has_vector` reads every token of the span, its last included: a
    one-token span, or whitespace followed by a word, has a vector; a span of
    whitespace alone (no row of its own: zeros) has none."""
    nlp = make_nlp(tiny_bert_dir)
    doc = nlp("I ran  home")
    assert [t.text for t in doc] == ["I", "ran", " ", "home"]
    vectors = numpy.asarray(doc._.ctx_vectors)
    assert vectors[1].any() and vectors[3].any() and not vectors[2].any()
    assert doc[1:2].has_vector and doc[3:4].has_vector
    assert doc[2:4].has_vector
    assert not doc[2:3].has_vector


def test_a_short_doc_read_before_a_split_reads_the_new_tokens_after_it(tiny_bert_dir):
    """Token by token reads of a short doc go through the view made before a
    split: a split that makes the doc longer must make it be aligned again,
    not read past the old view's rows. Each piece takes the row of the token
    it came from; the other tokens keep their own rows."""
    nlp = make_nlp(tiny_bert_dir)
    doc = nlp("I ran home")
    before = [doc[i].vector.copy() for i in range(3)]  # (read token by token: the view is kept)
    with doc.retokenize() as retokenizer:
        retokenizer.split(doc[2], ["ho", "me"], heads=[(doc[2], 1), doc[1]])
    assert [t.text for t in doc] == ["I", "ran", "ho", "me"]
    numpy.testing.assert_array_equal(doc[3].vector, before[2])
    numpy.testing.assert_array_equal(doc[2].vector, before[2])
    numpy.testing.assert_array_equal(doc[0].vector, before[0])


def test_a_vector_of_zeros_is_no_vector_whatever_the_other_side_is(tiny_bert_dir):
    """Similarity with a side that has no vector is 0.0 (README), as spaCy's:
    a word without a static vector, as a Token, a Span or a Doc, as its Lexeme
    already was, and a whitespace token against static vectors. They were
    errors (another width; another space) where the vectors were all zeros."""
    nlp = make_nlp(tiny_bert_dir)
    nlp.vocab.set_vector("Apple", numpy.ones(8, dtype="float32"))
    doc, plain = nlp("I ran  home"), nlp.make_doc("I ran Apple")
    assert doc[2].is_space and not doc[2].has_vector and not plain[1].has_vector  # the premise
    for other in (plain[1], plain[0:2], nlp.make_doc("ran"), nlp.vocab["ran"]):
        assert doc[1].similarity(other) == 0.0
        assert doc.similarity(other) == 0.0
    for empty in (doc[2], doc[2:3], doc[2:2]):
        assert empty.similarity(nlp.vocab["Apple"]) == 0.0 and empty.similarity(plain[2]) == 0.0
    with pytest.raises(ValueError, match=r"different widths \(32 and 8\)"):  # both with vectors: still refused
        doc[1].similarity(plain[2])
    same_width = make_nlp(tiny_bert_dir)
    same_width.vocab.set_vector("Apple", numpy.ones(32, dtype="float32"))
    assert same_width("I ran  home")[2].similarity(same_width.vocab["Apple"]) == 0.0
    with pytest.raises(ValueError, match="different spaces"):
        same_width("I ran  home")[1].similarity(same_width.vocab["Apple"])


def test_similarity_is_the_cosine_of_the_vectors_in_float64_and_at_most_one(tiny_bert_dir):
    """The cosine of two tokens' rows, as float64 NumPy gives it from
    `doc._.ctx_vectors`; of a span or a doc, of the mean of its tokens with a
    vector. Never above 1: in float32 a token's similarity with itself was
    1.00000004 for some, which `math.acos` refuses."""
    import math

    doc = make_nlp(tiny_bert_dir)("I ran  home to the park, then I ran back.")
    rows = numpy.asarray(doc._.ctx_vectors, dtype="float64")

    def cosine(u, v):
        return float(u @ v / numpy.linalg.norm(u) / numpy.linalg.norm(v))

    with_vector = [t.i for t in doc if t.has_vector]
    for i in with_vector:
        for j in with_vector:
            assert doc[i].similarity(doc[j]) == pytest.approx(cosine(rows[i], rows[j]), abs=1e-12)
        assert -1.0 <= doc[i].similarity(doc[i]) <= 1.0 and math.acos(doc[i].similarity(doc[i])) < 1e-3
    spans = [doc[1:4], doc[0:2], doc, doc[4:9]]
    means = [rows[[i for i in with_vector if span.start <= i < span.end]].mean(axis=0) for span in spans[:2]]
    means += [rows[with_vector].mean(axis=0), rows[4:9].mean(axis=0)]
    for span, mean in zip(spans, means):
        numpy.testing.assert_allclose(span.vector, mean, rtol=1e-6, atol=1e-7)
        for other, other_mean in zip(spans, means):
            assert span.similarity(other) == pytest.approx(cosine(mean, other_mean), abs=1e-6)
        assert span.similarity(span) <= 1.0


def test_the_outputs_read_from_a_doc_cannot_change_what_its_vectors_read(tiny_bert_dir):
    """`doc._.ctx_outputs` gives dicts of its own: replacing or dropping an
    entry there changes nothing that `token.vector` & co. read (they read a
    memoised view of the same dicts: token.vector read the zeros put there,
    and a KeyError after a `.pop`). The arrays, the "missing" masks too, are
    read-only."""
    from spacy.tokens import Doc

    from spacy_ctxembed import restore_vectors

    nlp = make_nlp(tiny_bert_dir)
    doc = nlp("I ran home")
    rows = doc._.ctx_vectors.copy()
    outputs = doc._.ctx_outputs
    outputs["ctxembed_bert"]["vectors"] = numpy.zeros_like(rows)
    outputs.pop("ctxembed_bert")
    assert set(doc._.ctx_outputs) == {"ctxembed_bert"}
    numpy.testing.assert_array_equal(doc[1].vector, rows[1])
    numpy.testing.assert_array_equal(doc._.ctx_outputs["ctxembed_bert"]["vectors"], rows)
    # A joined doc with an output that covers part of it: its mask says where, and stays so.
    both = spacy.blank("en", vocab=nlp.vocab)
    both.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    both.add_pipe("ctxembed_bert", name="other", config=ctx_config(name=tiny_bert_dir, layers=[0], primary=False))
    both.initialize()
    joined = restore_vectors(Doc.from_docs([nlp("I ran home"), both("Then I sat")]))
    missing = joined._.ctx_outputs["other"]["missing"]
    assert missing.tolist() == [True] * 3 + [False] * 3
    with pytest.raises(ValueError, match="read-only"):
        missing[:] = False


def test_add_label_is_refused_naming_the_instance(tiny_bert_dir):
    """An embedder has no labels: `add_label` (as code written for spaCy's labelled
    components calls it) says so, naming the instance, not spaCy's generic E931."""
    nlp = spacy.blank("en")
    component = nlp.add_pipe("ctxembed_bert", name="emb_a", config=ctx_config(name=tiny_bert_dir))
    with pytest.raises(NotImplementedError, match=r"^\[emb_a\] a contextual embedder has no labels$"):
        component.add_label("X")


@pytest.mark.parametrize("load", ["from_bytes", "from_disk"])
def test_weights_loaded_into_the_model_before_its_first_use_are_the_ones_it_runs(tiny_bert_dir, minilm_dir,
                                                                                 tmp_path, load):
    """thinc's `from_bytes`/`from_disk` on the component's model, before the
    component ever loaded: its first use takes those weights, not the config's
    `name`. The reference is `transformers` run on the weights loaded."""
    from transformers import AutoTokenizer, BertModel

    from .conftest import other_bert
    from .reference import hf_hidden_states, pool, token_pieces

    other = other_bert(tmp_path / "other-bert", minilm_dir)
    donor = make_nlp(other, layers=[-1]).get_pipe("ctxembed_bert").model
    donor.to_disk(tmp_path / "model.bin")
    nlp = spacy.blank("en")
    component = nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[-1]))
    if load == "from_bytes":
        component.model.from_bytes(donor.to_bytes())
    else:
        component.model.from_disk(tmp_path / "model.bin")
    assert not component.loaded
    text = "I ran to the park this morning."
    doc = nlp(text)
    states, offsets = hf_hidden_states(AutoTokenizer.from_pretrained(other),
                                       BertModel.from_pretrained(other).eval(), text)
    expected = pool(states[-1], token_pieces(doc, offsets), "mean")
    numpy.testing.assert_allclose(doc._.ctx_vectors, expected, atol=1e-5, rtol=0)
    config_weights = make_nlp(tiny_bert_dir, layers=[-1])(text)._.ctx_vectors
    assert not numpy.allclose(config_weights, expected, atol=1e-3)  # (the check tells the two apart)
