"""The analysis on real (tiny) pipelines: every layer is what the pipeline itself gives, for saved
pipelines (whatever their combiner), configs (with a tagger and parser too), ELMo, CoNLL-U sentences, and
each pooling mode on WiC."""
import dataclasses
import math
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import spacy
from spacy.language import Language
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import load_config

from spacy_ctxembed.analysis import (
    AnalysisInputError,
    AnalysisSettings,
    CorpusLayers,
    PipelineSource,
    analyze,
    anisotropy,
    embed_corpus,
    read_corpus,
    read_wic,
    target_vectors,
    write_report,
)
from spacy_ctxembed.analysis.run import _Plan, contextuality, empty_measure_notes
from spacy_ctxembed.analysis.source import (
    all_layer_edits,
    edited_config,
    n_available_layers,
    needed_components,
    pooling_modes,
)
from spacy_ctxembed.analysis.wic import multi_piece_sentences

from .analysis_support import (
    CONLLU_DOCS,
    CORPUS_LINES,
    exact_anisotropy,
    plain_intra_sentence,
    plain_self_similarity,
    saved_pipeline,
    write_conllu,
    write_corpus,
    write_wic,
)
from .conftest import ctx_config, make_nlp
from .elmo_fixture import write_elmo_fixture
from .reference import hf_hidden_states, pool, token_pieces

ATOL = 1e-5


@pytest.fixture(scope="module")
def reference(tiny_bert_dir):
    """The tiny model with every hidden state stored, each layer checked here
    against `transformers` itself (pooled in float64 by tests/reference.py)
    on the corpus the tests analyse: the reference the analysis is held to."""
    from transformers import AutoModel, AutoTokenizer

    nlp = make_nlp(tiny_bert_dir, layers=[0, 1, 2], store_layers=True)
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()
    for line in dict.fromkeys(CORPUS_LINES):
        doc = nlp(line)
        states, offsets = hf_hidden_states(tokenizer, model, line)
        pieces = token_pieces(doc, offsets)
        expected = np.stack([pool(states[layer], pieces, "mean") for layer in (0, 1, 2)])
        np.testing.assert_allclose(doc._.ctx_layers, expected, atol=ATOL, rtol=0)
    return nlp


@pytest.fixture(scope="module")
def wic_dir(tmp_path_factory):
    return write_wic(tmp_path_factory.mktemp("wic"))


def _all_layers(source):
    first = source.load()
    n = n_available_layers(first, "ctxembed_bert")
    return source.load(all_layer_edits(first, "ctxembed_bert", list(range(n))), new_combiner="ctxembed_bert"), n


def test_saved_pipeline_with_scalar_mix_gives_every_layer(tiny_bert_dir, tmp_path_factory, tmp_path, reference):
    source = PipelineSource(model=str(saved_pipeline(tiny_bert_dir, tmp_path_factory)))
    nlp, n = _all_layers(source)
    assert n == 3
    corpus = read_corpus(write_corpus(tmp_path))
    layers = embed_corpus(nlp, "ctxembed_bert", corpus.docs(nlp), [0, 1, 2])
    expected = np.concatenate([doc._.ctx_layers for doc in reference.pipe(CORPUS_LINES)], axis=1)
    np.testing.assert_allclose(layers.layers, expected, atol=ATOL, rtol=0)
    # word ids group tokens by lowercase form; each line is one sentence
    tokens = [t for line in CORPUS_LINES for t in reference.make_doc(line)]
    assert [layers.words[i] for i in layers.word_ids] == [t.lower_ for t in tokens]
    assert layers.sentence_ids.tolist() == [i for i, line in enumerate(CORPUS_LINES)
                                            for _ in reference.make_doc(line)]
    assert layers.context(1) == "I [ran] to the park this morning."


@pytest.mark.parametrize("saved", [False, True], ids=["config", "saved"])
def test_wic_vectors_for_each_pooling_match_a_pipeline_built_with_it(tiny_bert_dir, tmp_path_factory, wic_dir,
                                                                      reference, saved):
    # (A saved pipeline records the pooling it was saved with, and a load holds to it: the
    # analysis changes it on purpose.)
    source = (PipelineSource(model=str(saved_pipeline(tiny_bert_dir, tmp_path_factory))) if saved
              else PipelineSource(config=make_nlp(tiny_bert_dir).config))
    nlp, _ = _all_layers(source)
    data = read_wic(wic_dir)
    _check_targets(target_vectors(nlp, "ctxembed_bert", data), data, reference)
    # a target made of several wordpieces: only its sentence is embedded again for another pooling
    data.sentences = [tuple(w if (w, s[1]) != ("ran", "dog") else "defenestrated" for w in s) for s in data.sentences]
    base = target_vectors(nlp, "ctxembed_bert", data)
    redo = multi_piece_sentences(nlp, "ctxembed_bert", data)
    assert redo.tolist() == [s[1] == "dog" for s in data.sentences]
    # A target past its sentence's end (a WicData not made by read_wic) is refused, not read from the next one.
    past = data.target_of.copy()
    past[0] = len(data.sentences[data.sentence_of[0]])
    with pytest.raises(AnalysisInputError, match="a target index lies outside its sentence"):
        multi_piece_sentences(nlp, "ctxembed_bert", dataclasses.replace(data, target_of=past))
    first = source.load(all_layer_edits(nlp, "ctxembed_bert", [0, 1, 2], "first"), new_combiner="ctxembed_bert")
    got = target_vectors(first, "ctxembed_bert", data, only=redo, base=base)
    _check_targets(got, data, make_nlp(tiny_bert_dir, layers=[0, 1, 2], store_layers=True, pooling="first"))


def _check_targets(targets, data, direct):
    """Each row is the target token's layers when `direct` embeds its sentence."""
    docs = list(direct.pipe(Doc(direct.vocab, words=list(words)) for words in data.sentences))
    for row in range(2 * data.n_pairs):
        expected = docs[data.sentence_of[row]]._.ctx_layers[:, data.target_of[row]]
        np.testing.assert_allclose(targets[row], expected, atol=ATOL)


def test_elmo_pipeline(tmp_path, wic_dir):
    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights),
                                                     layers=[2]))
    reference = spacy.blank("en")
    reference.add_pipe("sentencizer")
    reference.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights),
                                                           store_layers=True))
    reference.initialize()
    corpus = read_corpus(write_corpus(tmp_path))
    result = analyze(corpus, [PipelineSource(config=nlp.config)], AnalysisSettings(n_folds=3, words=["ran"]),
                     wic_train=read_wic(wic_dir))
    pipeline = result["pipelines"][0]
    assert pipeline["factory"] == "ctxembed_elmo" and pipeline["layer_ids"] == [0, 1, 2]
    assert pipeline["configured_layers"] == [2] and list(pipeline["wic"]) == ["none"]  # no pooling in ELMo
    assert pipeline["recommendation"]["pooling"] is None
    assert "pooling" not in pipeline["recommendation"]["config"]
    assert pipeline["explorer"]["ran"]["n_occurrences"] == 18
    # the anisotropy of layer 0 is that of the reference's layer 0, on the same random pairs
    stacked = np.concatenate([doc._.ctx_layers[0] for doc in reference.pipe(CORPUS_LINES)])
    assert pipeline["layers"][0]["anisotropy"] == pytest.approx(anisotropy(stacked, n_pairs=1000, rng=0), abs=1e-6)


def test_from_trf_pipeline_sees_every_layer_of_its_transformer(tiny_bert_dir, tmp_path, reference):
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": False}}})
    nlp.add_pipe("ctxembed_from_trf")
    corpus = read_corpus(write_corpus(tmp_path))
    result = analyze(corpus, [PipelineSource(config=nlp.config)], AnalysisSettings(n_pairs=None))
    pipeline = result["pipelines"][0]
    # told to output its hidden states, the transformer gives all three
    assert pipeline["layer_ids"] == [0, 1, 2] and pipeline["configured_layers"] == [2]
    assert not any("last layer" in note for note in pipeline["notes"])
    docs = list(reference.pipe(CORPUS_LINES))
    for layer in pipeline["layers"]:
        stacked = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
        assert layer["anisotropy"] == pytest.approx(anisotropy(stacked, n_pairs=None), abs=1e-4)


def test_explore_layers_of_a_saved_pipeline_that_gives_only_its_last_layer(tiny_bert_dir, tmp_path):
    """A saved transformer keeps output_hidden_states = false: only layer -1 exists, and
    --explore-layers can name no other, before anything is embedded."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": False}}})
    nlp.add_pipe("ctxembed_from_trf")
    nlp.initialize()
    nlp.to_disk(tmp_path / "trf")
    corpus = read_corpus(write_corpus(tmp_path))
    source = PipelineSource(model=str(tmp_path / "trf"), option="--model")
    with pytest.raises(AnalysisInputError, match=rf"^--explore-layers \[-1, 0\]: the pipeline {tmp_path / 'trf'} "
                                                 r"gives only its last layer \(-1\)$"):
        analyze(corpus, [source], AnalysisSettings(words=["ran"], explore_layers=[-1, 0]))
    # (a layer given twice is used once)
    pipeline = analyze(corpus, [source], AnalysisSettings(words=["ran"], explore_layers=[-1, -1]))["pipelines"][0]
    assert pipeline["layer_ids"] == [-1] and pipeline["explorer"]["ran"]["layers"] == [-1]
    assert pipeline["explorer"]["ran"]["n_occurrences"] == sum(line.split().count("ran") for line in CORPUS_LINES)
    assert any("outputs only its last layer" in note for note in pipeline["notes"])


def _target_without_a_piece(data_file: Path) -> None:
    """Make the target of the first pair's first sentence a soft hyphen, which BERT's normaliser drops."""
    rows = data_file.read_text(encoding="utf8").splitlines()
    lemma, pos, indices, first, second = rows[0].split("\t")
    words = first.split(" ")
    words[int(indices.split("-")[0])] = "\u00ad"
    rows[0] = "\t".join([lemma, pos, indices, " ".join(words), second])
    data_file.write_text("\n".join(rows) + "\n", encoding="utf8")


def test_wic_pairs_whose_target_has_no_vector_are_counted_and_said(tiny_bert_dir, tmp_path):
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny_bert_dir).tokenize("\u00ad") == []  # (no wordpiece: no vector)
    train, evaluation = write_wic(tmp_path / "train"), write_wic(tmp_path / "eval", "dev", held_out=True)
    _target_without_a_piece(train / "train.data.txt")
    _target_without_a_piece(evaluation / "dev.data.txt")
    nlp = make_nlp(tiny_bert_dir, layers=[-1])
    result = analyze(read_corpus(write_corpus(tmp_path)), [PipelineSource(config=nlp.config)],
                     AnalysisSettings(poolings=["mean"]), wic_train=read_wic(train),
                     wic_eval=read_wic(evaluation, "--wic-eval"))
    pipeline = result["pipelines"][0]
    assert pipeline["wic"]["mean"]["pairs_without_vector"] == {"train": 1, "eval": 1}
    assert "WiC: 1 training and 1 evaluation pairs have a target token without a vector in some layer" in " ".join(
        pipeline["notes"])
    # (no --wic-eval pair is a --wic-train pair: no note says any was left out)
    assert result["wic"]["eval"]["pairs"] == 30 and not any("--wic-eval" in n for n in pipeline["notes"])


def test_a_trf_encoder_in_ctxembed_bert_is_analysed_as_from_trf_is(tiny_bert_dir, tmp_path, wic_dir, reference):
    """ctxembed_bert with a TrfEncoder.v2 pools the upstream transformer as ctxembed_from_trf does: the
    transformer is told to output every hidden state (only the last was analysed), and WiC's other pooling
    re-embeds every sentence, having no wordpieces of its own to tell which need it (an IndexError)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": False}}})
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"@architectures": "spacy-ctxembed.TrfEncoder.v2"}}})
    corpus = read_corpus(write_corpus(tmp_path))
    result = analyze(corpus, [PipelineSource(config=nlp.config)],
                     AnalysisSettings(n_pairs=None, n_folds=3, poolings=["first"]), wic_train=read_wic(wic_dir))
    pipeline = result["pipelines"][0]
    assert pipeline["layer_ids"] == [0, 1, 2] and pipeline["configured_layers"] == [2]
    docs = list(reference.pipe(CORPUS_LINES))
    for layer in pipeline["layers"]:
        stacked = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
        assert layer["anisotropy"] == pytest.approx(anisotropy(stacked, n_pairs=None), abs=1e-4)
    # Each pooling's per-layer training accuracy: the best threshold on the reference's cosines.
    data = read_wic(wic_dir)
    for pooling in ("mean", "first"):
        direct = make_nlp(tiny_bert_dir, layers=[0, 1, 2], store_layers=True, pooling=pooling)
        sentences = list(direct.pipe(Doc(direct.vocab, words=list(words)) for words in data.sentences))
        vectors = np.stack([sentences[s]._.ctx_layers[:, t] for s, t in zip(data.sentence_of, data.target_of)])
        u, v = vectors[:data.n_pairs].astype(np.float64), vectors[data.n_pairs:].astype(np.float64)
        cosines = (u * v).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
        for layer, scores in zip(range(3), pipeline["wic"][pooling]["layers"]):
            best = max(np.mean((cosines[:, layer] >= t) == data.labels) for t in [*cosines[:, layer], np.inf])
            assert scores["train_accuracy"] == pytest.approx(best)


def _tagger_config(tiny_bert_dir, path):
    """blank English + ctxembed_bert + a tagger listening to it (ContextualListener.v2), as a config file."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2]))
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
                    "upstream": "ctxembed_bert"}}})
    nlp.config.to_disk(path)
    return path


def _ud_bert_config(tiny_bert_dir, path):
    """The project's configs/ud-bert.cfg (ctxembed_bert, tagger, parser) on the tiny model."""
    config = load_config(Path(__file__).parents[1] / "configs" / "ud-bert.cfg", overrides={
        "paths.bert_model": str(tiny_bert_dir), "components.ctxembed_bert.model.encoder.layers": [0, 1, 2]})
    config.to_disk(path)
    return path


@pytest.mark.parametrize("write_config", [_tagger_config, _ud_bert_config])
def test_config_with_a_tagger_is_analysed(tiny_bert_dir, tmp_path, wic_dir, reference, write_config):
    source = PipelineSource.from_config_file(write_config(tiny_bert_dir, tmp_path / "tagger.cfg"))
    corpus = read_corpus(write_corpus(tmp_path))
    # a tagger cannot be initialized without examples (E143): only the embedder is
    result = analyze(corpus, [source], AnalysisSettings(n_pairs=None, n_folds=3, poolings=["mean", "mean"]),
                     wic_train=read_wic(wic_dir))
    assert result["settings"]["poolings"] == ["mean"]  # (given twice, run once: said once)
    pipeline = result["pipelines"][0]
    assert pipeline["component"] == "ctxembed_bert" and pipeline["layer_ids"] == [0, 1, 2]
    assert pipeline["configured_layers"] == [0, 1, 2] and pipeline["recommendation"] is not None
    docs = list(reference.pipe(CORPUS_LINES))
    for layer in pipeline["layers"]:
        stacked = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
        assert layer["anisotropy"] == pytest.approx(exact_anisotropy(stacked), abs=1e-5)


def test_conllu_sentences_reach_intra_sentence_similarity(tiny_bert_dir, tmp_path, reference):
    corpus = read_corpus(write_conllu(tmp_path))
    source = PipelineSource(config=make_nlp(tiny_bert_dir).config)
    pipeline = analyze(corpus, [source], AnalysisSettings(n_pairs=None, min_count=2))["pipelines"][0]
    n_sentences = sum(len(doc) for doc in CONLLU_DOCS)
    assert (pipeline["corpus_docs"], pipeline["corpus_sentences"]) == (2, n_sentences)
    # the reference embeds the same docs, built here; the sentences are the file's
    docs, sentence_ids = [], []
    for number, doc in enumerate(CONLLU_DOCS):
        words = [w for sentence in doc for w in sentence]
        spaces = [i + 2 != len(sentence) for sentence in doc for i in range(len(sentence))]
        spaces[-1] = False
        docs.append(reference(Doc(reference.vocab, words=words, spaces=spaces)))
        first = sum(len(d) for d in CONLLU_DOCS[:number])
        sentence_ids += [first + s for s, sentence in enumerate(doc) for _ in sentence]
    assert docs[0].text.startswith("I ran to the park. The dog ran")
    doc_ids = [d for d, doc in enumerate(docs) for _ in doc]
    for layer in pipeline["layers"]:
        stacked = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
        by_sentence = plain_intra_sentence(stacked, sentence_ids)
        assert layer["intra_sentence_similarity"] == pytest.approx(by_sentence, abs=1e-5)
        assert abs(by_sentence - plain_intra_sentence(stacked, doc_ids)) > 1e-3  # sentences, not docs, count


class _RaisingListeners:
    """A component whose `listening_components` raises, as a property reading
    state it does not have yet would. (An AttributeError: spaCy's own
    `isinstance(proc, ListenedToComponent)` in `add_pipe` lets only that one
    through, and whether it gets there depends on the hash seed's order of the
    protocol's attributes, so another error made this test fail at random.)"""

    def __call__(self, doc):
        return doc

    @property
    def listening_components(self):
        raise AttributeError("listener_map: not linked")


Language.factory("test_raising_listeners", func=lambda nlp, name: _RaisingListeners())


def _senter_pipeline(tiny_bert_dir):
    """tok2vec, a senter listening to it (briefly trained on CORPUS_LINES's sentences), then ctxembed_bert."""
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("tok2vec")
    nlp.add_pipe("senter", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy.Tok2VecListener.v1", "width": 96, "upstream": "*"}}})
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[0, 1, 2]))
    examples = []
    for first in range(0, len(CORPUS_LINES) - 2, 2):
        sentences = [nlp.make_doc(line) for line in CORPUS_LINES[first : first + 3]]
        words = [t.text for doc in sentences for t in doc]
        starts = [t.i == 0 for doc in sentences for t in doc]
        examples.append(Example(nlp.make_doc(" ".join(CORPUS_LINES[first : first + 3])),
                                Doc(nlp.vocab, words=words, sent_starts=starts)))
    optimizer = nlp.initialize(lambda: examples)
    with nlp.select_pipes(enable=["tok2vec", "senter"]):
        for _ in range(30):
            nlp.update(examples, sgd=optimizer)
    return nlp


def test_a_saved_pipeline_whose_tagger_listens_to_the_component_is_read_with_other_poolings(tiny_bert_dir,
                                                                                            tmp_path):
    """The component's saved cfg holds its pooling to the one the tagger was trained on; the analysis
    changes the pooling on purpose and never runs the tagger, so it reads the weights without that cfg:
    the layers are those of a pipeline built with the pooling."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[2]))
    nlp.add_pipe("tagger", config={"model": {
        "@architectures": "spacy.Tagger.v2",
        "tok2vec": {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
                    "upstream": "ctxembed_bert"}}})
    tagged = Doc(nlp.vocab, words=["I", "ran", "home"], tags=["PRP", "VBD", "NN"])
    nlp.initialize(lambda: [Example(nlp.make_doc("I ran home"), tagged)])
    nlp.to_disk(tmp_path / "tagged")
    source = PipelineSource(model=str(tmp_path / "tagged"))
    edits = all_layer_edits(source.load(), "ctxembed_bert", [0, 1, 2], "max")
    edited = source.load(edits, new_combiner="ctxembed_bert")
    text = "I ran to the park"
    layers = edited.get_pipe("ctxembed_bert")(edited.make_doc(text))._.ctx_layers
    expected = make_nlp(tiny_bert_dir, layers=[0, 1, 2], pooling="max", store_layers=True)(text)._.ctx_layers
    np.testing.assert_allclose(layers, expected, atol=ATOL, rtol=0)


def test_a_senter_reading_a_shared_tok2vec_runs_with_it(tiny_bert_dir, tmp_path, reference):
    """The senter's boundaries are the ones the whole pipeline sets: its tok2vec runs too (without it the
    listener gives zero features, and the senter boundaries from nothing)."""
    nlp = _senter_pipeline(tiny_bert_dir)
    nlp.to_disk(tmp_path / "senter")
    lines = [" ".join(CORPUS_LINES[i : i + 2]) for i in range(0, len(CORPUS_LINES) - 1, 2)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    sentences = [s for doc in nlp.pipe(lines) for s in doc.sents]
    assert len(lines) < len(sentences) < sum(len(nlp.make_doc(line)) for line in lines)  # (the senter has learnt)
    assert needed_components(nlp, "ctxembed_bert") == ["tok2vec", "senter", "ctxembed_bert"]

    nlp.add_pipe("sentencizer", first=True)
    nlp.add_pipe("test_raising_listeners", first=True)  # another library's: it adds nothing to run
    assert needed_components(nlp, "ctxembed_bert") == ["sentencizer", "tok2vec", "senter", "ctxembed_bert"]
    pipeline = analyze(read_corpus(tmp_path / "corpus.txt"), [PipelineSource(model=str(tmp_path / "senter"))],
                       AnalysisSettings(n_pairs=None))["pipelines"][0]
    assert pipeline["corpus_sentences"] == len(sentences)
    docs = list(reference.pipe(lines))
    sentence_ids = [s for s, sentence in enumerate(sentences) for _ in sentence]
    for layer in pipeline["layers"]:
        stacked = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
        assert layer["intra_sentence_similarity"] == pytest.approx(plain_intra_sentence(stacked, sentence_ids),
                                                                   abs=1e-5)


def test_a_senter_a_config_builds_untrained_is_left_out(tiny_bert_dir):
    """`--config` with a senter it does not source: initialized, the senter set
    the sentences from random weights, without a word. It is left out, by name;
    a sentencizer (nothing to train) still runs."""
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("senter")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    source = PipelineSource(config=nlp.config, config_path=Path("senter.cfg"), option="--config")
    with pytest.warns(UserWarning, match=r"^--config senter.cfg: 'senter': built untrained from the config .* so "
                                         r"left out: .* give the trained pipeline with --model instead"):
        built = source.load()
    assert built.pipe_names == ["sentencizer", "ctxembed_bert"] and built.disabled == ["senter"]
    doc = built("One thing here. And another one")
    assert [s.text for s in doc.sents] == ["One thing here.", "And another one"]
    with warnings.catch_warnings():  # (told once: an analysis loads a pipeline more than once)
        warnings.simplefilter("error")
        assert source.load().disabled == ["senter"]


def test_an_untrained_tagger_after_the_component_is_left_as_it_is(tiny_bert_dir):
    """Only what the analysed component needs is left out when untrained: a tagger after it, which the
    analysis never runs, stays in the pipeline (uninitialized), without a warning."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir))
    nlp.add_pipe("tagger")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = PipelineSource(config=nlp.config, config_path=Path("tagger.cfg"), option="--config").load()
    assert built.pipe_names == ["ctxembed_bert", "tagger"] and built.disabled == []


def test_v1_config_without_layers_or_pooling_takes_v1_defaults(tiny_bert_dir, tmp_path, wic_dir, reference):
    """A v1 config that leaves `layers` and `pooling` out (spaCy fills them in as null) is analysed with
    v1's defaults, as the component itself runs it: the top layer, mean pooling."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config={"model": {"@architectures": "spacy-ctxembed.BertEmbedder.v1",
                                                    "name": str(tiny_bert_dir)}})
    assert nlp.config["components"]["ctxembed_bert"]["layers"] is None
    assert nlp.config["components"]["ctxembed_bert"]["pooling"] is None
    result = analyze(read_corpus(write_corpus(tmp_path)), [PipelineSource(config=nlp.config)],
                     AnalysisSettings(n_pairs=None, n_folds=3), wic_train=read_wic(wic_dir))
    pipeline = result["pipelines"][0]
    assert pipeline["configured_layers"] == [2] and list(pipeline["wic"])[0] == "mean"
    docs = list(reference.pipe(CORPUS_LINES))
    for layer in pipeline["layers"]:
        stacked = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
        assert layer["anisotropy"] == pytest.approx(exact_anisotropy(stacked), abs=1e-5)


def test_each_pipeline_has_its_own_component(tiny_bert_dir, tmp_path):
    """--component names the main pipeline's component, --compare-component the other's; a pipeline
    that names none analyses its only one."""
    two = spacy.blank("en")
    two.add_pipe("ctxembed_bert", name="top", config=ctx_config(name=tiny_bert_dir, primary=False))
    two.add_pipe("ctxembed_bert", name="low", config=ctx_config(name=tiny_bert_dir, layers=[1]))
    one = spacy.blank("en")
    one.add_pipe("ctxembed_bert", name="only", config=ctx_config(name=tiny_bert_dir, layers=[0]))
    corpus = read_corpus(write_corpus(tmp_path))
    settings = AnalysisSettings(n_pairs=None)
    sources = [PipelineSource(config=two.config, component="low"), PipelineSource(config=one.config)]
    pipelines = analyze(corpus, sources, settings)["pipelines"]
    assert [(p["component"], p["configured_layers"]) for p in pipelines] == [("low", [1]), ("only", [0])]
    assert [p["source"]["component"] for p in pipelines] == ["low", None]  # as asked for
    other = PipelineSource(config=two.config, component="nope", component_option="--compare-component")
    with pytest.raises(AnalysisInputError, match=r"^--compare-component 'nope': the pipeline .* has no such"):
        analyze(corpus, [PipelineSource(config=one.config), other], settings)
    with pytest.raises(AnalysisInputError, match=r"several contextual embedders \['top', 'low'\]: choose one "
                                                 r"with --compare-component"):
        analyze(corpus, [PipelineSource(config=one.config),
                         PipelineSource(config=two.config, component_option="--compare-component")], settings)


def _count_loads(monkeypatch):
    loads = []
    original = PipelineSource.load

    def counting(self, *args, **kwargs):
        loads.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PipelineSource, "load", counting)
    return loads


def test_pooling_modes_load_the_model_only_when_a_target_needs_it(tiny_bert_dir, tmp_path, monkeypatch):
    corpus = read_corpus(write_corpus(tmp_path))
    source = PipelineSource(config=make_nlp(tiny_bert_dir).config)
    settings = AnalysisSettings(n_folds=3)  # every pooling mode: mean, first, last, max
    # every target ("ran") is one wordpiece: the pooling changes nothing, no mode is loaded again
    loads = _count_loads(monkeypatch)
    single = analyze(corpus, [source], settings, wic_train=read_wic(write_wic(tmp_path / "single")))
    assert len(loads) == 2  # as configured (the plan), then with every layer stored
    scores = single["pipelines"][0]["wic"]
    assert list(scores) == ["mean", "first", "last", "max"]
    assert all(scores[mode]["layers"] == scores["mean"]["layers"] for mode in scores)
    # a target of several wordpieces: each other mode is loaded once
    wic = write_wic(tmp_path / "multi")
    data = (wic / "train.data.txt").read_text()
    (wic / "train.data.txt").write_text(data.replace("The dog ran across", "The dog defenestrated across"))
    loads.clear()
    analyze(corpus, [source], settings, wic_train=read_wic(wic))
    assert len(loads) == 2 + 3


def test_each_pooling_mode_is_tried_once(tiny_bert_dir):
    nlp = spacy.blank("en")  # (not initialized: the modes come from the config)
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, pooling="first"))
    # the configured mode first, then the others in the order given, each once
    assert pooling_modes(nlp, "ctxembed_bert", ["max", "first", "max", "mean", "first"]) == ["first", "max", "mean"]
    assert pooling_modes(nlp, "ctxembed_bert", ["mean", "mean"]) == ["first", "mean"]


def test_a_compared_config_file_is_read_as_a_config_whatever_its_suffix(tmp_path):
    """--compare takes a saved pipeline (a directory or a package name) or a config: any file is a config."""
    path = tmp_path / "pipeline.conf"
    spacy.blank("de").config.to_disk(path)
    source = PipelineSource.from_argument(str(path))
    assert source.model is None and source.config_path == path and source.option == "--compare"
    assert source.config["nlp"]["lang"] == "de"


def test_a_source_is_labelled_by_what_it_was_given():
    assert PipelineSource(model="en_core_web_sm").describe() == {
        "label": "en_core_web_sm", "model": "en_core_web_sm", "config": None, "component": None}
    path = Path("configs") / "mine.cfg"
    assert PipelineSource(config=spacy.blank("en").config, config_path=path, component="emb").describe() == {
        "label": str(path), "model": None, "config": str(path), "component": "emb"}
    assert PipelineSource().label == "all-MiniLM-L6-v2 (embedded default)"


def test_edits_leave_the_sources_own_config_as_it_was(tiny_bert_dir):
    """The analysis edits a copy: the source's config still builds the pipeline as configured (a second
    analysis of the same source reads its configured layers from it)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir, layers=[2], combine="scalar_mix"))
    source = PipelineSource(config=nlp.config)
    before = source.config.to_str()
    edited = edited_config(source.config, all_layer_edits(nlp, "ctxembed_bert", [0, 1, 2], "max"))
    block = edited["components"]["ctxembed_bert"]
    assert block["model"]["encoder"]["layers"] == [0, 1, 2] and block["model"]["encoder"]["pooling"] == "max"
    assert block["model"]["combiner"] == {"@layers": "spacy-ctxembed.MeanLayers.v1"} and block["store_layers"]
    assert source.config.to_str() == before
    assert source.config["components"]["ctxembed_bert"]["model"]["encoder"]["layers"] == [2]


def test_components_after_the_analysed_one_are_not_run():
    """Upstream is before the component: sentence boundaries set after it are not run for the analysis,
    nor is anything else after it."""
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer", name="early")
    nlp.add_pipe("ctxembed_bert")
    nlp.add_pipe("sentencizer", name="late")
    nlp.add_pipe("senter")
    assert needed_components(nlp, "ctxembed_bert") == ["early", "ctxembed_bert"]


def test_words_that_match_alike_are_explored_once(tiny_bert_dir, tmp_path, monkeypatch):
    import spacy_ctxembed.analysis.run as run

    explored = []
    original = run.explore_word
    monkeypatch.setattr(run, "explore_word", lambda corpus, units, word, *args, **kwargs: (
        explored.append(word), original(corpus, units, word, *args, **kwargs))[1])
    corpus = read_corpus(write_corpus(tmp_path))
    source = PipelineSource(config=make_nlp(tiny_bert_dir).config)
    words = ["The", "the", "ran", "nope", "RAN", "ran"]
    result = analyze(corpus, [source], AnalysisSettings(words=words))
    # lowercase, as the explorer matches them, each once, in the order first given
    assert explored == result["settings"]["words"] == ["the", "ran", "nope"]
    pipeline = result["pipelines"][0]
    assert list(pipeline["explorer"]) == ["the", "ran", "nope"]
    counts = Counter(word.lower() for line in CORPUS_LINES for word in line.split())  # ("the"/"ran" never end one)
    assert [pipeline["explorer"][word]["n_occurrences"] for word in ("the", "ran")] == [counts["the"], counts["ran"]]
    assert "--word 'The', 'the': one word as the explorer matches words (lowercase), explored once as 'the'" \
        in pipeline["notes"]
    assert "--word 'ran', 'RAN', 'ran': one word as the explorer matches words (lowercase), explored once as 'ran'" \
        in pipeline["notes"]
    written = write_report(result, tmp_path / "out")
    assert sorted(p.name for p in written if p.name.startswith("explorer")) == [
        "explorer-1-1-the.png", "explorer-1-2-ran.png"]  # ("nope" does not occur: no plot)


def test_a_word_the_pipeline_splits_is_said_to_be_split(tiny_bert_dir, tmp_path):
    """"don't" is two tokens to spaCy: its note said only that it does not occur."""
    corpus = read_corpus(write_corpus(tmp_path))
    source = PipelineSource(config=make_nlp(tiny_bert_dir).config)
    explorer = analyze(corpus, [source], AnalysisSettings(words=["don't", "nope", "Aug."]))["pipelines"][0]["explorer"]
    assert explorer["don't"]["note"] == ("\"don't\" does not occur in the corpus (with a vector); it is not one "
                                         "token: the pipeline's tokenizer splits it into 'do', \"n't\" (give one "
                                         "of them)")
    assert explorer["nope"]["note"] == "'nope' does not occur in the corpus (with a vector)"
    # spaCy keeps "Aug." whole (a tokenizer exception, as written); lowercased it would split
    assert [t.text for t in spacy.blank("en").make_doc("aug.")] == ["aug", "."]
    assert explorer["aug."]["note"] == "'aug.' does not occur in the corpus (with a vector)"


def test_explore_layers_take_negative_indices_and_are_checked_before_embedding(tiny_bert_dir, tmp_path,
                                                                               monkeypatch):
    corpus = read_corpus(write_corpus(tmp_path))
    source = PipelineSource(config=make_nlp(tiny_bert_dir).config)
    explored = analyze(corpus, [source], AnalysisSettings(words=["ran"], explore_layers=[-1, 0, 2]))
    assert explored["pipelines"][0]["explorer"]["ran"]["layers"] == [2, 0]  # model indices, each once
    import spacy_ctxembed.analysis.run as run

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before the settings were checked")

    monkeypatch.setattr(run, "embed_corpus", no_embedding)
    with pytest.raises(AnalysisInputError, match=r"--explore-layers \[3\]: index 3 is out of range: the model "
                                                 r"has 3 layers, counting its embedding \(token\) layer as 0 "
                                                 r"\(valid: -3 \.\. 2\)"):
        analyze(corpus, [source, source], AnalysisSettings(words=["ran"], explore_layers=[3]))


def test_tokens_without_a_vector_are_counted_and_the_explorer_names_its_pooling(tiny_bert_dir, tmp_path):
    """A whitespace token (two spaces) and a zero-width space get no wordpiece,
    so no vector: the contextuality measures leave them out, and say how many."""
    path = tmp_path / "corpus.txt"
    path.write_text("I ran  to the park this morning.\nWe ran \u200b some tests on the data.\n", encoding="utf8")
    nlp = make_nlp(tiny_bert_dir, layers=[0, 1, 2], store_layers=True)
    expected = sum(int((~doc._.ctx_layers[0].any(axis=1)).sum()) for doc in nlp.pipe(path.read_text().splitlines()))
    assert expected == 2
    source = PipelineSource(config=make_nlp(tiny_bert_dir).config)
    result = analyze(read_corpus(path), [source], AnalysisSettings(words=["ran"]))["pipelines"][0]
    assert [layer["tokens_without_vector"] for layer in result["layers"]] == [expected] * len(result["layers"])
    assert any(f"up to {expected} of the corpus's" in note for note in result["notes"])
    assert result["explorer"]["ran"]["pooling"] == result["pooling"] == "mean"
    # no word occurs 5 times (--min-count's default) in these two lines: the nulls are explained
    counts = Counter(t.lower_ for doc in nlp.pipe(path.read_text().splitlines()) for t in doc)
    assert max(counts.values()) < 5
    assert all(math.isnan(layer["self_similarity"]) for layer in result["layers"])
    assert "every layer: no word has --min-count 5 occurrences with a vector: self-similarity and max " \
           "explainable variance are null" in result["notes"]


def test_empty_measures_get_a_note_naming_their_layers():
    """Layer 0: one token per sentence, so no intra-sentence similarity; layer 1: a single token with a
    vector, so nothing at all. The measures that can be computed match the plain references."""
    rng = np.random.default_rng(0)
    words = ["a", "b", "a", "b", "a", "b"]
    layers = rng.normal(size=(2, 6, 4)).astype(np.float32)
    layers[1, 1:] = 0
    n = len(words)
    corpus = CorpusLayers(
        layers=layers, layer_ids=[0, 1], word_ids=np.array([0, 1] * 3), words=["a", "b"],
        sentence_ids=np.arange(n), doc_ids=np.arange(n), starts=np.zeros(n, np.int64), ends=np.ones(n, np.int64),
        texts=["x"] * n)
    report = contextuality(corpus, AnalysisSettings(min_count=2, n_pairs=None))
    assert report[0]["anisotropy"] == pytest.approx(exact_anisotropy(layers[0]), abs=1e-6)
    assert report[0]["self_similarity"] == pytest.approx(plain_self_similarity(layers[0], words, 2), abs=1e-6)
    assert math.isnan(report[0]["intra_sentence_similarity"])
    assert all(math.isnan(report[1][key]) for key in ("anisotropy", "self_similarity", "intra_sentence_similarity",
                                                      "max_explainable_variance"))
    assert empty_measure_notes(report, 2) == [
        "layers [1]: fewer than two tokens have a vector: anisotropy and every adjusted value are null",
        "layers [1]: no word has --min-count 2 occurrences with a vector: self-similarity and max explainable "
        "variance are null",
        "every layer: no sentence has two tokens with a vector: intra-sentence similarity is null",
    ]


def test_summary_picks_the_best_wic_layer_by_cross_validation():
    """With --wic-eval, `accuracy` is held out: the summary's "best layer" must
    not be chosen by it."""
    from spacy_ctxembed.analysis.report import _layer_table, summary

    layers = [{"layer": 0, "accuracy": 0.9, "cv_accuracy": 0.55}, {"layer": 1, "accuracy": 0.6, "cv_accuracy": 0.7}]
    mix = {"accuracy": 0.6, "weights": [0.5, 0.5]}
    pipeline = {"label": "p", "component": "c", "layer_ids": [0, 1], "notes": [], "recommendation": None,
                "pooling": "mean",
                "layers": [{"layer": i, "anisotropy": 0.1, "self_similarity": 0.1, "self_similarity_adjusted": 0.0,
                            "intra_sentence_similarity": 0.1, "intra_sentence_similarity_adjusted": 0.0,
                            "max_explainable_variance": 0.1, "max_explainable_variance_adjusted": 0.0,
                            "wic_accuracy": layers[i]["accuracy"]} for i in (0, 1)],
                "wic": {"mean": {"layers": layers, "mean_of_layers": {"accuracy": 0.6}, "scalar_mix": mix}}}
    baseline = {"pairs": "train", "majority_label": "F", "majority_rate": 0.55}
    text = summary({"pipelines": [pipeline], "wic": {"majority_baseline": baseline}})
    assert "best layer (by cross-validation) 1 0.600, mean" in text
    # The per-layer WiC column is one pooling's of several: its header says which.
    assert "MEV    adj  WiC (mean pooling)\n" in text
    assert "<th>WiC (mean pooling)</th>" in _layer_table(pipeline)
    assert "<th>WiC</th>" in _layer_table({**pipeline, "pooling": None})  # (ELMo: no pooling)
    assert "The majority class (always F) scores 0.550 on the --wic-train pairs" in text
    # Training pairs 75% F: no layer's cross-validated rule beats answering F, which the line says.
    text = summary({"pipelines": [pipeline], "wic": {"majority_baseline": baseline, "train": {"majority_rate": 0.75}}})
    assert "best layer (by cross-validation) 1 0.600 (no layer beats the majority class in cross-validation)" in text


def test_report_numbers_that_are_not_finite_show_as_a_dash():
    """A measure with nothing to average (None in the json, NaN or inf in a
    computation) shows as "–" in the report's tables, never as "nan"."""
    from spacy_ctxembed.analysis.report import _table

    table = _table(["a", "b", "c", "d"], [[None, float("nan"), float("inf"), 0.12345]])
    assert table.endswith("<tr><td>–</td><td>–</td><td>–</td><td>0.123</td></tr></table>")


def test_long_labels_are_cut_to_48_characters_keeping_their_end():
    """A pipeline's label (its path) in the report's headings: at most 48
    characters, the end kept (where paths differ), after an ellipsis."""
    from spacy_ctxembed.analysis.report import _short

    label = "/very/long/path/to/some/place/where/the/pipelines/live/model-best"
    assert _short(label) == "…" + label[-47:] and len(_short(label)) == 48
    assert _short(label[-48:]) == label[-48:]


def test_summary_says_no_layer_beats_the_majority_class_on_a_tie():
    """A best layer whose cross-validated accuracy only equals the training
    pairs' majority rate does not beat answering the majority class."""
    from spacy_ctxembed.analysis.report import summary

    layers = [{"layer": 0, "accuracy": 0.6, "cv_accuracy": 0.7}]
    pipeline = {"label": "p", "component": "c", "layer_ids": [0], "notes": [], "recommendation": None,
                "pooling": "first",
                "layers": [{"layer": 0, "anisotropy": 0.1, "self_similarity": 0.1, "self_similarity_adjusted": 0.0,
                            "intra_sentence_similarity": 0.1, "intra_sentence_similarity_adjusted": 0.0,
                            "max_explainable_variance": 0.1, "max_explainable_variance_adjusted": 0.0,
                            "wic_accuracy": 0.6}],
                "wic": {"mean": {"layers": layers, "mean_of_layers": {"accuracy": 0.6},
                                 "scalar_mix": {"accuracy": 0.6, "weights": [1.0]}}}}
    baseline = {"pairs": "train", "majority_label": "F", "majority_rate": 0.7}
    text = summary({"pipelines": [pipeline], "wic": {"majority_baseline": baseline, "train": {"majority_rate": 0.7}}})
    assert "best layer (by cross-validation) 0 0.600 (no layer beats the majority class in cross-validation)" in text


def test_analysis_json_has_no_infinity_either():
    """JSON has neither NaN nor infinity: jsonable turns both (Python floats
    and NumPy scalars, at any depth) into null, so analysis.json, dumped with
    allow_nan=False, can always be written. Only the HTML tables were tried
    with infinity before."""
    import json

    from spacy_ctxembed.analysis.report import jsonable

    value = {"a": float("inf"), 1: [np.float64(-np.inf), np.float32(np.nan), (np.int64(3), 0.5)], "s": "inf"}
    got = jsonable(value)
    assert got == {"a": None, "1": [None, None, [3, 0.5]], "s": "inf"}
    assert json.loads(json.dumps(got, allow_nan=False)) == got


@pytest.mark.parametrize("setting, value, option", [("words", "ran", "--word"), ("poolings", "first", "--pooling")])
def test_a_string_for_a_list_setting_is_refused(setting, value, option):
    """AnalysisSettings(words="ran") explored "r", "a" and "n" without a word of warning (a string is a
    sequence of letters); poolings="first" said "--pooling 'f': expected one of ...". Each is refused by name."""
    with pytest.raises(AnalysisInputError, match=rf"^{option} '{value}': AnalysisSettings\.{setting} takes a list"):
        AnalysisSettings(**{setting: value}).check()
    AnalysisSettings(**{setting: [value]}).check()


def test_poolings_an_elmo_pipeline_cannot_try_are_said_not_to_be_tried(tmp_path):
    """--pooling with an ELMo pipeline: ELMo has no pooling modes, so none is tried; before, nothing said so
    while analysis.json's settings listed them as if they had been."""
    from spacy_ctxembed.analysis.run import _plan

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights)))
    plan = _plan(PipelineSource(config=nlp.config), AnalysisSettings(poolings=["first"]))
    assert plan.modes == [None]
    assert plan.notes == ["--pooling ['first']: not tried on this pipeline: ctxembed_elmo has no pooling modes "
                          "(one vector a token)"]
    assert _plan(PipelineSource(config=nlp.config), AnalysisSettings()).notes == []


#: A plan for `analyze` with the model-reading `_plan` replaced (its component set per source).
_STUB_PLAN = _Plan(name="", factory="ctxembed_bert", layer_ids=[0], configured_layers=[0], explore_layers=None,
                   modes=["mean"], block={}, python_block={}, edits=[], notes=[], max_length=10**6)


def test_pipelines_that_share_a_label_are_told_apart(tmp_path, monkeypatch):
    """The label names a pipeline in the plots' legends, the report's tables and the summary. A loaded Config
    was labelled "all-MiniLM-L6-v2 (embedded default)" whatever it held, and two components of one pipeline
    (--model X --compare X --compare-component other) had one label: two curves and tables of one name."""
    import spacy_ctxembed.analysis.run as run

    config = spacy.blank("en").config
    assert PipelineSource(config=config).label == "a config given in Python"

    def plan(source, settings):
        return dataclasses.replace(_STUB_PLAN, name=source.component)

    monkeypatch.setattr(run, "_plan", plan)
    monkeypatch.setattr(run, "analyze_pipeline", lambda source, *args, plan, **kwargs: {
        "label": source.label, "component": plan.name, "source": source.describe()})
    sources = [PipelineSource(model="saved", component="top"), PipelineSource(model="saved", component="low"),
               PipelineSource(model="other")]
    pipelines = analyze(read_corpus(write_corpus(tmp_path)), sources, AnalysisSettings())["pipelines"]
    assert [p["label"] for p in pipelines] == ["saved [pipeline 1, component top]",
                                               "saved [pipeline 2, component low]", "other"]
    assert [p["source"]["label"] for p in pipelines] == ["saved", "saved", "other"]  # as given


def test_analyze_refuses_an_empty_list_of_pipelines(tmp_path):
    """`analyze(corpus, [], ...)` returned no pipelines, which write_report wrote as an empty report."""
    with pytest.raises(AnalysisInputError, match=r"^no pipeline to analyse: `sources` is empty"):
        analyze(read_corpus(write_corpus(tmp_path)), [], AnalysisSettings())


def test_embed_corpus_refuses_a_component_that_stores_no_layers_and_a_corpus_without_tokens(tiny_bert_dir):
    """(`analyze` makes the component store its layers; a caller of embed_corpus gives the pipeline.)"""
    nlp = make_nlp(tiny_bert_dir, layers=[-1], store_layers=False)
    with pytest.raises(ValueError, match=r"^\[ctxembed_bert\] stored no layers on the doc: it must run with "
                                         r"store_layers = true$"):
        embed_corpus(nlp, "ctxembed_bert", [nlp.make_doc("It ran.")], [-1])
    nlp = make_nlp(tiny_bert_dir, layers=[-1], store_layers=True)
    with pytest.raises(ValueError, match=r"^the corpus gave no tokens to analyse$"):
        embed_corpus(nlp, "ctxembed_bert", [nlp.make_doc(""), nlp.make_doc("")], [-1])


def test_target_vectors_of_no_chosen_sentence_and_no_base_are_refused(tiny_bert_dir, wic_dir):
    nlp = make_nlp(tiny_bert_dir, layers=[-1], store_layers=True)
    data = read_wic(wic_dir)
    with pytest.raises(ValueError, match=r"^no WiC sentence was embedded$"):
        target_vectors(nlp, "ctxembed_bert", data, only=np.zeros(len(data.sentences), dtype=bool))
