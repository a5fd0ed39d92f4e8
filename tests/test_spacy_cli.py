"""spaCy's own CLI commands (and the library functions they run) on pipelines
with a ctxembed component and a listening tagger: what they give back is
checked against running the pipeline directly.

- `spacy evaluate`, `spacy apply` + `restore_vectors`, `spacy assemble` with
  `replace_listeners`, `spacy train` resuming from sourced components;
- spaCy's `[initialize] init_tok2vec` (the weights `spacy pretrain` wrote),
  which loads them with thinc's `model.from_bytes` on the component's model,
  past the component: its weights' fingerprint, its outputs' signature, its
  feature cache's key and its lineage follow them.

Everything runs in-process on the conftest's tiny BERT: no data files needed.
"""

import numpy
import pytest
import spacy
import srsly
from spacy.tokens import DocBin
from spacy.training import Example

from .conftest import ctx_config, other_bert, param_copies, params_moved
from .test_from_trf import _with_transformer

WORDS = ["I", "ran", "to", "the", "park", "and", "ran", "some", "tests", "."]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN", "CCONJ", "VERB", "DET", "NOUN", "PUNCT"]
TEXTS = ["I ran to the park this morning.", "Yesterday I ran some more significance tests.",
         "She ran to the station to catch her train."]
LISTENER = {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}


def _pipeline(model_dir, *, trainable=True, cache_mb=0):
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=model_dir, layers=[0, 1, 2], trainable=trainable,
                                                    cache_mb=cache_mb))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": LISTENER}})
    return nlp


def _examples(nlp):
    return [Example.from_dict(nlp.make_doc(" ".join(WORDS)), {"words": WORDS, "tags": TAGS})]


def _vectors(nlp, text):
    return numpy.asarray(nlp(text)._.ctx_vectors)


def _write_docbin(path, nlp):
    DocBin(docs=[eg.reference for eg in _examples(nlp)]).to_disk(path)
    return path


@pytest.fixture(scope="module")
def fine_tuned_dir(tiny_bert_dir, tmp_path_factory):
    """A pipeline whose encoder was fine-tuned with its tagger (weights unlike the base model's)."""
    nlp = _pipeline(tiny_bert_dir)
    examples = _examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(3):
        nlp.update(examples, sgd=False)
        for _, proc in nlp.pipeline:
            proc.finish_update(optimizer)
    path = tmp_path_factory.mktemp("fine-tuned")
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def frozen_dir(tiny_bert_dir, tmp_path_factory):
    """A tagger trained on a frozen, annotating embedder, as `spacy train` runs it."""
    nlp = _pipeline(tiny_bert_dir, trainable=False, cache_mb=16)
    examples = _examples(nlp)
    with nlp.select_pipes(disable=["ctxembed_bert"]):  # init_nlp: frozen components are not initialized
        nlp.initialize(lambda: examples)
    optimizer = nlp.resume_training()
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"], annotates=["ctxembed_bert"])
    path = tmp_path_factory.mktemp("frozen")
    nlp.to_disk(path)
    return path


# `spacy evaluate` ----------------------------------------------------------------------------


def test_spacy_evaluate_gives_the_scores_of_nlp_evaluate(frozen_dir, tmp_path):
    from spacy.cli.evaluate import evaluate

    path = frozen_dir
    nlp = spacy.load(path)
    data = _write_docbin(tmp_path / "dev.spacy", nlp)
    expected = nlp.evaluate([Example(nlp.make_doc(d.text), d) for d in DocBin().from_disk(data).get_docs(nlp.vocab)])
    scores = evaluate(str(path), data, use_gpu=-1, silent=True)
    assert scores["tag_acc"] == pytest.approx(expected["tag_acc"], abs=1e-9)


# `spacy apply` -------------------------------------------------------------------------------


def test_spacy_apply_output_has_no_vector_until_restored_then_the_direct_ones(fine_tuned_dir, tmp_path):
    """`spacy apply` writes DocBin(store_user_data=True): read back, a token has no
    vector (not a static or zero one) until `restore_vectors`, and then exactly
    the vectors of the same text run through the pipeline. Text and .spacy input."""
    from spacy.cli.apply import apply

    from spacy_ctxembed import restore_vectors

    srsly.write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    nlp = spacy.load(fine_tuned_dir)
    _write_docbin(tmp_path / "in.spacy", nlp)
    for source in ("in.jsonl", "in.spacy"):
        out = tmp_path / f"out-{source}.spacy"
        apply(tmp_path / source, out, str(fine_tuned_dir), "text", 1, 1)
        docs = list(DocBin().from_disk(out).get_docs(nlp.vocab))
        assert docs
        for doc in docs:
            assert not doc[0].has_vector and doc[0].vector.size == 0  # said to be absent, not static vectors
            doc = restore_vectors(doc)
            fresh = nlp(spacy.tokens.Doc(nlp.vocab, words=[t.text for t in doc],
                                         spaces=[bool(t.whitespace_) for t in doc]))
            assert numpy.allclose(numpy.stack([t.vector for t in doc]), numpy.stack([t.vector for t in fresh]),
                                  atol=1e-5)


# `spacy assemble` ----------------------------------------------------------------------------


@pytest.mark.parametrize("with_embedder", [True, False])
def test_spacy_assemble_with_replace_listeners_keeps_the_tags(fine_tuned_dir, tmp_path, with_embedder):
    from spacy.cli.assemble import assemble_cli

    class Ctx:
        args: list = []

    pipeline = ["ctxembed_bert", "tagger"] if with_embedder else ["tagger"]
    lines = ["[nlp]", 'lang = "en"', f"pipeline = {pipeline!r}".replace("'", '"'), "[components]"]
    if with_embedder:
        lines += ["[components.ctxembed_bert]", f'source = "{fine_tuned_dir}"']
    lines += ["[components.tagger]", f'source = "{fine_tuned_dir}"', 'replace_listeners = ["model.tok2vec"]']
    config = tmp_path / "assemble.cfg"
    config.write_text("\n".join(lines) + "\n")
    assemble_cli(Ctx(), config, tmp_path / "out", None, False)
    source, assembled = spacy.load(fine_tuned_dir), spacy.load(tmp_path / "out")
    for text in TEXTS:
        assert [t.tag_ for t in assembled(text)] == [t.tag_ for t in source(text)]


# `spacy train`, resumed from sourced components -----------------------------------------------


def _training_config(nlp, tmp_path, **training):
    config = nlp.config.copy()
    data = str(_write_docbin(tmp_path / "train.spacy", nlp))
    config["paths"] = {**config["paths"], "train": data, "dev": data}
    config["training"] = {**config["training"], **training}
    return config


def test_spacy_train_keeps_a_sourced_fine_tuned_embedder_s_weights(fine_tuned_dir, tiny_bert_dir, tmp_path):
    """init_nlp resumes sourced components rather than initializing them: the
    fine-tuned encoder must not be loaded again from its config's `name`."""
    from spacy.training.initialize import init_nlp

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", source=spacy.load(fine_tuned_dir))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": LISTENER}})
    config = _training_config(nlp, tmp_path)
    config["components"]["ctxembed_bert"] = {"source": str(fine_tuned_dir)}
    trained = init_nlp(config)
    text = TEXTS[0]
    expected = _vectors(spacy.load(fine_tuned_dir), text)
    assert numpy.array_equal(_vectors(trained, text), expected)
    base = spacy.blank("en")
    base.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2]))
    base.initialize()
    assert not numpy.allclose(expected, _vectors(base, text), atol=1e-3)  # (the check can tell them apart)


def test_spacy_train_with_a_frozen_transformer_not_sourced_says_so(tiny_bert_dir, tmp_path):
    """init_nlp initializes no frozen component: a spacy-transformers transformer
    frozen but not sourced had no width, and ctxembed_from_trf's listener failed
    on thinc's "Cannot get dimension 'nO' ... value unset". Sourced, it trains."""
    from spacy.training.initialize import init_nlp

    nlp = _with_transformer(tiny_bert_dir)
    nlp.add_pipe("ctxembed_from_trf")
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        **LISTENER, "upstream": "ctxembed_from_trf"}}})
    frozen = {"frozen_components": ["transformer"], "annotating_components": ["transformer"]}
    config = _training_config(nlp, tmp_path, **frozen)
    with pytest.raises(ValueError, match=r"^\[ctxembed_from_trf\] cannot size the listener of 'tagger': the width "
                                         r"of the vectors it pools is that of the spacy-transformers transformer "
                                         r"before it, which is not initialized\..*must be sourced from a pipeline "
                                         r"in which it was initialized \(source = \.\.\. in its \[components\] "
                                         r"block\), or left out of \[training\] frozen_components and kept in "
                                         r"annotating_components, for init_nlp to initialize it"):
        init_nlp(config)
    trained = spacy.blank("en")
    trained.add_pipe("transformer", source=nlp)
    trained.initialize()
    trained.to_disk(tmp_path / "trf")
    config["components"]["transformer"] = {"source": str(tmp_path / "trf")}
    initialized = init_nlp(config)
    _assert_sized_and_trains(initialized, **frozen)
    doc = initialized(TEXTS[0])
    assert doc._.ctx_vectors.shape == (len(doc), 32) and all(token.tag_ for token in doc)
    # Its other advice: the transformer left out of frozen_components (initialized by init_nlp), still annotating.
    config["components"]["transformer"] = nlp.config["components"]["transformer"]
    config["training"] = {**config["training"], "frozen_components": [], "annotating_components": ["transformer"]}
    _assert_sized_and_trains(init_nlp(config), frozen_components=[], annotating_components=["transformer"])


def test_spacy_train_with_ctxembed_from_trf_frozen_says_so_not_the_sourced_transformer(tiny_bert_dir, tmp_path):
    """ctxembed_from_trf frozen too (as the shipped configs freeze ctxembed_bert):
    init_nlp leaves it out, the listener's init initializes it alone, without
    the pipeline its width is read from. The error said the transformer, sourced
    and initialized here, was not, and to source it."""
    from spacy.training.initialize import init_nlp

    nlp = _with_transformer(tiny_bert_dir)
    nlp.add_pipe("ctxembed_from_trf")
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        **LISTENER, "upstream": "ctxembed_from_trf"}}})
    trained = spacy.blank("en")
    trained.add_pipe("transformer", source=nlp)
    trained.initialize()
    trained.to_disk(tmp_path / "trf")
    both = ["transformer", "ctxembed_from_trf"]
    config = _training_config(nlp, tmp_path, frozen_components=both, annotating_components=both)
    config["components"]["transformer"] = {"source": str(tmp_path / "trf")}
    with pytest.raises(ValueError, match=r"^\[ctxembed_from_trf\] cannot size the listener of 'tagger': .*it was "
                                         r"initialized on its own.*leave 'ctxembed_from_trf' out of \[training\] "
                                         r"frozen_components") as error:
        init_nlp(config)
    assert "not initialized" not in str(error.value)
    # As it says: ctxembed_from_trf left out of frozen_components, the transformer frozen and annotating.
    frozen = {"frozen_components": ["transformer"], "annotating_components": ["transformer"]}
    config["training"] = {**config["training"], **frozen}
    _assert_sized_and_trains(init_nlp(config), **frozen)


def _assert_sized_and_trains(nlp, *, frozen_components, annotating_components):
    """The tagger's listener sized to the tiny BERT's width (32), and steps
    as `spacy train` takes them move the tagger's weights."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    tagger = nlp.get_pipe("tagger")
    (listener,) = [node for node in tagger.model.walk() if isinstance(node, ContextualListenerNode)]
    assert listener.get_dim("nO") == 32
    before = param_copies(tagger.model)
    optimizer = nlp.create_optimizer()
    for _ in range(2):
        nlp.update(_examples(nlp), sgd=optimizer, exclude=frozen_components, annotates=annotating_components)
    assert params_moved(before)


# `[initialize] init_tok2vec` (the weights `spacy pretrain` writes) ------------------------------


@pytest.fixture(scope="module")
def pretrained_bin(tiny_bert_dir, minilm_dir, tmp_path_factory):
    """What `spacy pretrain` writes for `[pretraining] component = "ctxembed_bert"`,
    `layer = ""`: the component model's `to_bytes()` (here: other weights of the
    tiny BERT's shapes, as pretraining would have moved them to)."""
    root = tmp_path_factory.mktemp("pretrained")
    other = other_bert(root / "other-bert", minilm_dir)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=other, layers=[0, 1, 2], trainable=False))
    nlp.initialize()
    path = root / "model-last.bin"
    path.write_bytes(nlp.get_pipe("ctxembed_bert").model.to_bytes())
    return path, nlp


def _init_tok2vec(nlp, path):
    """spaCy's own step, as `nlp.initialize` runs it with [pretraining] and [initialize] init_tok2vec."""
    from spacy.training.initialize import init_tok2vec

    assert init_tok2vec(nlp, {"component": "ctxembed_bert", "layer": ""}, {"init_tok2vec": str(path)})


def test_init_tok2vec_weights_give_their_own_vectors_even_for_docs_cached_before(tiny_bert_dir, pretrained_bin):
    """With `cache_mb`, a doc embedded before init_tok2vec loaded other weights
    gets the new weights' vectors, as a new doc does (the cache served the old
    weights' layers: its key was the identity taken at the component's last
    load, which thinc's `model.from_bytes` did not renew)."""
    path, pretrained = pretrained_bin
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2], trainable=False,
                                                    cache_mb=16))
    nlp.initialize()
    text = TEXTS[0]
    before = _vectors(nlp, text)
    _init_tok2vec(nlp, path)
    expected = _vectors(pretrained, text)
    assert not numpy.allclose(before, expected)
    assert numpy.allclose(_vectors(nlp, text + " "), _vectors(pretrained, text + " "), atol=1e-6)  # (new doc: right)
    assert numpy.allclose(_vectors(nlp, text), expected, atol=1e-6)  # (not the cached old vectors)


def test_init_tok2vec_weights_sign_the_outputs_as_theirs(tiny_bert_dir, pretrained_bin):
    """After init_tok2vec the component's weights fingerprint and its outputs'
    signature are those of the weights loaded (they stayed those before it,
    and its lineage too)."""
    path, pretrained = pretrained_bin
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2], trainable=False))
    nlp.initialize()
    component, reference = nlp.get_pipe("ctxembed_bert"), pretrained.get_pipe("ctxembed_bert")
    component.encoder_fingerprint()  # (taken before, as a listener's initialize takes it)
    lineage = component.lineage
    _init_tok2vec(nlp, path)
    assert component.encoder_fingerprint() == reference.encoder_fingerprint()
    assert component.signature == reference.signature
    assert component.lineage not in (None, lineage)  # (other weights, from no save of its own)


def test_init_tok2vec_weights_loaded_before_the_components_first_use_are_its_weights(tiny_bert_dir, pretrained_bin):
    """`spacy train` initializes with a frozen embedder disabled: with no listening
    component to load it first, init_tok2vec loads its weights before it ever
    loaded any, and its first use loaded the config's base weights over them."""
    path, pretrained = pretrained_bin
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2], trainable=False))
    with nlp.select_pipes(disable=["ctxembed_bert"]):
        nlp.initialize()
        _init_tok2vec(nlp, path)
    assert not nlp.get_pipe("ctxembed_bert").loaded
    numpy.testing.assert_allclose(_vectors(nlp, TEXTS[0]), _vectors(pretrained, TEXTS[0]), atol=1e-6)


def test_a_load_keeping_the_encoder_after_init_tok2vec_keeps_a_lineage_of_its_weights(
        tiny_bert_dir, pretrained_bin, tmp_path):
    """`from_disk(path, exclude=["model"])` keeps the encoder it holds, and its
    lineage: after init_tok2vec that is the loaded weights', not the lineage of
    the weights before (which a head trained on those would be accepted by)."""
    path, _ = pretrained_bin
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2], trainable=False))
    nlp.initialize()
    component = nlp.get_pipe("ctxembed_bert")
    component.to_disk(tmp_path / "saved")
    lineage = component.lineage
    _init_tok2vec(nlp, path)
    component.from_disk(tmp_path / "saved", exclude=["model"])
    assert component.lineage not in (None, lineage)


def _train_frozen_on_init_tok2vec(tiny_bert_dir, path, out):
    """`spacy train` with ctxembed_bert in frozen_components and annotating_components,
    and `[initialize] init_tok2vec` = the pretrained weights: init_nlp initializes
    with the frozen component disabled, nlp.initialize then runs init_tok2vec."""
    nlp = _pipeline(tiny_bert_dir, trainable=False, cache_mb=16)
    examples = _examples(nlp)
    with nlp.select_pipes(disable=["ctxembed_bert"]):
        nlp.initialize(lambda: examples)
        _init_tok2vec(nlp, path)
    optimizer = nlp.resume_training()
    for _ in range(3):
        nlp.update(examples, sgd=optimizer, exclude=["ctxembed_bert"], annotates=["ctxembed_bert"])
    tags = [[t.tag_ for t in nlp(text)] for text in TEXTS]
    nlp.to_disk(out)
    return tags


def test_a_pipeline_trained_on_init_tok2vec_weights_runs_after_its_save(tiny_bert_dir, pretrained_bin, tmp_path):
    """The saved model-best/model-last of such a run runs (it refused: 'trained
    on other weights of ctxembed_bert ... have moved since': the tagger had
    recorded the base weights' fingerprint, while it trained on, and the
    pipeline saved, the pretrained ones; `spacy evaluate` and `spacy apply`
    on the output failed the same way)."""
    path, _ = pretrained_bin
    tags = _train_frozen_on_init_tok2vec(tiny_bert_dir, path, tmp_path / "model-last")
    loaded = spacy.load(tmp_path / "model-last")
    assert [[t.tag_ for t in loaded(text)] for text in TEXTS] == tags


def test_a_head_trained_on_init_tok2vec_weights_is_refused_next_to_the_base_weights(
        tiny_bert_dir, pretrained_bin, tmp_path):
    """That tagger, sourced next to a new ctxembed_bert of the base model (the
    config's `name`, which it never trained on), is refused (it was taken, and
    predicted on features it was not trained on: its record held the base
    weights)."""
    path, _ = pretrained_bin
    _train_frozen_on_init_tok2vec(tiny_bert_dir, path, tmp_path / "model-last")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2], trainable=False))
    nlp.add_pipe("tagger", source=spacy.load(tmp_path / "model-last", exclude=["ctxembed_bert"]))
    nlp.get_pipe("ctxembed_bert").initialize()
    with pytest.raises(ValueError, match="trained on"):
        nlp(TEXTS[0])


def test_the_listener_error_names_spacy_debug_model(frozen_dir):
    """`spacy debug model` updates the listening component alone (its hack links
    only spaCy's `tok2vec`/`transformer` upstreams): the error says so, where
    spaCy's own Tok2VecListener under another name fails with a KeyError."""
    nlp = spacy.load(frozen_dir)
    with pytest.raises(ValueError, match=r"`spacy debug model`"):
        nlp.get_pipe("tagger").update(_examples(nlp))


def test_the_training_error_of_a_disabled_upstream_says_it_is_disabled(frozen_dir):
    """`spacy train` with `[nlp] disabled = ["ctxembed_bert"]`: nlp.update runs
    no disabled component, even one in annotating_components, so the error's
    advice to list it there alone would not help; it names the disabling."""
    nlp = spacy.load(frozen_dir, disable=["ctxembed_bert"])
    with pytest.raises(ValueError, match=r"\[nlp\] disabled"):
        nlp.update(_examples(nlp), annotates=["ctxembed_bert"])


def test_benchmark_speed_reads_a_saved_cache_setting(frozen_dir):
    """`spacy benchmark speed` runs the same docs again after its warm-up: a
    pipeline saved from the frozen setup caches at inference (documented in
    docs/training.md), so the benchmark times cache hits. Pinned: the setting
    travels with the pipeline, and the documented override turns it off."""
    assert spacy.load(frozen_dir).get_pipe("ctxembed_bert").cache is not None
    off = spacy.load(frozen_dir, config={"components": {"ctxembed_bert": {"cache_mb": 0}}})
    assert off.get_pipe("ctxembed_bert").cache is None


def test_a_listener_whose_upstream_was_sourced_under_another_name_names_its_component(tiny_bert_dir, tmp_path):
    """`spacy assemble` with `[components.emb] source = ..., component =
    "ctxembed_bert"` and the tagger sourced beside it: the saved pipeline's error
    names the listening component, as the listener's other errors do (it began
    "ContextualListener upstream = 'ctxembed_bert': ...")."""
    source = spacy.blank("en")
    source.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2]))
    source.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2",
                                                "tok2vec": {**LISTENER, "upstream": "ctxembed_bert"}}})
    source.initialize(lambda: _examples(source))
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", source=source, name="emb")
    nlp.add_pipe("tagger", source=source)
    nlp.to_disk(tmp_path / "renamed")
    loaded = spacy.load(tmp_path / "renamed")
    with pytest.raises(ValueError, match=r"^\[tagger\] ContextualListener upstream = 'ctxembed_bert'"):
        loaded(TEXTS[0])


def test_weights_an_initialize_loaded_before_it_failed_are_not_taken_as_a_load_past_it(tiny_bert_dir):
    """An initialize that fails after its encoder loaded (here: the combiner's
    init) leaves the component not loaded; its next use initializes again and
    fails the same way, rather than taking the weights it left as its own."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2]))
    component = nlp.get_pipe("ctxembed_bert")

    def failing(model, X=None, Y=None):
        raise RuntimeError("combiner init failed")

    component.combiner.init = failing
    for _ in range(2):
        with pytest.raises(RuntimeError, match="combiner init failed"):
            nlp(TEXTS[0])
    assert not component.loaded and component.encoder.shims[0].loaded
