"""Training a listening component with `spacy train` on docs embedded once
(`embed`'s output of a gold `.spacy` DocBin), with no embedder in the
pipeline: `spacy-ctxembed.EmbeddedCorpus.v1`.

spaCy's `spacy.Corpus.v1` gives each example a new predicted doc without the
reference's user data, so the listener found no outputs on the docs it is
initialised and trained on, and `spacy train` stopped at initialize (found by
a review helper). The reader gives the predicted docs the stored outputs:
checked against `transformers` itself, and end to end against the same
training with the embedder frozen and annotating.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import Doc, DocBin
from spacy.training import Example

from spacy_ctxembed.embedded import EmbeddedCorpus

from .conftest import SHARED_DATA, make_nlp
from .reference import hf_hidden_states, pool, token_pieces
from .test_cli_support import invoke

WORDS = ["I", "ran", "to", "the", "park", ".", "She", "ran", "some", "tests", "."]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN", "PUNCT", "PRON", "VERB", "DET", "NOUN", "PUNCT"]
READER = "spacy-ctxembed.EmbeddedCorpus.v1"
TAGGER = {"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
    "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16, "upstream": "ctxembed_bert"}}}


def _gold(vocab):
    return Doc(vocab, words=WORDS, spaces=[nxt not in (".", "") for nxt in WORDS[1:] + [""]], tags=TAGS,
               sent_starts=[i in (0, 6) for i in range(len(WORDS))])


@pytest.fixture
def embedded(tmp_path, tiny_bert_dir):
    """(embed's output of a gold DocBin of one two-sentence doc, the saved embedder)."""
    pipeline = tmp_path / "embedder"
    make_nlp(tiny_bert_dir, layers=[1, 2], store_layers=True).to_disk(pipeline)
    DocBin(docs=[_gold(spacy.blank("en").vocab)]).to_disk(tmp_path / "gold.spacy")
    result = invoke("embed", tmp_path / "gold.spacy", "-o", tmp_path / "out", "-m", pipeline)
    assert result.exit_code == 0, result.output
    return tmp_path / "out", pipeline


def _want(tiny_bert_dir, hf_reference):
    """The gold doc's rows as embedded: the mean of layers 1 and 2 of `transformers` on the whole doc."""
    from transformers import AutoModel

    tokenizer = hf_reference[0]
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    gold = _gold(spacy.blank("en").vocab)
    states, offsets = hf_hidden_states(tokenizer, model, gold.text)
    pieces = token_pieces(gold, offsets)
    return (pool(states[1], pieces, "mean") + pool(states[2], pieces, "mean")) / 2


@pytest.mark.parametrize("settings", [{}, {"gold_preproc": True}, {"max_length": 8}])
def test_the_reader_s_predicted_docs_hold_the_stored_outputs(embedded, tiny_bert_dir, hf_reference, settings):
    """Whole docs and sentence cuts (gold_preproc, max_length): the predicted
    docs read the rows the doc was embedded with, the mean of layers 1 and 2
    of `transformers` on the whole doc."""
    want = _want(tiny_bert_dir, hf_reference)
    nlp = spacy.blank("en")
    examples = list(spacy.registry.readers.get(READER)(embedded[0], **settings)(nlp))
    assert len(examples) == (1 if not settings else 2)
    start = 0
    for eg in examples:
        assert [t.text for t in eg.predicted] == [t.text for t in eg.reference]
        numpy.testing.assert_allclose(eg.predicted._.ctx_vectors, want[start:start + len(eg.predicted)], atol=1e-5)
        assert eg.predicted._.ctx_layers.shape == (2, len(eg.predicted), 32)
        assert not eg.predicted.has_annotation("TAG") and [t.tag_ for t in eg.reference] == TAGS[start:][:len(eg.x)]
        start += len(eg.predicted)


def _orth_variants(tags):
    from spacy.training.augment import create_orth_variants_augmenter

    return create_orth_variants_augmenter(level=1.0, lower=0.0, orth_variants={
        "single": [{"tags": tags, "variants": [".", "!"]}], "paired": []})


@pytest.mark.parametrize("gold_preproc", [False, True])
def test_an_augmenter_s_new_doc_of_the_same_text_holds_the_stored_outputs(embedded, tiny_bert_dir, hf_reference,
                                                                          gold_preproc):
    """spaCy's augmenters give each example they augment a new predicted doc
    (`nlp.make_doc`), without user data: the listener found no outputs there
    and its error told to use this reader. Of the same text (no token of the
    variants' tags), it reads the rows the doc was embedded with."""
    want = _want(tiny_bert_dir, hf_reference)
    corpus = EmbeddedCorpus(embedded[0], gold_preproc=gold_preproc, augmenter=_orth_variants(["NOPE"]))
    examples = list(corpus(spacy.blank("en")))
    start = 0
    for eg in examples:
        numpy.testing.assert_allclose(eg.predicted._.ctx_vectors, want[start:start + len(eg.predicted)], atol=1e-5)
        start += len(eg.predicted)
    assert start == len(WORDS)


@pytest.mark.parametrize("augmenter", ["lower", "orth"])
def test_an_augmenter_s_example_of_other_text_is_refused(embedded, augmenter):
    """lower_case and orth_variants make text that was never embedded: the
    stored rows are not its vectors."""
    from spacy.training.augment import create_lower_casing_augmenter

    augment = create_lower_casing_augmenter(level=1.0) if augmenter == "lower" else _orth_variants(["PUNCT"])
    name = "lower_casing_augmenter" if augmenter == "lower" else "orth_variants_augmenter"
    spacy.util.fix_random_seed(0)  # (orth_variants picks "." or "!" for ".": some pass makes "!")
    with pytest.raises(ValueError, match=rf"spacy-ctxembed.EmbeddedCorpus.v1 augmenter = {name}: it made an example "
                                         r"of other text .* which was not embedded"):
        for _ in range(20):
            list(EmbeddedCorpus(embedded[0], augmenter=augment)(spacy.blank("en")))


def test_a_path_that_gives_no_docs_is_refused_naming_the_reader(tmp_path, embedded):
    """A path not set (`--paths.train` left out: an AttributeError from
    spaCy), not there (a warning, and no examples), or an `npy` output
    (told to read it with load_npy)."""
    reader = spacy.registry.readers.get(READER)
    with pytest.raises(ValueError, match=r"spacy-ctxembed.EmbeddedCorpus.v1 path = None"):
        reader(None)
    with pytest.raises(ValueError, match=r"spacy-ctxembed.EmbeddedCorpus.v1 path = '.*nope': no such file"):
        list(reader(tmp_path / "nope")(spacy.blank("en")))
    out, pipeline = embedded
    assert invoke("embed", tmp_path / "gold.spacy", "-o", tmp_path / "npy", "-m", pipeline, "--format",
                  "npy").exit_code == 0
    with pytest.raises(ValueError, match=r"spacy-ctxembed.EmbeddedCorpus.v1 path = '.*npy': an embed output of "
                                         r"format 'npy'.*--format docbin"):
        list(reader(tmp_path / "npy")(spacy.blank("en")))


def test_a_tagger_trains_without_its_upstream_on_the_reader_s_examples_and_serves_with_it_back(embedded, tmp_path):
    """spacy.Corpus.v1's examples held no outputs: initialize refused them
    (the error now names the reader). The reader's train the tagger; with the
    embedder added back it tags as it does from the stored outputs, and next
    to another model's embedder it is refused."""
    from spacy.training.corpus import Corpus

    out, pipeline = embedded
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("tagger", config=TAGGER)
    with pytest.raises(ValueError, match=r"read them with @readers = \"spacy-ctxembed.EmbeddedCorpus.v1\""):
        nlp.initialize(lambda: Corpus(out)(nlp))
    corpus = EmbeddedCorpus(out, gold_preproc=True)
    optimizer = nlp.initialize(lambda: corpus(nlp))
    for _ in range(5):
        nlp.update(list(corpus(nlp)), sgd=optimizer)
    assert nlp.evaluate(list(corpus(nlp)))["tag_acc"] is not None
    stored = [[t.tag_ for t in doc] for doc in nlp.pipe(eg.predicted for eg in corpus(nlp))]
    nlp.to_disk(tmp_path / "tagger")
    served = spacy.load(tmp_path / "tagger")
    served.add_pipe("ctxembed_bert", source=spacy.load(pipeline), first=True)
    words = [Doc(served.vocab, words=[t.text for t in eg.x], spaces=[bool(t.whitespace_) for t in eg.x])
             for eg in corpus(served)]
    assert [[t.tag_ for t in doc] for doc in served.pipe(words)] == stored


def test_a_component_trained_on_the_reader_s_examples_says_how_to_serve_it(embedded, tmp_path):
    """The trained pipeline, saved and then run or evaluated without the
    embedder, told how to train without one, not how to serve it: the error
    says to add the embedder back."""
    out, _ = embedded
    nlp = spacy.blank("en")
    nlp.add_pipe("tagger", name="pos_tagger", config=TAGGER)
    corpus = EmbeddedCorpus(out)
    optimizer = nlp.initialize(lambda: corpus(nlp))
    nlp.update(list(corpus(nlp)), sgd=optimizer)
    nlp.to_disk(tmp_path / "tagger")
    served = spacy.load(tmp_path / "tagger")
    with pytest.raises(ValueError, match=r"^ContextualListener upstream = 'ctxembed_bert': no ctxembed "
                                         r"component .*add the embedder its docs had back before it \(nlp.add_pipe\("
                                         r"'ctxembed_bert', source=spacy.load\(EMBEDDER\), first=True\)\)$"):
        served("I ran to the park.")


@pytest.mark.parametrize("limit", [1, 2, 3, 0])
def test_the_reader_s_limit_holds_for_an_embed_output(tmp_path, tiny_bert_dir, limit):
    """`limit` as spacy.Corpus.v1 has it: the first `limit` docs (0: all). An
    `embed` output is read by `iter_docs`, not by spaCy's `read_docbin` (which
    counts the limit itself): every doc was given, whatever the limit."""
    nlp = spacy.blank("en")
    texts = ["I ran to the park.", "She ran some tests.", "The dog barked."]
    DocBin(docs=[nlp(text) for text in texts]).to_disk(tmp_path / "gold.spacy")
    pipeline = tmp_path / "embedder"
    make_nlp(tiny_bert_dir).to_disk(pipeline)
    result = invoke("embed", tmp_path / "gold.spacy", "-o", tmp_path / "out", "-m", pipeline)
    assert result.exit_code == 0, result.output
    examples = list(spacy.registry.readers.get(READER)(tmp_path / "out", limit=limit)(nlp))
    assert [eg.predicted.text for eg in examples] == texts[:limit or None]
    assert all(eg.predicted._.ctx_vectors.shape == (len(eg.predicted), 32) for eg in examples)


def test_the_reader_refuses_docs_without_outputs(tmp_path):
    DocBin(docs=[_gold(spacy.blank("en").vocab)]).to_disk(tmp_path / "gold.spacy")
    with pytest.raises(ValueError, match=r"spacy-ctxembed.EmbeddedCorpus.v1 path = '.*gold.spacy': the doc 'I ran "
                                         r"to the park.*' holds no ctxembed outputs"):
        list(EmbeddedCorpus(tmp_path / "gold.spacy")(spacy.blank("en")))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "ud_english_ewt").is_dir(), reason="needs ../shared/data")
def test_spacy_train_on_docs_embedded_once_scores_as_with_the_embedder_frozen(tiny_bert_dir, tmp_path):
    """UD EWT embedded once, a tagger trained with `spacy train` and no
    embedder: the same dev tag accuracy as with the embedder frozen and
    annotating in the pipeline (same model, docs and seed)."""
    from spacy.util import load_config

    sentences = [s for s in (SHARED_DATA / "ud_english_ewt" / "en_ewt-ud-dev.conllu").read_text(
        encoding="utf8").split("\n\n") if s.strip()]
    for name, chunk in (("train", sentences[:80]), ("dev", sentences[80:110])):
        (tmp_path / f"{name}.conllu").write_text("\n\n".join(chunk) + "\n\n", encoding="utf8")
        subprocess.run([sys.executable, "-m", "spacy", "convert", str(tmp_path / f"{name}.conllu"), str(tmp_path),
                        "--converter", "conllu", "-n", "1"], check=True, capture_output=True)
    embedder = tmp_path / "embedder"
    make_nlp(tiny_bert_dir, layers=[0, 1, 2], store_layers=True, trainable=False).to_disk(embedder)
    for name in ("train", "dev"):
        assert invoke("embed", tmp_path / f"{name}.spacy", "-o", tmp_path / f"emb-{name}", "-m",
                      embedder).exit_code == 0
    config = load_config(Path(__file__).parents[1] / "configs" / "tagger_bert_listener.cfg")
    config["components"]["ctxembed_bert"]["cache_mb"] = 0
    config["components"]["ctxembed_bert"]["model"]["encoder"].update(
        name=str(tiny_bert_dir), layers=[0, 1, 2], max_batch_items=None)
    del config["components"]["tagger"]["model"]["tok2vec"]["embed"]
    config["training"].update(max_steps=40, eval_frequency=20, dropout=0.0)
    for corpus in ("train", "dev"):
        config["corpora"][corpus]["gold_preproc"] = True
    config.to_disk(tmp_path / "with.cfg")
    config["nlp"]["pipeline"] = ["tagger"]
    del config["components"]["ctxembed_bert"]
    config["training"].update(frozen_components=[], annotating_components=[])
    for corpus in ("train", "dev"):
        config["corpora"][corpus]["@readers"] = READER
    config.to_disk(tmp_path / "without.cfg")
    scores = {}
    for name, data in (("with", ""), ("without", "emb-")):
        result = subprocess.run(
            [sys.executable, "-m", "spacy", "train", str(tmp_path / f"{name}.cfg"), "--output", str(tmp_path / name),
             "--paths.train", str(tmp_path / f"{data}train{'' if data else '.spacy'}"),
             "--paths.dev", str(tmp_path / f"{data}dev{'' if data else '.spacy'}")],
            capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        meta = json.loads((tmp_path / name / "model-last" / "meta.json").read_text(encoding="utf8"))
        scores[name] = meta["performance"]["tag_acc"]
    assert scores["without"] > 0.1 and abs(scores["without"] - scores["with"]) < 1e-3, scores
    served = spacy.load(tmp_path / "without" / "model-last")
    served.add_pipe("ctxembed_bert", source=spacy.load(embedder), first=True)
    gold = list(DocBin().from_disk(tmp_path / "dev.spacy").get_docs(served.vocab))
    examples = [Example(Doc(served.vocab, words=[t.text for t in g], spaces=[bool(t.whitespace_) for t in g]), g)
                for g in gold]
    assert abs(served.evaluate(examples)["tag_acc"] - scores["without"]) < 1e-3
