"""`python -m spacy_ctxembed analyze`: a run on a small corpus, the numbers and report it writes, the config
it recommends (built and run), its errors."""
import base64
import errno
import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import spacy
import torch
from spacy.util import load_config
from thinc.api import Config

from spacy_ctxembed.analysis import write_report
from spacy_ctxembed.analysis.report import wic_figure

from .analysis_support import (
    CORPUS_LINES,
    exact_anisotropy,
    plain_intra_sentence,
    plain_self_similarity,
    saved_pipeline,
    wic_pairs,
    write_corpus,
    write_wic,
)
from .conftest import make_nlp
from .test_cli_support import error_lines, invoke

LAYER_KEYS = {"layer", "anisotropy", "self_similarity", "intra_sentence_similarity", "max_explainable_variance",
              "self_similarity_adjusted", "intra_sentence_similarity_adjusted",
              "max_explainable_variance_adjusted", "wic_accuracy"}
PNG = b"\x89PNG\r\n\x1a\n"
ATOL = 1e-5
#: The labels of `wic_pairs()`, the pairs of --wic-train in `run`, and of its held-out --wic-eval pairs.
WIC_LABELS = np.array([same for _, same in wic_pairs()])


class _Page(HTMLParser):
    """Collects the images and checks that every opened tag is closed in order (void tags aside)."""

    VOID = {"meta", "img", "br", "hr", "link"}

    def __init__(self):
        super().__init__()
        self.images, self.open, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory):
    """One analysis of two pipelines (a saved one and a config), with WiC train (two data files) and eval
    (held-out pairs, and 4 training pairs that it leaves out), two words explored on the top layer (-1),
    exact anisotropy, one torch thread."""
    tmp = tmp_path_factory.mktemp("analyze")
    config = tmp / "tiny.cfg"
    make_nlp(tiny_bert_dir).config.to_disk(config)
    train = write_wic(write_wic(tmp / "wic-train", "a", slice(0, 13)), "b", slice(13, None))
    evaluation = write_wic(write_wic(tmp / "wic-dev", "dev", held_out=True), "seen", slice(0, 4))
    out = tmp / "out"
    threads_before = torch.get_num_threads()
    result = invoke("analyze", write_corpus(tmp), "-o", out,
                    "--model", saved_pipeline(tiny_bert_dir, tmp_path_factory), "--compare", config,
                    "--wic-train", train, "--wic-eval", evaluation,
                    "--word", "ran", "--word", "zebra", "--pooling", "mean", "--pooling", "first", "--folds", "3",
                    "--explore-layers", "-1", "--anisotropy-pairs", "0", "--threads", "1")
    assert torch.get_num_threads() == threads_before  # --threads holds only during the run
    return result, out


@pytest.fixture(scope="module")
def reference(tiny_bert_dir):
    """The tiny model with every hidden state stored, by pooling mode: the independent reference."""
    return {mode: make_nlp(tiny_bert_dir, layers=[0, 1, 2], store_layers=True, pooling=mode)
            for mode in ("mean", "first")}


def test_analyze_writes_every_number(run, reference):
    result, out = run
    assert result.exit_code == 0, result.stderr
    analysis = json.loads((out / "analysis.json").read_text())
    assert analysis["corpus"] == {"path": str(out.parent / "corpus.txt"), "kind": "text", "docs_in_file": 19}
    assert "accuracy on" in analysis["wic"]["protocol"]
    # the 4 --wic-eval pairs that are also training pairs are left out, with a note
    assert analysis["wic"]["train"]["pairs"] == 30 and analysis["wic"]["eval"]["pairs"] == 30
    overlap = ("--wic-eval: 4 of its 34 pairs are also in --wic-train (the same sentences and target tokens, in "
               "either order): left out, the accuracy is on the other 30")
    assert all(overlap in pipeline["notes"] for pipeline in analysis["pipelines"])
    assert f"note: {overlap}" in result.stdout
    assert analysis["settings"]["n_pairs"] is None and analysis["settings"]["threads"] == 1
    # the baseline of the accuracies: always answering the commoner label of the --wic-eval pairs (F)
    assert analysis["wic"]["majority_baseline"] == {"pairs": "eval", "majority_label": "F",
                                                    "majority_rate": pytest.approx(np.mean(~WIC_LABELS))}
    # the reference's tokens and layers; each text line is one sentence
    docs = list(reference["mean"].pipe(CORPUS_LINES))
    words = [t.lower_ for doc in docs for t in doc]
    sentences = [i for i, doc in enumerate(docs) for _ in doc]
    assert len(analysis["pipelines"]) == 2
    for pipeline in analysis["pipelines"]:
        assert (pipeline["corpus_docs"], pipeline["corpus_tokens"], pipeline["corpus_sentences"]) == (
            19, len(words), 19)
        assert [layer["layer"] for layer in pipeline["layers"]] == [0, 1, 2]
        for layer in pipeline["layers"]:
            assert LAYER_KEYS <= set(layer)
            assert 0.0 <= layer["wic_accuracy"] <= 1.0
            vectors = np.concatenate([doc._.ctx_layers[layer["layer"]] for doc in docs])
            anisotropy = exact_anisotropy(vectors)
            self_sim = plain_self_similarity(vectors, words, min_count=5)
            intra = plain_intra_sentence(vectors, sentences)
            assert layer["anisotropy"] == pytest.approx(anisotropy, abs=ATOL)
            assert layer["self_similarity"] == pytest.approx(self_sim, abs=ATOL)
            assert layer["self_similarity_adjusted"] == pytest.approx(self_sim - anisotropy, abs=ATOL)
            assert layer["intra_sentence_similarity_adjusted"] == pytest.approx(intra - anisotropy, abs=ATOL)
        assert set(pipeline["wic"]) == {"mean", "first"}
        for scores in pipeline["wic"].values():
            assert set(scores) == {"layers", "mean_of_layers", "scalar_mix", "logistic_regression",
                                   "pairs_without_vector"}
            mix = scores["scalar_mix"]
            assert len(mix["weights"]) == 3 and sum(mix["weights"]) == pytest.approx(1.0)
            assert min(mix["weights"]) >= 0.0 and 0.0 <= mix["accuracy"] <= 1.0
            assert len(scores["logistic_regression"]["coefficients"]) == 3
            assert scores["pairs_without_vector"] == {"train": 0, "eval": 0}
            for rule in scores["layers"] + [scores["mean_of_layers"], mix]:  # a number, or named: never null
                assert isinstance(rule["threshold"], float) or rule["threshold"] in ("all_same", "all_different")
        recommendation = pipeline["recommendation"]
        assert recommendation["accuracy"] is not None  # held out: --wic-eval was given
        assert "selected on these folds" in recommendation["note"]
        ran, zebra = pipeline["explorer"]["ran"], pipeline["explorer"]["zebra"]
        assert ran["layers"] == [2]  # --explore-layers -1: the top layer
        assert ran["n_occurrences"] == 18 and sum(c["size"] for c in ran["clusters"]) == 18
        assert zebra["n_occurrences"] == 0 and any("'zebra' does not occur" in n for n in pipeline["notes"])
    assert analysis["pipelines"][0]["configured_layers"] == [2]  # the saved pipeline's [-1]


def _snippets(stdout):
    """The first pipeline's printed config snippet and Python line."""
    text = stdout[stdout.index("[components.ctxembed_bert]"):]
    config, rest = text.split("# or in Python:\n", 1)
    return config, rest.splitlines()[0]


def test_printed_config_and_python_build_the_recommended_pipeline(run, reference, tiny_bert_dir, tmp_path_factory):
    result, out = run
    recommended = json.loads((out / "analysis.json").read_text())["pipelines"][0]["recommendation"]
    config_text, python_line = _snippets(result.stdout)
    block = Config().from_str("[components]\n" + config_text)["components"]["ctxembed_bert"]
    from_config = spacy.blank("en")
    from_config.add_pipe(block.pop("factory"), config=block)
    namespace = {"nlp": spacy.blank("en")}
    exec(python_line, namespace)  # the printed line, as a user would paste it
    from_python = namespace["nlp"]
    assert from_python.config["components"] == from_config.config["components"]
    # every setting is the saved pipeline's own (its config file), but for layers, pooling and combiner
    saved = load_config(saved_pipeline(tiny_bert_dir, tmp_path_factory) / "config.cfg").interpolate()
    expected, built = saved["components"]["ctxembed_bert"], from_config.config["components"]["ctxembed_bert"]
    assert expected["model"]["combiner"] == {"@layers": "spacy-ctxembed.ScalarMix.v1", "n_layers": None}
    assert built["model"]["combiner"] == {"@layers": "spacy-ctxembed.MeanLayers.v1"}
    assert (built["model"]["encoder"]["layers"], built["model"]["encoder"]["pooling"]) == (
        recommended["layers"], recommended["pooling"])
    for settings in (expected, built):
        settings["model"]["encoder"] = {k: v for k, v in settings["model"]["encoder"].items()
                                        if k not in ("layers", "pooling")}
        settings["model"].pop("combiner")
    assert built == expected and built["model"]["encoder"]["name"] == str(tiny_bert_dir)
    # built and run, each gives the mean of the recommended layers under the recommended pooling
    direct = reference[recommended["pooling"]]
    for nlp in (from_config, from_python):
        nlp.initialize()
        for text in CORPUS_LINES[:6]:
            doc, expected = nlp(text), direct(text)._.ctx_layers
            np.testing.assert_allclose(doc._.ctx_vectors, expected[recommended["layers"]].mean(axis=0), atol=ATOL)
    assert result.stderr.strip().splitlines()[-1].startswith("wrote analysis.json, 4 plots and report.html to ")
    assert "corpus [ctxembed_bert]" in result.stderr and "100%" in result.stderr  # progress bars on stderr


def test_report_is_valid_html_with_its_images(run):
    _, out = run
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf8"))
    page.close()
    assert not page.errors and not page.open
    pngs = sorted(out.glob("*.png"))
    # the contextuality and WiC plots, one explorer plot per pipeline ("zebra" has none)
    assert {p.name for p in pngs} == {"contextuality.png", "wic.png", "explorer-1-1-ran.png", "explorer-2-1-ran.png"}
    embedded = []
    for image in page.images:
        prefix, data = image["src"].split(",", 1)
        assert prefix == "data:image/png;base64"
        embedded.append(base64.b64decode(data, validate=True))
        assert embedded[-1].startswith(PNG)
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)


def test_report_and_plot_show_the_majority_baseline(run):
    result, out = run
    analysis = json.loads((out / "analysis.json").read_text())
    rate = float(np.mean(~WIC_LABELS))
    sentence = f"The majority class (always F) scores {rate:.3f} on the --wic-eval pairs"
    assert sentence in result.stdout and sentence in (out / "report.html").read_text(encoding="utf8")
    # one row per WiC table (one table per pipeline)
    assert (out / "report.html").read_text(encoding="utf8").count(
        f'<td class="text">majority class (always F)</td><td>{rate:.3f}</td>') == 2
    figure = wic_figure(analysis["pipelines"], analysis["wic"])
    assert f"WiC accuracy: {analysis['wic']['protocol']}" in [text.get_text() for text in figure.texts]
    # What else the report counts: the evaluation pairs scored, and per layer the words self-similarity averages.
    page = (out / "report.html").read_text(encoding="utf8")
    assert f"{analysis['wic']['eval']['pairs']} evaluation pairs" in page
    assert "<th>words (self-sim, MEV)</th>" in page
    for pipeline in analysis["pipelines"]:
        for layer in pipeline["layers"]:
            row = (rf'<tr><td class="text">{layer["layer"]}</td>(<td>[^<]*</td>)+'
                   rf'<td class="text">{layer["n_words"]}</td></tr>')
            assert re.search(row, page), row
    for ax in figure.axes:
        lines = [line for line in ax.get_lines() if line.get_label().startswith("majority class (always F)")]
        assert len(lines) == 1 and list(lines[0].get_ydata()) == [rate, rate]


def _without_wic_and_words(analysis, label):
    """`analysis` as a run without --wic-train and --word would give it, its pipelines relabelled."""
    pipelines = [{**{k: v for k, v in p.items() if k != "wic"}, "label": label, "explorer": {}, "recommendation": None,
                  "layers": [{k: v for k, v in layer.items() if k != "wic_accuracy"} for layer in p["layers"]]}
                 for p in analysis["pipelines"]]
    return {**analysis, "wic": None, "pipelines": pipelines}


def test_report_replaces_only_its_own_files_and_never_half(run, tmp_path, monkeypatch):
    _, out = run
    analysis = json.loads((out / "analysis.json").read_text())
    target = tmp_path / "report"
    first = write_report(analysis, target)
    mine = {"notes.txt": b"mine", "explorer-notes.png": b"mine too"}  # not the report's own names
    for name, data in mine.items():
        (target / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    assert set(before) == {p.name for p in first} | set(mine) and "wic.png" in before
    second = _without_wic_and_words(analysis, "second run")
    # a write that fails after its first file (a full disk, say): the earlier report stays whole
    written = []

    def full_disk(original):
        def write(path, data, *args, **kwargs):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(path)
            return original(path, data, *args, **kwargs)
        return write

    for method in ("write_bytes", "write_text"):
        monkeypatch.setattr(Path, method, full_disk(getattr(Path, method)))
    with pytest.raises(OSError, match="No space left"):
        write_report(second, target)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # nothing half-written, nothing left over
    # the next run's report: the earlier run's WiC and explorer plots are gone, and the staging folder a
    # killed run left behind; the user's files stay
    (target / ".analysis-k1ll3d.tmp").mkdir()
    (target / ".analysis-k1ll3d.tmp" / "analysis.json").write_text("{")
    write_report(second, target)
    assert {p.name for p in target.iterdir()} == {"analysis.json", "report.html", "contextuality.png"} | set(mine)
    assert all((target / name).read_bytes() == data for name, data in mine.items())
    assert json.loads((target / "analysis.json").read_text())["pipelines"][0]["label"] == "second run"


def _tiny_reports(monkeypatch):
    """Reports without plotting: run "A"'s has a WiC plot, run "B"'s has none (as without --wic-train)."""
    from spacy_ctxembed.analysis import report

    def plots(result):
        name = result["run"]
        return {"contextuality.png": name.encode(), **({"wic.png": name.encode()} if name == "A" else {})}

    monkeypatch.setattr(report, "plots", plots)
    monkeypatch.setattr(report, "render_html", lambda result, images: f"<p>{result['run']}</p>")


def test_two_reports_written_into_one_output_at_once_do_not_mix(tmp_path, monkeypatch):
    """Run B lists --output to clear an earlier report and stops there; run A writes its
    report meanwhile. Before, A took B's staging folder for a killed run's and removed it:
    B failed with a FileNotFoundError, its report lost (in other orders both succeeded, and
    one's wic.png was left beside the other's numbers). Now A waits until B is done, and
    --output holds A's report, whole."""
    import threading

    _tiny_reports(monkeypatch)
    target = tmp_path / "report"
    listed, go, errors = threading.Event(), threading.Event(), []
    iterdir = Path.iterdir

    def b_pauses_after_listing(self):
        found = list(iterdir(self))
        if threading.current_thread().name == "B" and self == target:
            listed.set()
            go.wait(timeout=30)
        return iter(found)

    monkeypatch.setattr(Path, "iterdir", b_pauses_after_listing)

    def write(name):
        try:
            write_report({"run": name}, target)
        except Exception as err:  # noqa: BLE001 - asserted below
            errors.append(err)

    b = threading.Thread(target=write, args=("B",), name="B")
    b.start()
    assert listed.wait(timeout=30)
    a = threading.Thread(target=write, args=("A",), name="A")
    a.start()
    a.join(timeout=1.0)  # (before: done by now; now: waiting for B)
    go.set()
    b.join()
    a.join()
    monkeypatch.undo()
    assert errors == []
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {
        "contextuality.png": b"A", "wic.png": b"A", "report.html": b"<p>A</p>", "analysis.json": b'{\n "run": "A"\n}\n'}


def test_a_report_waits_for_another_being_written_then_says_so(tmp_path, monkeypatch):
    """A report that finds another being written into --output for longer than
    REPORT_LOCK_WAIT_S is refused naming --output, and the other's files are left alone."""
    fcntl = pytest.importorskip("fcntl")
    from spacy_ctxembed.analysis import report
    from spacy_ctxembed.analysis.errors import AnalysisInputError

    _tiny_reports(monkeypatch)
    monkeypatch.setattr(report, "REPORT_LOCK_WAIT_S", 0.2)
    target = tmp_path / "report"
    write_report({"run": "B"}, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    fd = os.open(target, os.O_RDONLY)  # another run, writing
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(AnalysisInputError) as caught:
            write_report({"run": "A"}, target)
    finally:
        os.close(fd)
    assert str(caught.value) == (f"--output {target}: another analyze run has been writing its report there for "
                                 "over 0.2 s; run this one again once it has finished, or choose another --output")
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_analyze_errors_are_one_line(tmp_path, tiny_bert_dir, tmp_path_factory):
    corpus = write_corpus(tmp_path)
    (tmp_path / "empty").mkdir()
    wic = write_wic(tmp_path / "wic")
    one_label = tmp_path / "wic-t"  # its T pairs only: no number of folds can work
    pairs = [(row, gold) for row, gold in zip((wic / "train.data.txt").read_text().splitlines(),
                                              (wic / "train.gold.txt").read_text().splitlines()) if gold == "T"]
    one_label.mkdir()
    (one_label / "train.data.txt").write_text("".join(row + "\n" for row, _ in pairs), encoding="utf8")
    (one_label / "train.gold.txt").write_text("T\n" * len(pairs), encoding="utf8")
    model = saved_pipeline(tiny_bert_dir, tmp_path_factory)
    sourced = tmp_path / "sourced.cfg"  # a component taken from a saved pipeline: its settings cannot change
    config = spacy.blank("en").config
    config["nlp"]["pipeline"] = ["ctxembed_bert"]
    config["components"]["ctxembed_bert"] = {"source": str(model)}
    config.to_disk(sourced)
    unreadable = tmp_path / "unreadable.cfg"
    unreadable.write_text("[nlp\nlang = en\n", encoding="utf8")
    twice = tmp_path / "twice.cfg"
    twice.write_text("[nlp]\nlang = en\n\n[nlp]\nlang = de\n", encoding="utf8")
    without_embedder = tmp_path / "blank-pipeline"
    spacy.blank("en").to_disk(without_embedder)
    cases = [
        (["--wic-train", tmp_path / "empty"], "--wic-train {}: no *.data.txt file in this directory".format(
            tmp_path / "empty")),
        (["--wic-eval", wic], "--wic-eval needs --wic-train"),
        (["--model", "x", "--config", "y.cfg"], "give either --model or --config, not both"),
        (["--compare-component", "x"], "--compare-component 'x' needs --compare"),
        (["--folds", "1"], "--folds 1: expected at least 2"),
        (["--pooling", "median"], "--pooling 'median': expected one of mean, first, last, max"),
        (["--config", tmp_path / "none.cfg"], "--config {}: no such config file".format(tmp_path / "none.cfg")),
        (["--anisotropy-pairs", "-5"], "--anisotropy-pairs -5: expected 0 (all) or at least 1"),
        (["--max-occurrences", "1"], "--max-occurrences 1: expected 0 (all) or at least 2"),
        (["--explore-max-occurrences", "2"], "--explore-max-occurrences 2: expected 0 (all) or at least 3"),
        (["--examples", "0"], "--examples 0: expected at least 1"),
        (["--threads", "-1"], "--threads -1: expected at least 0"),
        (["--model", model, "--seed", "-1"], "--seed -1: expected 0 .. 4294967295"),
        (["--model", model, "--seed", str(2**32)], f"--seed {2**32}: expected 0 .. 4294967295"),
        # known from the WiC pairs and labels alone (12 T): before any model loads
        (["--model", model, "--wic-train", wic, "--wic-eval", wic],
         f"--wic-eval {wic}: all 30 of its pairs are also in --wic-train {wic} (the same sentences and target "
         "tokens): none is held out"),
        (["--model", model, "--wic-train", wic, "--folds", "13"],
         "--folds 13: expected 2 .. 12 (the WiC training pairs have 12 T and 18 F labels)"),
        (["--model", model, "--wic-train", one_label], "--wic-train: its pairs have 12 T and 0 F labels; the "
         "folds need at least 2 of each (every fold holds pairs of both labels)"),
        (["--model", model, "-o", tmp_path / "corpus.txt" / "out"],
         "--output {}: {} exists and is not a directory".format(tmp_path / "corpus.txt" / "out", corpus)),
        # checked when the pipeline is planned, before anything is embedded
        (["--model", "foo_not_a_model"], "--model foo_not_a_model: [E050] Can't find model 'foo_not_a_model'"),
        # (spaCy's "[E053] Could not read meta.json")
        (["--model", tiny_bert_dir], f"--model {tiny_bert_dir}: not a saved spaCy pipeline (no config.cfg); to "
         "analyse a model's directory, give --config a config whose ctxembed component names it"),
        (["--model", model, "--compare", tiny_bert_dir], f"--compare {tiny_bert_dir}: not a saved spaCy pipeline"),
        (["--model", model, "--compare", "no_such_pipeline"],
         "--compare no_such_pipeline: [E050] Can't find model 'no_such_pipeline'"),
        (["--config", sourced], "--config: [components.ctxembed_bert] is sourced"),
        # (the parser's reason, not confection's title "Config validation error" alone)
        (["--config", unreadable], f"--config {unreadable}: not a readable config (File contains no section "
         "headers. file: '<string>', line: 1"),
        (["--model", model, "--compare", unreadable], f"--compare {unreadable}: not a readable config (File "
         "contains no section headers."),
        (["--config", twice], f"--config {twice}: not a readable config (While reading from '<string>' [line  4]: "
         "section 'nlp' already exists)"),
        (["--model", without_embedder], f"the pipeline {without_embedder} has no contextual embedder "
         "(ctxembed_bert, ctxembed_elmo, ctxembed_from_trf); its components are: []"),
        (["--model", model, "--compare", sourced], "--compare: [components.ctxembed_bert] is sourced"),
        (["--pooling", "first"], "--pooling ['first'] needs --wic-train: the poolings are tried on WiC only"),
        (["--explore-layers", "1"], "--explore-layers [1] needs --word: they are the layers of the sense explorer"),
        (["--model", model, "--word", "ran", "--explore-layers", "-4"],
         "--explore-layers [-4]: index -4 is out of range: the model has 3 layers, counting its embedding (token) "
         "layer as 0 (valid: -3 .. 2)"),
    ]
    for options, message in cases:
        result = invoke("analyze", corpus, "-o", tmp_path / "out", *options)
        assert result.exit_code == 2, (options, result.stderr)
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (options, lines)
        assert "corpus [" not in result.stderr  # nothing was embedded
    # A line longer than the pipeline's tokenizer takes: named up front, not as spaCy's E088 once reached.
    long = tmp_path / "long.txt"
    text = corpus.read_text(encoding="utf8")
    long.write_text(text + "x" * 1_000_001 + "\n", encoding="utf8")
    result = invoke("analyze", long, "-o", tmp_path / "out", "--model", model)
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    number = len(text.splitlines()) + 1
    assert len(lines) == 1 and lines[0].startswith(
        f"error: CORPUS {long}: line {number} has 1,000,001 characters, more than the nlp.max_length (1,000,000) "
        "of the pipeline "), lines
    assert "corpus [" not in result.stderr
    result = invoke("analyze", tmp_path / "missing.txt", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "CORPUS" in result.stderr and "no such file" in result.stderr
    assert not Path(tmp_path / "out").exists()  # nothing is written before the inputs are checked


@pytest.mark.parametrize("module, package", [("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")])
def test_missing_analysis_extra_is_named_up_front(tmp_path, monkeypatch, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    result = invoke("analyze", tmp_path / "missing.txt", "-o", tmp_path / "out")
    assert result.exit_code == 2
    lines = error_lines(result.stderr)
    assert lines == [f"error: the analysis needs {package}, which is not installed: "
                     "pip install 'spacy-ctxembed[analysis]'"]


def test_a_too_old_analysis_extra_is_named_up_front(tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.setattr(matplotlib, "__version__", "3.5.2")
    result = invoke("analyze", tmp_path / "missing.txt", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == ["error: the analysis needs matplotlib >= 3.6, found 3.5.2: "
                                          "pip install 'spacy-ctxembed[analysis]'"]


def test_an_output_folder_that_cannot_be_written_to_is_refused_up_front(tmp_path, monkeypatch):
    """(A folder's permissions do not stop root, who runs some test machines: the file system's
    refusal is made here.)"""
    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr("tempfile.TemporaryFile", refused)
    result = invoke("analyze", write_corpus(tmp_path), "-o", tmp_path / "new" / "out")
    assert result.exit_code == 2
    assert error_lines(result.stderr) == [f"error: --output {tmp_path / 'new' / 'out'}: cannot write in {tmp_path} "
                                          f"({os.strerror(errno.EACCES)})"]
    assert not (tmp_path / "new").exists()


def test_a_missing_extra_is_one_error_type_for_every_extra(monkeypatch):
    """The analysis's and Ray's missing extras are both `errors.MissingExtra`
    (one `except` catches either), naming the package and the extra, and
    survive pickling whole (Ray and worker pools send exceptions so)."""
    import pickle

    from spacy_ctxembed.analysis.run import check_extra
    from spacy_ctxembed.distributed import MissingExtra as RayMissingExtra
    from spacy_ctxembed.errors import MissingExtra

    assert RayMissingExtra is MissingExtra
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(MissingExtra) as caught:
        check_extra()
    assert (caught.value.package, caught.value.extra) == ("scikit-learn", "analysis")
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), str(again), again.package, again.extra) == (
        MissingExtra, str(caught.value), "scikit-learn", "analysis")


def test_a_gpu_id_without_a_gpu_is_a_usage_error_naming_the_option(tmp_path):
    """It exited 1 with "ValueError: Cannot use GPU, CuPy is not installed", naming no
    option, where `embed` says "--gpu-id 0: ..." and exits 2 (docs/analysis.md: one line, 2)."""
    from thinc.api import get_current_ops, set_current_ops

    ops = get_current_ops()
    try:
        spacy.require_gpu(0)
    except Exception:  # noqa: BLE001 - what this machine says (no CuPy, or no device 0)
        pass
    else:  # pragma: no cover - a GPU machine
        set_current_ops(ops)  # (require_gpu switched every later test to the GPU)
        pytest.skip("this machine has a GPU 0")
    result = invoke("analyze", write_corpus(tmp_path), "-o", tmp_path / "out", "-g", "0")
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: --gpu-id 0: "), lines
    assert not (tmp_path / "out").exists()


def test_analyze_refuses_a_gpu_id_below_minus_one(tmp_path):
    """`--gpu-id -2` is no GPU and not the CPU: one usage line, as `embed` says it, before anything loads."""
    result = invoke("analyze", write_corpus(tmp_path), "-o", tmp_path / "out", "-g", "-2")
    assert result.exit_code == 2, result.stderr
    assert error_lines(result.stderr) == ["error: --gpu-id -2: expected a GPU number, or -1 for CPU"]


def test_analyze_component_options_reach_their_pipelines(tmp_path, tiny_bert_dir, tmp_path_factory):
    """--component picks the main pipeline's component, --compare-component the
    compared one's; an unknown name is refused naming the option it came from."""
    corpus = write_corpus(tmp_path)
    model = saved_pipeline(tiny_bert_dir, tmp_path_factory)
    for options, option in ((["--component", "nope"], "--component"),
                            (["--compare", model, "--compare-component", "nope"], "--compare-component")):
        result = invoke("analyze", corpus, "-o", tmp_path / "out", "--model", model, *options)
        assert result.exit_code == 2, result.stderr
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and lines[0].startswith(f"error: {option} 'nope': the pipeline "), lines
        assert "has no such contextual embedder" in lines[0]


def test_report_states_its_settings_counts_and_mean_of_layers(run, tmp_path):
    """The report's own numbers, from analysis.json: the --min-count it was run
    with, each pipeline's docs, tokens and sentences, and each WiC table's
    mean-of-layers row (one cell per pooling mode, in the json's order)."""
    _, out = run
    analysis = json.loads((out / "analysis.json").read_text())
    analysis["settings"]["min_count"] = 7  # (the run's is the default, 5)
    write_report(analysis, tmp_path / "again")
    page = (tmp_path / "again" / "report.html").read_text(encoding="utf8")
    assert "self-similarity (words with at least 7 occurrences)" in page
    for p in analysis["pipelines"]:
        assert (f"analysed {p['corpus_docs']} docs, {p['corpus_tokens']} tokens, {p['corpus_sentences']} "
                f"sentences)") in page
        cells = "".join(f"<td>{p['wic'][mode]['mean_of_layers']['accuracy']:.3f}</td>" for mode in ("mean", "first"))
        assert f'<td class="text">mean of layers</td>{cells}</tr>' in page


def test_a_report_keeps_user_files_named_like_its_own_plus_a_suffix(run, tmp_path):
    """Only files named exactly as the report's (REPORT_FILES, whole names)
    are replaced: a user's backup "analysis.json.bak", "report.html.orig" or
    "wic.png~" starts with a report name and stays. Before, the user files
    tried shared no prefix with the report's names."""
    _, out = run
    analysis = json.loads((out / "analysis.json").read_text())
    target = tmp_path / "report"
    target.mkdir()
    mine = {"analysis.json.bak": b"1", "report.html.orig": b"2", "wic.png~": b"3", "contextuality.png.old": b"4"}
    for name, data in mine.items():
        (target / name).write_bytes(data)
    write_report(analysis, target)
    write_report(analysis, target)  # a second run removes the first one's files, and no other
    assert all((target / name).read_bytes() == data for name, data in mine.items())
    assert {"analysis.json", "report.html", "contextuality.png", "wic.png"} <= {p.name for p in target.iterdir()}


def test_an_empty_wic_eval_folder_is_refused_before_anything_is_embedded(tmp_path, tiny_bert_dir, tmp_path_factory):
    """--wic-eval of a folder whose files hold no pair: one usage line naming the option and the folder,
    before the corpus is embedded. Before: "error: ValueError: no WiC sentence was embedded", exit 1,
    once the corpus had been embedded."""
    empty = tmp_path / "wic-empty"
    empty.mkdir()
    (empty / "dev.data.txt").write_text("", encoding="utf8")
    (empty / "dev.gold.txt").write_text("", encoding="utf8")
    result = invoke("analyze", write_corpus(tmp_path), "-o", tmp_path / "out",
                    "--model", saved_pipeline(tiny_bert_dir, tmp_path_factory),
                    "--wic-train", write_wic(tmp_path / "wic"), "--wic-eval", empty, "--folds", "2")
    assert result.exit_code == 2, result.stderr
    assert error_lines(result.stderr) == [f"error: --wic-eval {empty}: no pairs in dev.data.txt (only blank lines, "
                                          "or empty)"]
    assert not (tmp_path / "out").exists()


def test_the_summary_is_printed_when_the_report_cannot_be_written(tmp_path, tiny_bert_dir, tmp_path_factory,
                                                                  monkeypatch):
    """A report that fails to be written at the end of a run (a full disk) is an error, but the run's numbers
    still reach stdout; they were printed only after the report was written, so they were lost with it."""
    import spacy_ctxembed.analysis as analysis

    def full_disk(result, outdir):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(analysis, "write_report", full_disk)
    result = invoke("analyze", write_corpus(tmp_path), "-o", tmp_path / "out",
                    "--model", saved_pipeline(tiny_bert_dir, tmp_path_factory))
    assert result.exit_code == 1
    assert "No space left on device" in error_lines(result.stderr)[-1]
    assert result.stdout.startswith(f"== {saved_pipeline(tiny_bert_dir, tmp_path_factory)} (component ")
    assert "\n    2  " in result.stdout  # the per-layer table, to its last layer


def test_compared_pipelines_wic_panels_share_one_accuracy_scale():
    """--compare draws one WiC panel per pipeline. Each had its own y range, so a curve spanning 0.50-0.60
    filled its panel as one spanning 0.43-0.60 did the other's: the heights side by side were not comparable."""
    def pipeline(label, accuracies):
        scores = {"layers": [{"layer": i, "accuracy": a} for i, a in enumerate(accuracies)],
                  "mean_of_layers": {"accuracy": float(np.mean(accuracies))},
                  "scalar_mix": {"accuracy": max(accuracies)}}
        return {"label": label, "pooling": "mean", "wic": {"mean": scores}}

    wic = {"protocol": "3-fold cross-validation", "majority_baseline": {"majority_label": "F", "majority_rate": 0.6}}
    figure = wic_figure([pipeline("a", [0.6, 0.43, 0.5]), pipeline("b", [0.7, 0.72, 0.71])], wic)
    first, second = figure.axes
    assert first.get_ylim() == second.get_ylim()
    low, high = first.get_ylim()
    assert low <= 0.43 and high >= 0.72
