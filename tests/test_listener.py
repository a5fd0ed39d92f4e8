"""ContextualListener: shapes, gradients into its own mix, training, save and load."""
import gc
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example
from spacy.util import registry
from thinc.api import Adam, concatenate

from spacy_ctxembed import restore_vectors
from spacy_ctxembed.errors import SettingError
from spacy_ctxembed.outputs import MissingOutputs

from .conftest import SHARED_DATA, ctx_config, other_bert

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tagger_bert_listener.cfg"
TEXTS = ["I ate green ham and blue eggs", "They like the park", "Eat apples yesterday"]


def _listener(embed=False, width=16):
    kwargs = {"width": width, "n_layers": 2, "upstream_width": 32}
    def hash_embed(width):
        return registry.resolve({"x": {
            "@architectures": "spacy.MultiHashEmbed.v2", "width": width, "attrs": ["NORM", "SHAPE"],
            "rows": [100, 50], "include_static_vectors": False}})["x"]

    if embed == "concatenate":  # (no nO of its own until init: its parts' widths add up)
        kwargs["embed"] = concatenate(hash_embed(8), hash_embed(4))
    elif embed:
        kwargs["embed"] = hash_embed(8)
    return registry.get("architectures", "spacy-ctxembed.ContextualListener.v1")(**kwargs)


def _upstream_nlp(tiny_bert_dir):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(layers=[1, 2], store_layers=True, name=tiny_bert_dir))
    nlp.initialize()
    return nlp


@pytest.mark.parametrize("embed", [False, True, "concatenate"])
def test_shapes_and_mix_gradients(tiny_bert_dir, embed):
    docs = list(_upstream_nlp(tiny_bert_dir).pipe(["I ran to the park .", "Tests ran"]))
    model = _listener(embed)
    model.initialize()
    Y, backprop = model.begin_update(docs)
    assert [y.shape for y in Y] == [(len(d), 16) for d in docs]
    backprop([numpy.ones_like(y) for y in Y])
    mix = next(node for node in model.walk() if node.name == "scalar_mix")
    assert numpy.abs(mix.get_grad("gamma")).sum() > 0
    assert numpy.abs(mix.get_grad("s")).sum() > 0
    # The untrained mix is the mean of the layers: the projection sees exactly that.
    mixed = mix.predict([d._.ctx_layers for d in docs])
    numpy.testing.assert_allclose(mixed[0], docs[0]._.ctx_layers.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_listener_without_upstream_layers():
    model = _listener()
    doc = spacy.blank("en")("no layers here")
    model.initialize(X=[doc])  # as spaCy initialises the listening component
    with pytest.raises(ValueError, match="store_layers = true"):
        model.begin_update([doc])  # training: a misconfiguration, say why
    # Outside training, zeros of the configured shape only for the docs it was initialised on.
    assert model.predict([doc])[0].shape == (3, 16)
    with pytest.raises(ValueError, match="no upstream ctxembed component ran on this doc"):
        model.predict([spacy.blank("en")("no layers here")])


def test_tagger_trains_saves_and_loads(tiny_bert_dir, tmp_path):
    # Seeded: 30 updates from whatever state earlier tests left the global RNG in
    # tagged "park" as DET in one CI run (the same code passes 20 of 20 seeds).
    spacy.util.fix_random_seed(0)
    nlp = _upstream_nlp(tiny_bert_dir)
    tagger = nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v1",
                    "width": 16, "n_layers": 2, "upstream_width": 32}}})
    words, tags = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})]
    tagger.initialize(lambda: examples, nlp=nlp)
    optimizer = nlp.resume_training()
    for _ in range(30):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"], annotates=["ctxembed_bert"])
    assert [t.tag_ for t in nlp(" ".join(words))] == tags
    nlp.to_disk(tmp_path / "pipeline")
    loaded = spacy.load(tmp_path / "pipeline")
    doc = loaded(" ".join(words))
    assert [t.tag_ for t in doc] == tags
    numpy.testing.assert_allclose(doc._.ctx_vectors, nlp(" ".join(words))._.ctx_vectors, atol=1e-6)


@pytest.mark.parametrize("upstream", ["*", "ctxembed_bert"])
def test_listener_after_its_upstream_is_renamed(tiny_bert_dir, upstream):
    """upstream = "*" follows a renamed upstream; a listener that names it
    says that it was renamed, rather than predicting from zeros, with the
    doc's outputs under the new name or with none (zeros are only for the
    docs spaCy initialises it on); and, its upstream gone, that no component
    of its name comes before it."""
    nlp = _upstream_nlp(tiny_bert_dir)
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": upstream}}})
    nlp.get_pipe("tagger").add_label("X")
    nlp.initialize()
    nlp.rename_pipe("ctxembed_bert", "emb")
    if upstream == "*":
        assert [t.tag_ for t in nlp("I ran")] == ["X", "X"]
        return
    renamed = r"upstream = 'ctxembed_bert': the component it was linked to as 'ctxembed_bert' is named 'emb' now"
    with pytest.raises(ValueError, match=renamed):
        nlp("I ran")
    with nlp.select_pipes(disable=["emb"]), pytest.raises(ValueError, match=renamed):
        nlp("I ran")
    nlp.remove_pipe("emb")
    gc.collect()  # (a listener holds its upstream weakly: gone, it is no renamed one)
    with pytest.raises(ValueError, match=r"upstream = 'ctxembed_bert': no ctxembed component of that name comes "
                                         r"before"):
        nlp("I ran")


def test_an_upstream_named_wrong_lists_the_ctxembed_components_before_it(tiny_bert_dir):
    """upstream = "embx" where the ctxembed component is "emb": the error names
    the ctxembed components that come before the listener's component (not one
    after it, which spaCy never links to it), and once "emb" is renamed, it
    under its new name, not its old one."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="emb", config=ctx_config(layers=[1, 2], name=tiny_bert_dir))
    nlp.add_pipe("ctxembed_bert", name="emb2", config=ctx_config(layers=[1, 2], name=tiny_bert_dir))
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "embx"}}})
    nlp.add_pipe("ctxembed_bert", name="after", config=ctx_config(layers=[1, 2], name=tiny_bert_dir))
    nlp.get_pipe("tagger").add_label("X")
    before = r"no ctxembed component of that name comes before this listener's component in the pipeline"
    with pytest.raises(ValueError, match=r"upstream = 'embx': " + before +
                       r" \(the ctxembed components before it: 'emb', 'emb2'\); set upstream"):
        nlp.initialize()
    nlp.rename_pipe("emb2", "second")
    nlp.remove_pipe("after")
    with pytest.raises(ValueError, match=before + r" \(the ctxembed components before it: 'emb', 'second'\);"):
        nlp.initialize()


def test_the_passed_over_record_keeps_only_components_alive():
    """A pipeline built again and again (a notebook, a sweep) links its listener
    to a new component each time: the record the error message reads keeps the
    components alive, one entry each, and not one per component ever linked."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    class Component:
        def __init__(self, name):
            self.name = name

    listener = ContextualListenerNode("embx", mix_layers=False, grad_factor=1.0)
    kept = Component("emb")
    for _ in range(3):
        listener.pass_over(kept, "tagger")
        listener.pass_over(Component("rebuilt"), "tagger")  # gone when the next round links
        gc.collect()
    listener.pass_over(Component("last"), "tagger")
    assert len(listener._passed_over) == 2
    assert listener.passed_over() == ["emb"]


@pytest.mark.parametrize("mix_layers", [False, True])
def test_a_listener_refuses_tokens_its_upstream_output_does_not_cover(tiny_bert_dir, mix_layers):
    """A doc joined (`Doc.from_docs`) from a doc the whole pipeline annotated and
    one that only another ctxembed component did: the upstream's output covers
    the first part only, its rows on the second are zeros ("missing"). The
    tagger read them as features and tagged from nothing, where `token.vector`
    refuses them. Refused, naming the tokens; the covered doc alone tags."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="X", config=ctx_config(name=tiny_bert_dir))
    nlp.add_pipe("ctxembed_bert", name="Y", config=ctx_config(name=tiny_bert_dir, layers=[1, 2], primary=False))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "Y",
        "mix_layers": mix_layers}}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc("Apples grow fast"), {"tags": ["N", "V", "A"]})])
    covered = nlp("Apples grow on trees.")
    only_x = spacy.blank("en", vocab=nlp.vocab)
    only_x.add_pipe("ctxembed_bert", name="X", config=ctx_config(name=tiny_bert_dir))
    only_x.initialize()
    joined = Doc.from_docs([covered, only_x("Pears grow there too.")])
    assert joined._.ctx_outputs["Y"]["missing"].tolist() == [False] * 5 + [True] * 5
    tok2vec = nlp.get_pipe("tagger").model.get_ref("tok2vec")
    said = r"^\[tagger\] ContextualListener upstream = 'Y': \[Y\] no 'Y' output covers "
    with pytest.raises(MissingOutputs, match=said + r"5 of its 10 tokens \(from token 5: 'Pears grow there too.'\)"):
        tok2vec.predict([joined])
    with nlp.select_pipes(disable=["X", "Y"]):
        with pytest.raises(MissingOutputs, match=said):
            nlp(joined)
        assert len(nlp(covered)) == 5


def _tagged_nlp(tiny_bert_dir, upstream="ctxembed_bert", layers=(1, 2)):
    """ctxembed_bert (trainable) and a tagger mixing its layers, initialized on one example."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(layers=list(layers), name=tiny_bert_dir))
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
                    "upstream": upstream}}})
    words, tags = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})]
    return nlp, examples, nlp.initialize(lambda: examples)


@pytest.mark.parametrize("upstream", ["ctxembed_bert", "*"])
def test_a_mixing_listener_enabled_after_loading_says_why_it_has_no_layers(tiny_bert_dir, tmp_path, upstream):
    """spaCy links listeners when a pipeline is loaded, not on enable_pipe: the upstream then keeps no
    layers for the tagger (store_layers = false), and the error said the upstream may have been renamed.
    It names the upstream that "*" found (it said "upstream None")."""
    nlp, _, _ = _tagged_nlp(tiny_bert_dir, upstream)
    nlp.to_disk(tmp_path / "nlp")
    loaded = spacy.load(tmp_path / "nlp", disable=["tagger"])
    loaded.enable_pipe("tagger")
    with pytest.raises(ValueError, match=r"upstream 'ctxembed_bert' stored no layers on the doc, only vectors: .*"
                                         r"not on enable_pipe.* set store_layers = true on 'ctxembed_bert';"):
        loaded("I ran to the park")
    assert [t.tag_ for t in spacy.load(tmp_path / "nlp")("I ran")] == [t.tag_ for t in nlp("I ran")]


def test_weights_of_another_upstreams_layers_are_named_and_the_half_loaded_component_refused(tiny_bert_dir, tmp_path):
    """A tagger's weights saved next to an upstream of 2 layers, loaded into a
    pipeline whose upstream selects 3: thinc's "Attempt to change dimension
    'nL'", and the tagger then ran half loaded (its output layer the saved
    one's). It names the component and the layers, and refuses to run until a
    load succeeds."""
    nlp, _, _ = _tagged_nlp(tiny_bert_dir)  # layers [1, 2]
    nlp.to_disk(tmp_path / "two")
    other, _, _ = _tagged_nlp(tiny_bert_dir, layers=(0, 1, 2))
    tags = [t.tag_ for t in other("I ran to the park")]
    other.to_disk(tmp_path / "three")
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': the weights "
                                         r"being loaded were saved for 2 layers of its upstream, and its upstream "
                                         r"'ctxembed_bert' gives 3 layers"):
        other.from_disk(tmp_path / "two", exclude=["ctxembed_bert"])
    with pytest.raises(ValueError, match=r"gives 3 layers: .* \(the load failed, and left this component's "
                                         r"weights half loaded\)"):
        other("I ran to the park")
    other.from_disk(tmp_path / "three")
    assert [t.tag_ for t in other("I ran to the park")] == tags


def test_a_copys_layers_edited_in_a_saved_pipeline_are_named(tiny_bert_dir, tmp_path):
    """`replace_listeners`, saved, then the copy's `embedder.encoder.layers`
    edited in config.cfg: thinc's "Attempt to change dimension 'nL' for model
    'ctxembed-bert-encoder'"."""
    from spacy.util import load_config

    nlp, _, _ = _tagged_nlp(tiny_bert_dir)
    nlp.replace_listeners("ctxembed_bert", "tagger", ["model.tok2vec"])
    nlp.to_disk(tmp_path / "copy")
    config = load_config(tmp_path / "copy" / "config.cfg")
    config["components"]["tagger"]["model"]["tok2vec"]["embedder"]["encoder"]["layers"] = [0, 1, 2]
    config.to_disk(tmp_path / "copy" / "config.cfg")
    with pytest.raises(SettingError, match=r"^\[ContextualTok2Vec\] embedder\.encoder\.layers = \[0, 1, 2\]: the "
                                           r"encoder was saved for 2 layers .* but the config's layers select 3"):
        spacy.load(tmp_path / "copy")


def _trained_tagger(upstream_dir, tmp_path, *, frozen, mix_layers=True, combine="mean"):
    """ctxembed_bert and a tagger listening to it, trained (the embedder frozen
    and annotating, or fine-tuned with it) and saved."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(layers=[1, 2], name=upstream_dir, trainable=not frozen,
                                                    combine=combine))
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
                    "upstream": "ctxembed_bert", "mix_layers": mix_layers}}})
    words, tags = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})]
    optimizer = nlp.initialize(lambda: examples)
    frozen_kwargs = {"exclude": ["ctxembed_bert"], "annotates": ["ctxembed_bert"]} if frozen else {}
    for _ in range(5):
        nlp.update(examples, sgd=optimizer, **frozen_kwargs)
    nlp.to_disk(tmp_path / "tagged")
    return nlp, tmp_path / "tagged"


def _embedded(vocab, pipeline_or_dir, **settings):
    """TEXTS embedded once, by a saved pipeline or a new one of a model
    folder, saved in a DocBin and read back with their outputs."""
    if isinstance(pipeline_or_dir, Path) and (pipeline_or_dir / "config.cfg").is_file():
        embedder = spacy.load(pipeline_or_dir, exclude=["tagger"], vocab=vocab,
                              config={"components": {"ctxembed_bert": {"store_layers": True}}})
    else:
        embedder = _embedder(vocab, pipeline_or_dir, **settings)
    return _read_back(embedder, vocab)


def _embedder(vocab, model_dir, **settings):
    """A pipeline of ctxembed_bert on `model_dir` that stores its layers."""
    embedder = spacy.blank("en", vocab=vocab)
    embedder.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, store_layers=True,
                                                         **{"layers": [1, 2], **settings}))
    return embedder


def _read_back(embedder, vocab):
    """TEXTS embedded by `embedder`, saved in a DocBin and read back with their outputs."""
    doc_bin = DocBin(store_user_data=True, docs=embedder.pipe(TEXTS))
    return [restore_vectors(doc) for doc in DocBin().from_bytes(doc_bin.to_bytes()).get_docs(vocab)]


REFUSED = r"the doc's outputs under 'ctxembed_bert' were made by another model or with other settings than "


@pytest.mark.parametrize("mix_layers,combine", [(True, "mean"), (False, "mean"), (True, "scalar_mix")])
def test_docs_embedded_by_another_model_are_refused_with_the_upstream_left_out(tiny_bert_dir, minilm_dir, tmp_path,
                                                                                mix_layers, combine):
    """Docs embedded once (`embed`, a DocBin) and given to a trained pipeline's
    listening component with its upstream disabled or excluded: outputs of
    another model of the same width, or of other pooling, were read as its
    features (tags changed, no error; found by a review helper). The same
    model's are read, as the upstream would make them; also under int8,
    which heads are not held to."""
    nlp, path = _trained_tagger(tiny_bert_dir, tmp_path, frozen=True, mix_layers=mix_layers, combine=combine)
    tags = [[token.tag_ for token in doc] for doc in nlp.pipe(TEXTS)]
    other = other_bert(tmp_path / "other", minilm_dir)
    for pipeline, kwargs, than in (
        (nlp, {"disable": ["ctxembed_bert"]}, "'ctxembed_bert' makes"),
        (spacy.load(path, disable=["ctxembed_bert"]), {}, "'ctxembed_bert' makes"),
        (spacy.load(path, exclude=["ctxembed_bert"]), {}, "this component was trained on"),
    ):
        with pytest.raises(ValueError, match=re.escape(REFUSED + than)
                           + r" \((\w+ \w+ vs \w+; )*(encoder_)?weights \w+ vs \w+\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, other, combine=combine), **kwargs))
        with pytest.raises(ValueError, match=re.escape(REFUSED + than) + r" \(pooling first vs mean\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, tiny_bert_dir, combine=combine, pooling="first"), **kwargs))
        for same in (_embedded(pipeline.vocab, path), _embedded(pipeline.vocab, tiny_bert_dir, combine=combine)):
            assert [[token.tag_ for token in doc] for doc in pipeline.pipe(same, **kwargs)] == tags
        int8 = _embedded(pipeline.vocab, tiny_bert_dir, combine=combine, precision="int8")
        assert len(list(pipeline.pipe(int8, **kwargs))) == len(TEXTS)


def test_a_fine_tuned_component_holds_embedded_docs_to_the_upstream_it_was_saved_with(tiny_bert_dir, tmp_path):
    """A component fine-tuned with its upstream, loaded without it: docs
    embedded by the base model were read as its features (its record had no
    weights: they moved in training). The upstream's save records what its
    outputs say of its weights then; the saved pipeline's own docs are read."""
    nlp, path = _trained_tagger(tiny_bert_dir, tmp_path, frozen=False)
    tags = [[token.tag_ for token in doc] for doc in nlp.pipe(TEXTS)]
    loaded = spacy.load(path, exclude=["ctxembed_bert"])
    with pytest.raises(ValueError, match=re.escape(REFUSED + "this component was trained on") + r" \(encoder_weights "):
        list(loaded.pipe(_embedded(loaded.vocab, tiny_bert_dir)))
    assert [[token.tag_ for token in doc] for doc in loaded.pipe(_embedded(loaded.vocab, path))] == tags
    # Trained on after the save, and saved under the optimizer's averages (as spacy train saves model-best and
    # model-last): held to its upstream as it is, not as saved (the record kept the saved weights, and its own
    # upstream's docs were refused once the upstream was removed; found by review helpers). The averages' save
    # holds its docs to the averages.
    words, gold = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    optimizer = Adam(0.001, use_averages=True)
    for _ in range(3):
        nlp.update([Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": gold})], sgd=optimizer)
    assert optimizer.averages
    with nlp.use_params(optimizer.averages):
        nlp.to_disk(tmp_path / "averaged")
    docs = list(nlp.pipe(TEXTS))
    tags = [[token.tag_ for token in doc] for doc in docs]
    averaged = spacy.load(tmp_path / "averaged", exclude=["ctxembed_bert"])
    with pytest.raises(ValueError, match=re.escape(REFUSED + "this component was trained on") + r" \(encoder_weights "):
        list(averaged.pipe(DocBin(store_user_data=True, docs=docs).get_docs(averaged.vocab)))
    assert len(list(averaged.pipe(_embedded(averaged.vocab, tmp_path / "averaged")))) == len(TEXTS)
    nlp.remove_pipe("ctxembed_bert")
    gc.collect()
    assert [[token.tag_ for token in doc] for doc in nlp.pipe(docs)] == tags


def test_a_component_trained_on_frozen_weights_that_moved_since_is_saved_held_to_those_it_trained_on(
        tiny_bert_dir, tmp_path):
    """A tagger trained on its upstream frozen, then the upstream fine-tuned
    by another component, and the pipeline saved: loaded without the
    upstream, the tagger must still refuse docs embedded by the saved
    (moved) upstream, and read those of the weights it was trained on. The
    save must not record the moved weights' signature as the tagger's."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(layers=[1, 2], name=tiny_bert_dir))
    for name in ("tagger", "tagger2"):
        nlp.add_pipe("tagger", name=name, config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
            "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "ctxembed_bert"}}})
    words, gold = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    examples = [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": gold})]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert", "tagger2"], annotates=["ctxembed_bert"])
    tags = [[token.tag_ for token in doc] for doc in nlp.pipe(TEXTS, disable=["tagger2"])]
    for _ in range(2):  # (tagger2 fine-tunes the upstream; the encoder steps at the next update)
        nlp.update(examples, sgd=optimizer, exclude=["tagger"])
    nlp.to_disk(tmp_path / "saved")
    loaded = spacy.load(tmp_path / "saved", exclude=["ctxembed_bert", "tagger2"])
    with pytest.raises(ValueError, match=re.escape(REFUSED + "this component was trained on")
                       + r" \((encoder_)?weights \w+ vs \w+\)"):
        list(loaded.pipe(_embedded(loaded.vocab, tmp_path / "saved")))
    as_trained = _embedded(loaded.vocab, tiny_bert_dir)  # (the weights it was trained on)
    assert [[token.tag_ for token in doc] for doc in loaded.pipe(as_trained)] == tags



def _tagger_without_upstream(mix_layers):
    """A tagger listening to "ctxembed_bert", with none in its pipeline, and a
    function making its examples of docs embedded once (made-up tags)."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
                    "upstream": "ctxembed_bert", "mix_layers": mix_layers}}})

    def examples(docs):
        return [Example.from_dict(doc, {"tags": [("NOUN", "VERB")[i % 2] for i in range(len(doc))]}) for doc in docs]

    return nlp, examples

@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_component_trained_on_embedded_docs_without_its_upstream_is_held_to_them(tiny_bert_dir, minilm_dir,
                                                                                    tmp_path, mix_layers):
    """Docs embedded once and read back, a listening component trained on them
    in a pipeline without the embedder: it recorded nothing of what it trained
    on, and read docs of another model, pooling or layers afterwards as its
    features (also beside its own in one batch, and next to another model's
    embedder), with no error (found by a review helper)."""
    nlp, examples = _tagger_without_upstream(mix_layers)
    own = examples(_embedded(nlp.vocab, tiny_bert_dir))
    optimizer = nlp.initialize(lambda: own)
    for _ in range(3):
        nlp.update(own, sgd=optimizer)
    nlp.to_disk(tmp_path / "tagger")
    other = other_bert(tmp_path / "other", minilm_dir)
    trained_on = re.escape(REFUSED + "this component was trained on")
    held = "encoder_weights" if mix_layers else "weights"  # (the encoder's alone where it reads the layers)
    for pipeline in (nlp, spacy.load(tmp_path / "tagger")):
        tags = [[token.tag_ for token in doc] for doc in pipeline.pipe(_embedded(pipeline.vocab, tiny_bert_dir))]
        assert len(tags) == len(TEXTS)
        with pytest.raises(ValueError, match=trained_on + rf" \({held} \w+ vs \w+\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, other)))
        with pytest.raises(ValueError, match=trained_on + r" \(pooling first vs mean\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, tiny_bert_dir, pooling="first")))
        with pytest.raises(ValueError, match=trained_on + r" \(layers \[2, 1\] vs \[1, 2\]\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, tiny_bert_dir, layers=[2, 1])))
    # Another model's docs beside its own in one training batch.
    with pytest.raises(ValueError, match=r"the docs of this training batch hold outputs under 'ctxembed_bert' of "
                                         rf"different models or settings \({held} \w+ vs \w+\)"):
        nlp.update(own[:1] + examples(_embedded(nlp.vocab, other))[1:], sgd=optimizer)
    # Sourced next to an embedder: the one of its docs' model, not another.
    for model_dir, refused in ((tiny_bert_dir, False), (other, True)):
        pipeline = spacy.blank("en")
        pipeline.add_pipe("ctxembed_bert", config=ctx_config(layers=[1, 2], name=model_dir))
        pipeline.initialize()
        pipeline.add_pipe("tagger", source=spacy.load(tmp_path / "tagger"))
        if refused:
            with pytest.raises(ValueError, match=r"was trained on the outputs of another 'ctxembed_bert'"):
                pipeline(TEXTS[0])
        else:
            assert [token.tag_ for token in pipeline(TEXTS[0])] == tags[0]


def _signed_as_before(docs, *fields, edited=None):
    """`docs` with their outputs' signatures as earlier versions wrote them:
    without `fields` (a store replaced, as a write replaces it); with the
    fields in `edited` given those values (a file edited by hand)."""
    from spacy_ctxembed.outputs import is_store_key

    def signature(old):
        parts = [part.partition("=") for part in old.split("; ")]
        return "; ".join(f"{key}={(edited or {}).get(key, value)}" for key, _, value in parts if key not in fields)

    for doc in docs:
        for key in [k for k in doc.user_data if is_store_key(k)]:
            store = doc.user_data[key]
            outputs = {name: {**output, "signature": signature(output["signature"])}
                       for name, output in store["outputs"].items()}
            doc.user_data[key] = {**store, "outputs": outputs}
    return docs


@pytest.mark.parametrize("mix_layers", [True, False])
def test_docs_signed_with_less_keep_what_a_component_trained_on_embedded_docs_is_held_to(tiny_bert_dir, minilm_dir,
                                                                                         tmp_path, mix_layers):
    """A component trained on docs embedded once, then on docs of the same
    model signed by an earlier version (no weights field), alone or first in
    a batch beside docs signed now: the record of the later batch replaced
    the earlier one, with no weights, and docs of another model of the same
    width were read as its features from then on (found by a review helper)."""
    nlp, examples = _tagger_without_upstream(mix_layers)
    own = examples(_embedded(nlp.vocab, tiny_bert_dir))
    optimizer = nlp.initialize(lambda: own)
    nlp.update(own, sgd=optimizer)
    other = other_bert(tmp_path / "other", minilm_dir)
    held = "encoder_weights" if mix_layers else "weights"  # (the encoder's alone where it reads the layers)
    refused = re.escape(REFUSED + "this component was trained on") + rf" \({held} \w+ vs \w+\)"
    older = examples(_signed_as_before(_embedded(nlp.vocab, tiny_bert_dir), "weights", "encoder_weights"))
    for batch in (older, older[:1] + own[1:]):
        nlp.update(batch, sgd=optimizer)
        with pytest.raises(ValueError, match=refused):
            list(nlp.pipe(_embedded(nlp.vocab, other)))
    # Trained first on such docs, then on docs signed now: held to the weights from then on.
    spacy.util.fix_random_seed(0)
    fresh = spacy.blank("en")
    fresh.add_pipe("tagger", source=nlp)
    optimizer = fresh.initialize(lambda: older)
    fresh.update(older[:1] + own[1:], sgd=optimizer)
    with pytest.raises(ValueError, match=refused):
        list(fresh.pipe(_embedded(fresh.vocab, other)))


def test_a_component_trained_beside_its_upstream_keeps_that_record_when_trained_on_docs_that_say_less(
        tiny_bert_dir, minilm_dir, tmp_path):
    """A component trained beside its frozen upstream, loaded without it and
    trained on docs embedded once by it, signed by an earlier version (no
    weights): it stays held to the upstream's weights it was trained with,
    and is refused beside another model's embedder, not held to the docs'
    signature, which names no weights."""
    _, path = _trained_tagger(tiny_bert_dir, tmp_path, frozen=True)
    loaded = spacy.load(path, exclude=["ctxembed_bert"])
    _, examples = _tagger_without_upstream(True)
    older = examples(_signed_as_before(_embedded(loaded.vocab, tiny_bert_dir), "weights", "encoder_weights"))
    optimizer = loaded.resume_training()
    loaded.update(older, sgd=optimizer)
    for model_dir, refused in ((tiny_bert_dir, False), (other_bert(tmp_path / "other", minilm_dir), True)):
        pipeline = spacy.blank("en")
        pipeline.add_pipe("ctxembed_bert", config=ctx_config(layers=[1, 2], name=model_dir, combine="mean"))
        pipeline.initialize()
        pipeline.add_pipe("tagger", source=loaded)
        _tags_as_trained_or_refused(pipeline, loaded, tiny_bert_dir, refused=refused)


def _tags_as_trained_or_refused(pipeline, trained, tiny_bert_dir, *, refused):
    """Beside an upstream of other weights than the docs `trained` trained its
    tagger on, `pipeline` refuses to tag; beside the same weights, it tags as
    that tagger tags those docs read back (tiny_bert_dir's, embedded once)."""
    if refused:
        with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert': this "
                                             r"component was trained on the outputs of another 'ctxembed_bert' "
                                             r"\(trained on the outputs of weights \w+, 'ctxembed_bert' has "
                                             r"weights \w+ now\)"):
            pipeline(TEXTS[0])
        return
    with trained.select_pipes(enable=["tagger"]):
        stored = [token.tag_ for token in trained(_embedded(trained.vocab, tiny_bert_dir)[0])]
    assert [token.tag_ for token in pipeline(TEXTS[0])] == stored


@pytest.mark.parametrize("layers", ["[1, 2", '"1, 2"', "none"])
def test_docs_whose_layers_say_nothing_train_a_component_held_to_the_rest_and_then_to_later_docs_layers(
        tiny_bert_dir, minilm_dir, tmp_path, layers):
    """Docs embedded once whose signatures' layers field is damaged (edited by
    hand: not JSON, or not a list of layers) or absent (an earlier version's)
    tell no layers: a component trained on them is held to the weights and
    pooling they name, and to the layers of the docs it trains on next."""
    nlp, examples = _tagger_without_upstream(True)
    fields = ("layers",) if layers == "none" else ()
    damaged = examples(_signed_as_before(_embedded(nlp.vocab, tiny_bert_dir), *fields, edited={"layers": layers}))
    optimizer = nlp.initialize(lambda: damaged)
    nlp.update(damaged, sgd=optimizer)
    trained_on = re.escape(REFUSED + "this component was trained on")
    with pytest.raises(ValueError, match=trained_on + r" \(encoder_weights \w+ vs \w+\)"):
        list(nlp.pipe(_embedded(nlp.vocab, other_bert(tmp_path / "other", minilm_dir))))
    with pytest.raises(ValueError, match=trained_on + r" \(pooling first vs mean\)"):
        list(nlp.pipe(_embedded(nlp.vocab, tiny_bert_dir, pooling="first")))
    nlp.update(examples(_embedded(nlp.vocab, tiny_bert_dir)), sgd=optimizer)
    with pytest.raises(ValueError, match=trained_on + r" \(layers \[2, 1\] vs \[1, 2\]\)"):
        list(nlp.pipe(_embedded(nlp.vocab, tiny_bert_dir, layers=[2, 1])))
    if layers != "none":  # (the damaged docs are refused now; absent layers are compared with nothing)
        with pytest.raises(ValueError, match=trained_on + rf" \(layers {re.escape(layers)} vs \[1, 2\]\)"):
            nlp.update(damaged, sgd=optimizer)


@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_component_trained_on_embedded_docs_beside_an_upstream_not_loaded_is_held_to_them(tiny_bert_dir, minilm_dir,
                                                                                            tmp_path, mix_layers):
    """A component initialized beside one embedder, sourced next to another
    not loaded yet, and trained on docs embedded once with that one left out
    of the update: its record stayed "not trained yet", and once the embedder
    loaded it tagged that model's features, which it never trained on, with
    no error (found by a review helper). It records what made the docs, as
    with no embedder in the pipeline, and is held to them."""
    other = other_bert(tmp_path / "other", minilm_dir)

    def sourced(model_dir):
        source, examples = _tagger_without_upstream(mix_layers)
        source.add_pipe("ctxembed_bert", first=True, config=ctx_config(name=tiny_bert_dir, layers=[1, 2]))
        own = examples(_embedded(source.vocab, tiny_bert_dir))
        source.initialize(lambda: own)
        nlp = spacy.blank("en", vocab=source.vocab)
        nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[1, 2]))
        nlp.add_pipe("tagger", source=source)
        return nlp, own

    for model_dir, refused in ((tiny_bert_dir, False), (other, True)):
        nlp, own = sourced(model_dir)
        gc.collect()  # (the source's embedder, which lists the tagger's listener too, is gone)
        assert not nlp.get_pipe("ctxembed_bert").loaded
        optimizer = nlp.resume_training()
        for _ in range(3):
            nlp.update(own, sgd=optimizer, exclude=["ctxembed_bert"])
        assert not nlp.get_pipe("ctxembed_bert").loaded  # (the head trained on the docs' outputs alone)
        _tags_as_trained_or_refused(nlp, nlp, tiny_bert_dir, refused=refused)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "ud_english_ewt").is_dir(), reason="needs ../shared/data")
def test_spacy_train_with_shipped_config(tmp_path):
    conllu = (SHARED_DATA / "ud_english_ewt" / "en_ewt-ud-dev.conllu").read_text(encoding="utf8")
    sentences = conllu.split("\n\n")
    for name, chunk in (("train", sentences[:40]), ("dev", sentences[40:60])):
        (tmp_path / f"{name}.conllu").write_text("\n\n".join(chunk) + "\n\n", encoding="utf8")
        subprocess.run([sys.executable, "-m", "spacy", "convert", str(tmp_path / f"{name}.conllu"), str(tmp_path),
                        "--converter", "conllu", "-n", "10"], check=True, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "spacy", "train", str(CONFIG), "--output", str(tmp_path / "out"),
         "--paths.train", str(tmp_path / "train.spacy"), "--paths.dev", str(tmp_path / "dev.spacy"),
         "--training.max_steps", "30", "--training.eval_frequency", "15"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    nlp = spacy.load(tmp_path / "out" / "model-last")
    doc = nlp("I ran to the park yesterday .")
    assert nlp.pipe_names == ["ctxembed_bert", "tagger"]
    assert all(t.tag_ for t in doc) and doc._.ctx_vectors.shape == (len(doc), 384)


def _other_mix(embedder):
    """`embedder`'s scalar mix with other weights than it was initialised with
    (s = 0, gamma = 1: the mean), as `use_params` swaps them in (a step would)."""
    component = embedder.get_pipe("ctxembed_bert")
    component.ensure_loaded()  # (the mix has its weights once the component loads, at its first use)
    combiner = component.combiner
    return embedder.use_params({(combiner.id, "s"): numpy.asarray([2.0, -2.0], dtype="f"),
                                (combiner.id, "gamma"): numpy.asarray([0.5], dtype="f")})


def _head_reference(tagger, docs):
    """What a tagger's ContextualListener.v2 head (its own scalar mix of the
    layers, then the projection) gives for `docs`, in float64 numpy from the
    docs' stored layers and the head's parameters."""
    tok2vec = tagger.model.get_ref("tok2vec")
    mix, linear = (next(node for node in tok2vec.walk() if node.name == name) for name in ("scalar_mix", "linear"))
    s = mix.get_param("s").astype("float64")
    weights, gamma = numpy.exp(s) / numpy.exp(s).sum(), float(mix.get_param("gamma")[0])
    W, b = linear.get_param("W").astype("float64"), linear.get_param("b").astype("float64")
    return [(gamma * numpy.tensordot(weights, doc._.ctx_layers.astype("float64"), axes=1)) @ W.T + b for doc in docs]


def test_a_layer_mixing_component_trained_on_embedded_docs_is_held_to_their_encoder_alone(tiny_bert_dir, minilm_dir,
                                                                                         tmp_path):
    """A component that mixes the layers, trained on docs embedded once with
    no upstream in its pipeline, was held to the fingerprint of the encoder
    and combiner together: docs of its encoder under other combiner weights,
    and such an embedder beside it, were refused, though no combiner shapes
    the layers it reads. Held to the encoder's weights alone now (the
    signatures name them apart), it reads them, from the layers; another
    encoder's, or other layers or pooling, stay refused."""
    nlp, examples = _tagger_without_upstream(True)
    embedder = _embedder(nlp.vocab, tiny_bert_dir, combine="scalar_mix")
    own = examples(_read_back(embedder, nlp.vocab))
    optimizer = nlp.initialize(lambda: own)
    for _ in range(3):
        nlp.update(own, sgd=optimizer)
    nlp.to_disk(tmp_path / "tagger")
    with _other_mix(embedder):
        mixed_otherwise = _read_back(embedder, nlp.vocab)
    for doc, eg in zip(mixed_otherwise, own):  # (the same layers; other vectors: the combiner's weights differ)
        numpy.testing.assert_array_equal(doc._.ctx_layers, eg.predicted._.ctx_layers)
        assert not numpy.allclose(doc._.ctx_vectors, eg.predicted._.ctx_vectors, atol=1e-3)
    trained_on = re.escape(REFUSED + "this component was trained on")
    for pipeline in (nlp, spacy.load(tmp_path / "tagger")):
        tagger = pipeline.get_pipe("tagger")
        want = [[token.tag_ for token in doc] for doc in pipeline.pipe(_read_back(embedder, pipeline.vocab))]
        docs = _read_back(embedder, pipeline.vocab)
        with _other_mix(embedder):
            docs_otherwise = _read_back(embedder, pipeline.vocab)
        got = tagger.model.get_ref("tok2vec").predict(docs_otherwise)
        for features, reference in zip(got, _head_reference(tagger, docs)):
            numpy.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-5)
        assert [[token.tag_ for token in doc] for doc in pipeline.pipe(docs_otherwise)] == want
        with pytest.raises(ValueError, match=trained_on + r" \(encoder_weights \w+ vs \w+\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, other_bert(tmp_path / "other", minilm_dir),
                                         combine="scalar_mix")))
        with pytest.raises(ValueError, match=trained_on + r" \(layers \[2, 1\] vs \[1, 2\]\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, tiny_bert_dir, combine="scalar_mix", layers=[2, 1])))
        with pytest.raises(ValueError, match=trained_on + r" \(pooling first vs mean\)"):
            list(pipeline.pipe(_embedded(pipeline.vocab, tiny_bert_dir, combine="scalar_mix", pooling="first")))
    # A training batch of both combiners' docs is one encoder's layers.
    nlp.update(own[:1] + examples(mixed_otherwise)[1:], sgd=optimizer)
    # Sourced next to an embedder of its encoder with the other combiner weights: it runs, on the same layers.
    beside = _embedder(nlp.vocab, tiny_bert_dir, combine="scalar_mix")
    beside.add_pipe("tagger", source=spacy.load(tmp_path / "tagger"))
    with _other_mix(beside):
        assert [token.tag_ for token in beside(TEXTS[0])] == want[0]


@pytest.mark.parametrize("mix_layers", [True, False])
def test_a_component_trained_beside_its_frozen_upstream_holds_embedded_docs_to_the_weights_it_reads(
        tiny_bert_dir, tmp_path, mix_layers):
    """Trained beside its frozen upstream, loaded without it: docs embedded
    by its encoder under other combiner weights were refused also where the
    component mixes the layers, which no combiner shapes. It reads them now;
    one of the vectors still refuses them."""
    nlp, path = _trained_tagger(tiny_bert_dir, tmp_path, frozen=True, mix_layers=mix_layers, combine="scalar_mix")
    loaded = spacy.load(path, exclude=["ctxembed_bert"])
    embedder = _embedder(loaded.vocab, tiny_bert_dir, combine="scalar_mix")  # (the frozen mix as initialised)
    tags = [[token.tag_ for token in doc] for doc in loaded.pipe(_read_back(embedder, loaded.vocab))]
    with _other_mix(embedder):
        docs = _read_back(embedder, loaded.vocab)
    if mix_layers:
        assert [[token.tag_ for token in doc] for doc in loaded.pipe(docs)] == tags
    else:
        with pytest.raises(ValueError, match=re.escape(REFUSED + "this component was trained on") + r" \(weights "):
            list(loaded.pipe(docs))


@pytest.mark.parametrize("mix_layers,dropped", [(False, ()), (True, ("encoder_weights",))])
def test_embedded_docs_of_other_combiner_weights_stay_refused_where_the_head_reads_the_vectors_or_they_say_less(
        tiny_bert_dir, tmp_path, mix_layers, dropped):
    """A component of the vectors, trained on docs embedded once, reads what
    the combiner made: docs of other combiner weights, and such an embedder
    beside it, are refused. So are they for one that mixes the layers where
    its docs' signatures do not name the encoder's weights apart (stored by
    an earlier version: held to all the weights, as then), on either side."""
    nlp, examples = _tagger_without_upstream(mix_layers)
    embedder = _embedder(nlp.vocab, tiny_bert_dir, combine="scalar_mix")
    own = examples(_signed_as_before(_read_back(embedder, nlp.vocab), *dropped))
    optimizer = nlp.initialize(lambda: own)
    nlp.update(own, sgd=optimizer)
    nlp.to_disk(tmp_path / "tagger")
    refused = re.escape(REFUSED + "this component was trained on") + r" \(weights \w+ vs \w+\)"
    for pipeline in (nlp, spacy.load(tmp_path / "tagger")):
        with _other_mix(embedder):
            signed_now = _read_back(embedder, pipeline.vocab)
            older = _signed_as_before(_read_back(embedder, pipeline.vocab), "encoder_weights")
        for docs in (signed_now, older):
            with pytest.raises(ValueError, match=refused):
                list(pipeline.pipe(docs))
    beside = _embedder(nlp.vocab, tiny_bert_dir, combine="scalar_mix")
    beside.add_pipe("tagger", source=spacy.load(tmp_path / "tagger"))
    with _other_mix(beside), pytest.raises(ValueError, match=r"was trained on the outputs of another 'ctxembed_bert'"):
        beside(TEXTS[0])


def test_a_renamed_upstream_holds_embedded_docs_to_what_the_unrenamed_one_did(tiny_bert_dir, minilm_dir, tmp_path):
    """Docs embedded once and read by a component whose upstream was renamed
    since: the rename check compared their signature with every field, the
    check of embedded docs without int8 (which runs the same weights), so
    int8 docs of the upstream's model were read before the rename and refused
    after it. One comparison now; another model's docs stay refused."""
    nlp, _ = _trained_tagger(tiny_bert_dir, tmp_path, frozen=True)
    tagger = nlp.get_pipe("tagger").model
    int8 = _embedded(nlp.vocab, tiny_bert_dir, precision="int8")
    read = tagger.predict(int8)
    nlp.rename_pipe("ctxembed_bert", "emb")
    for before, after in zip(read, tagger.predict(int8)):
        numpy.testing.assert_array_equal(after, before)
    with pytest.raises(ValueError, match=r"is named 'emb' now, .*those under 'ctxembed_bert' on the doc are another "
                                         r"model's"):
        tagger.predict(_embedded(nlp.vocab, other_bert(tmp_path / "other", minilm_dir)))


def test_a_wildcard_listener_takes_no_output_of_several_it_cannot_tell_apart(tiny_bert_dir):
    """upstream = "*" with no upstream linked (its pipeline loaded without it)
    takes a doc's one output; a doc with outputs of two components has no
    single one, and reading either would be a guess: it says which there are
    rather than read the first."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="a", config=ctx_config(name=tiny_bert_dir, layers=[1]))
    nlp.add_pipe("ctxembed_bert", name="b", config=ctx_config(name=tiny_bert_dir, layers=[2], primary=False))
    nlp.initialize()
    doc = nlp("I ran home")
    node = ContextualListenerNode("*", mix_layers=False, grad_factor=1.0)
    with pytest.raises(ValueError, match=r"doc has no vectors from upstream '\*', but has outputs of 'a', 'b'"):
        node.predict([doc])


def test_a_v2_head_with_static_features_predicts_next_to_its_upstream(tiny_bert_dir):
    """A ContextualListener.v2 whose features are the mix concatenated with
    `embed` (MultiHashEmbed) has a projection wider than the upstream's layers
    by the embed's width: that is what it was made for, not another upstream
    (only the layers' part is held to the upstream's width)."""
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[1, 2]))
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
                    "upstream": "ctxembed_bert",
                    "embed": {"@architectures": "spacy.MultiHashEmbed.v2", "width": 8, "attrs": ["NORM"],
                              "rows": [100], "include_static_vectors": False}}}})
    words, tags = ["I", "ran", "home"], ["PRON", "VERB", "NOUN"]
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})])
    linear = next(node for node in nlp.get_pipe("tagger").model.walk() if node.name == "linear")
    assert linear.get_dim("nI") == 32 + 8  # the upstream's layers, then the static features
    doc = nlp("I ran home")
    assert all(token.tag_ in tags for token in doc)


def test_a_listener_sent_one_batch_by_two_upstreams_says_so():
    """A listener that two ctxembed components send the same training batch
    (upstream = "*" matching both) would take the second one's outputs and
    backprop, silently dropping the first's gradient path. The second
    sending is refused, naming both; a later batch is taken."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    node = ContextualListenerNode("*", mix_layers=True, grad_factor=1.0)
    node.receive(7, [numpy.zeros((1, 2, 3), dtype="float32")], lambda d: [], "a")
    with pytest.raises(ValueError, match=r"receives from both 'a' and 'b': set upstream to one of them"):
        node.receive(7, [numpy.ones((1, 2, 3), dtype="float32")], lambda d: [], "b")
    node.receive(8, [numpy.ones((1, 2, 3), dtype="float32")], lambda d: [], "b")  # (another batch: taken)
