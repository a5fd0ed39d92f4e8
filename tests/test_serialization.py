"""Docs keep their vectors through every round trip; pipelines save and load offline and safely."""
import pickle
import shutil

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin

from spacy_ctxembed import restore_vectors

from .conftest import ctx_config, make_nlp
from .packaging import assert_packages_and_loads

TEXTS = ["It was nice out this morning when I ran to the park.", "I ran  significance tests.\n\nDone", ""]


def _check_same(doc, original):
    numpy.testing.assert_array_equal(doc._.ctx_vectors, original._.ctx_vectors)
    for token, token0 in zip(doc, original):
        numpy.testing.assert_array_equal(token.vector, token0.vector)
        assert token.has_vector == token0.has_vector
    if len(doc) > 2:
        numpy.testing.assert_array_equal(doc[1:3].vector, original[1:3].vector)
        assert doc[0].similarity(doc[1]) == pytest.approx(original[0].similarity(original[1]))
    numpy.testing.assert_array_equal(doc.vector, original.vector)


def test_hooks_follow_the_contract(nlp_default):
    doc = nlp_default("I ran  significance tests.\n\nDone")
    space = [t for t in doc if t.is_space]
    assert space and all(not t.has_vector and not t.vector.any() for t in space)
    covered = doc._.ctx_vectors[[t.i for t in doc if not t.is_space]]
    numpy.testing.assert_allclose(doc.vector, covered.mean(axis=0), rtol=1e-6)
    span = doc[1:4]  # "ran", " ", "significance": the whitespace token is left out of the mean
    assert span[1].is_space
    numpy.testing.assert_allclose(span.vector, doc._.ctx_vectors[[1, 3]].mean(axis=0), rtol=1e-6)
    u, v = doc[0].vector, doc[1].vector
    assert doc[0].similarity(doc[1]) == pytest.approx(float(u @ v / numpy.linalg.norm(u) / numpy.linalg.norm(v)))
    assert doc[0].similarity(space[0]) == 0.0


def test_pickle_keeps_hooks(nlp_default):
    for original in nlp_default.pipe(TEXTS):
        _check_same(pickle.loads(pickle.dumps(original)), original)


def test_to_bytes_and_restore(nlp_default):
    for original in nlp_default.pipe(TEXTS):
        doc = Doc(nlp_default.vocab).from_bytes(original.to_bytes())
        numpy.testing.assert_array_equal(doc.tensor, original.tensor)
        _check_same(restore_vectors(doc), original)


def test_docbin_and_restore(nlp_default, tmp_path):
    originals = list(nlp_default.pipe(TEXTS))
    DocBin(docs=originals, store_user_data=True).to_disk(tmp_path / "docs.spacy")
    docs = [restore_vectors(d) for d in DocBin().from_disk(tmp_path / "docs.spacy").get_docs(nlp_default.vocab)]
    for doc, original in zip(docs, originals):
        assert doc._.ctx_layers.shape == original._.ctx_layers.shape
        _check_same(doc, original)


def _edited_store(doc, **fields):
    """A copy of `doc` whose one store in its user data is edited by hand: the
    store's own fields, or with `output=` those of its primary output."""
    from spacy_ctxembed.outputs import is_store_key

    doc = doc.copy()
    key = next(k for k in doc.user_data if is_store_key(k))
    store = dict(doc.user_data[key])
    output = fields.pop("output", None)
    if output is not None:
        name = store["primary"]
        store["outputs"] = {**store["outputs"], name: {**store["outputs"][name], **output}}
    doc.user_data[key] = {**store, **fields}
    return doc


@pytest.mark.parametrize("edit, says", [
    (lambda v: {"output": {"vectors": v[:3]}}, r"'vectors' has shape \(3, 32\), where its 7 stored tokens"),
    (lambda v: {"output": {"vectors": numpy.vstack([v, v])}}, r"'vectors' has shape \(14, 32\)"),
    (lambda v: {"output": {"vectors": v[0]}}, r"'vectors' has shape \(32,\)"),
    (lambda v: {"output": {"vectors": v.tolist()}}, r"'vectors' is a (list|tuple), not an array"),
    (lambda v: {"output": {"vectors": (v * 100).astype("int32")}}, r"'vectors' has dtype int32, not floats"),
    (lambda v: {"primary": "nope"}, r"names 'nope' as its primary output"),
    (lambda v: {"outputs": None}, r"its 'outputs' are None"),
    # (A signature not a string failed deep inside, in a merge of signatures: 'int' object has no attribute
    # 'split', or unhashable type: 'dict'; found by a review helper.)
    (lambda v: {"output": {"signature": 3}}, r"'signature' is 3, not a string of 'key=value' fields"),
    (lambda v: {"output": {"signature": {"weights": "x"}}}, r"'signature' is \{'weights': 'x'\}, not a string"),
    (lambda v: {"output": {"signature": b"weights=x"}}, r"'signature' is b'weights=x', not a string"),
])
def test_a_store_edited_by_hand_is_refused_by_name_also_after_a_docbin(tiny_bert_dir, edit, says):
    """A store in the user data whose rows are not one per stored token (or not
    rows of floats, or without the primary it names) was read as it was:
    `doc._.ctx_vectors` with 3 or 14 rows for 7 tokens and `doc.vector` their
    mean, or numpy's or Python's own errors naming nothing. Each read, and
    `restore_vectors` after a DocBin, names the user-data entry and the field."""
    nlp = make_nlp(tiny_bert_dir)
    original = nlp("I ran to the park quickly.")
    assert len(original) == 7
    doc = _edited_store(original, **edit(original._.ctx_vectors.copy()))
    for read in (lambda d: d[1].vector, lambda d: d[1:3].vector, lambda d: d.vector, lambda d: d._.ctx_vectors,
                 lambda d: d[1].similarity(original[1])):
        with pytest.raises(ValueError, match=r"the ctxembed outputs in doc.user_data\[\('\._\.', 'ctxembed:"):
            read(doc)
    with pytest.raises(ValueError, match=says):
        assert doc._.ctx_vectors is None and not doc[1].has_vector and doc.tensor.size == 0
    saved = DocBin(docs=[doc], store_user_data=True).to_bytes()
    (loaded,) = DocBin().from_bytes(saved).get_docs(nlp.vocab)
    with pytest.raises(ValueError, match=says):
        restore_vectors(loaded)
    # Of another dtype of floats, or narrower, the rows are still one per token: read as stored.
    for vectors in (original._.ctx_vectors.astype("float64"), original._.ctx_vectors[:, :10]):
        edited = _edited_store(original, output={"vectors": vectors})
        numpy.testing.assert_array_equal(edited[1].vector, vectors[1])


def test_a_store_edited_by_hand_can_be_dropped_and_embedded_again(tiny_bert_dir):
    """`doc._.ctx_outputs = None` drops every output: also a store that no read
    takes (it refused with the error that asks for that store to go)."""
    from spacy_ctxembed.outputs import is_store_key

    nlp = make_nlp(tiny_bert_dir)
    original = nlp("I ran to the park quickly.")
    for edit in ({"output": {"vectors": original._.ctx_vectors[:3]}}, {"outputs": None}):
        doc = _edited_store(original, **edit)
        doc._.ctx_outputs = None
        assert not any(is_store_key(key) for key in doc.user_data)
        assert doc._.ctx_vectors is None and not doc[1].has_vector and doc.tensor.size == 0
        numpy.testing.assert_array_equal(nlp.get_pipe("ctxembed_bert")(doc)._.ctx_vectors, original._.ctx_vectors)


def test_similarity_of_a_vector_with_nan_is_an_error_not_minus_one(tiny_bert_dir):
    """nan is no cosine: clamped to [-1, 1] it read as -1.0, the most dissimilar
    pair. No component writes nan (`NonFiniteOutputs`); a store edited by hand can."""
    nlp = make_nlp(tiny_bert_dir)
    original = nlp("I ran to the park quickly.")
    vectors = original._.ctx_vectors.copy()
    vectors[1, 0] = numpy.nan
    doc = _edited_store(original, output={"vectors": vectors})
    for a, b in ((doc[1], original[1]), (original[1], doc[1]), (doc, original)):
        with pytest.raises(ValueError, match=r"similarity: (Token 'ran'|Doc 'I ran.*') has a vector with nan"):
            a.similarity(b)
    assert doc[2].similarity(original[2]) == pytest.approx(1.0)  # (its other rows are as they were)


def test_restore_vectors_of_non_primary_outputs_cuts_and_other_input(tiny_bert_dir):
    """A doc with non-primary outputs only was said to hold none (its user data
    "dropped"); a plain span.as_doc() saved was told to do what it did; a
    Span gave an AttributeError."""
    from spacy_ctxembed.outputs import MissingOutputs

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="aux", config=ctx_config(name=tiny_bert_dir, primary=False))
    nlp.initialize()
    original = nlp(TEXTS[0])
    back = next(DocBin(docs=[original], store_user_data=True).get_docs(nlp.vocab))
    assert restore_vectors(back) is back
    numpy.testing.assert_array_equal(back._.ctx_outputs["aux"]["vectors"], original._.ctx_outputs["aux"]["vectors"])
    assert not back[0].has_vector  # as when it left the pipeline: no component's vectors are the doc's

    primary = make_nlp(tiny_bert_dir)
    cut = primary(TEXTS[0])[7:11].as_doc()
    back = next(DocBin(docs=[cut], store_user_data=True).get_docs(primary.vocab))
    with pytest.raises(MissingOutputs, match=r"or it is a span.as_doc\(\) that read them from the doc it was cut "
                                             r"from \(save spacy_ctxembed.span_as_doc\(span\)\)"):
        restore_vectors(back)
    kept = next(DocBin(docs=[primary(TEXTS[0])[7:11].as_doc(copy_user_data=True)],
                       store_user_data=True).get_docs(primary.vocab))
    numpy.testing.assert_array_equal(restore_vectors(kept)._.ctx_vectors, cut._.ctx_vectors)
    with pytest.raises(TypeError, match=r"^restore_vectors: expected a Doc, got Span 'It was'$"):
        restore_vectors(original[0:2])


def test_vectors_read_through_the_hooks_cannot_be_rewritten_in_place(nlp_default):
    """`v = token.vector; v /= norm(v)` rewrote the stored row (by 1.97 on MiniLM)
    for every later read: spans, similarity, doc._.ctx_vectors, doc.tensor."""
    doc = nlp_default(TEXTS[0])
    stored = doc._.ctx_vectors.copy()
    merged = nlp_default(TEXTS[0])
    with merged.retokenize() as retokenizer:
        retokenizer.merge(merged[0:2])
    for vector in (doc[1].vector, doc._.ctx_vectors, doc.tensor, doc._.ctx_layers, merged[0].vector,
                   merged._.ctx_vectors, merged._.ctx_layers):
        with pytest.raises(ValueError, match="read-only"):
            vector /= 2.0
    numpy.testing.assert_array_equal(doc._.ctx_vectors, stored)
    span = doc[1:3].vector  # (computed for the span: its own array)
    span /= 2.0
    numpy.testing.assert_allclose(doc[1:3].vector, 2 * span, rtol=1e-6)
    normalized = doc[1].vector / numpy.linalg.norm(doc[1].vector)  # (a new array, as numpy gives)
    assert normalized.flags.writeable


def test_multiprocess_pipe(nlp_default):
    originals = list(nlp_default.pipe(TEXTS))
    # Workers send docs back with Doc.to_bytes, which keeps user data but not hooks.
    docs = list(nlp_default.pipe(TEXTS, n_process=2, batch_size=1))
    assert len(docs) == len(originals)
    for doc, original in zip(docs, originals):
        assert doc.text == original.text
        numpy.testing.assert_allclose(doc._.ctx_vectors, original._.ctx_vectors, atol=1e-5)
        restore_vectors(doc)
        for token, token0 in zip(doc, original):
            numpy.testing.assert_allclose(token.vector, token0.vector, atol=1e-5)
            assert token.has_vector == token0.has_vector


def test_to_disk_loads_offline_after_model_dir_is_deleted(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    model_copy = tmp_path / "my-model"
    shutil.copytree(minilm_dir, model_copy)
    nlp = make_nlp(model_copy, layers=[1, -1], combine="scalar_mix", store_layers=True)
    original = nlp(TEXTS[0])
    nlp.to_disk(tmp_path / "pipeline")
    shutil.rmtree(model_copy)
    saved = tmp_path / "pipeline" / "ctxembed_bert" / "model"
    assert (saved / "model.safetensors").is_file()
    component_files = {f.name for f in (tmp_path / "pipeline" / "ctxembed_bert").rglob("*") if f.is_file()}
    assert not {f for f in component_files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}
    loaded = spacy.load(tmp_path / "pipeline")
    doc = loaded(TEXTS[0])
    numpy.testing.assert_allclose(doc._.ctx_layers, original._.ctx_layers, atol=1e-6)
    numpy.testing.assert_allclose(doc._.ctx_vectors, original._.ctx_vectors, atol=1e-6)


def test_nlp_to_bytes_round_trip(tiny_bert_dir):
    nlp = make_nlp(tiny_bert_dir, layers=[0, 2], combine="concat")
    original = nlp(TEXTS[0])
    copy = spacy.blank("en")
    copy.add_pipe("ctxembed_bert", config=ctx_config(layers=[0, 2], combine="concat", name="/nowhere/at/all"))
    with pytest.warns(UserWarning, match=r"name = '/nowhere/at/all': the serialized component was saved with"):
        copy.from_bytes(nlp.to_bytes())  # (its own model: the bytes hold it)
    numpy.testing.assert_allclose(copy(TEXTS[0])._.ctx_vectors, original._.ctx_vectors, atol=1e-6)


def test_component_bytes_honour_exclude(tiny_bert_dir):
    # As spaCy's own components: `exclude` leaves "cfg" or "model" out of the
    # bytes, and out of what a load reads.
    source = make_nlp(tiny_bert_dir, layers=[0, 2])
    original = source(TEXTS[0])._.ctx_vectors
    receiver = make_nlp(tiny_bert_dir, layers=[1])
    before = receiver(TEXTS[0])._.ctx_vectors
    assert not numpy.allclose(before, original, atol=1e-3)
    component = source.get_pipe("ctxembed_bert")

    no_model = component.to_bytes(exclude=["model"])
    assert len(no_model) < len(component.to_bytes()) // 100
    receiver.get_pipe("ctxembed_bert").from_bytes(no_model, exclude=["model"])
    numpy.testing.assert_array_equal(receiver(TEXTS[0])._.ctx_vectors, before)
    with pytest.raises(ValueError, match=r"\[ctxembed_bert\] bytes = .*hold no model.*exclude=\['model'\]"):
        receiver.get_pipe("ctxembed_bert").from_bytes(no_model)

    other = spacy.blank("en")
    other.add_pipe("ctxembed_bert", config=ctx_config(layers=[0, 2], name="/nowhere/at/all"))
    other.get_pipe("ctxembed_bert").from_bytes(component.to_bytes(exclude=["cfg"]), exclude=["cfg"])
    numpy.testing.assert_allclose(other(TEXTS[0])._.ctx_vectors, original, atol=1e-6)


def test_loading_never_runs_code_from_the_pipeline_dir(tiny_bert_dir, tmp_path):
    nlp = make_nlp(tiny_bert_dir)
    nlp.to_disk(tmp_path / "pipeline")
    model_dir = tmp_path / "pipeline" / "ctxembed_bert" / "model"
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Exploit()))
    (model_dir / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w')\n")
    config = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(
        config.replace('"model_type"', '"auto_map": {"AutoModel": "modeling_evil.EvilModel"}, "model_type"', 1)
    )
    loaded = spacy.load(tmp_path / "pipeline")
    loaded(TEXTS[0])
    assert not marker.exists()


@pytest.mark.slow
def test_spacy_package_builds_an_installable_pipeline(tiny_bert_dir, tmp_path):
    nlp = make_nlp(tiny_bert_dir)
    assert_packages_and_loads(nlp, "ctxembed_bert/model/model.safetensors", TEXTS[0], tmp_path)
