import json
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import spacy
from spacy.tokens import DocBin

from spacy_ctxembed import iter_docs, load_npy

from .reference import hf_hidden_states, pool, token_pieces

LINES = ["It was nice out this morning when I ran to the park.", "", "Yesterday afternoon I ran some tests."]


def _run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "spacy_ctxembed", *args], input=stdin, check=True,
                          capture_output=True, text=True)


def test_embed_text_file_to_docbin(tmp_path, hf_reference):
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n", encoding="utf8")
    result = _run("embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out.spacy"))
    assert "embedding" in result.stderr and "100%" in result.stderr  # the progress bar
    summary = result.stderr.splitlines()[-1]
    assert summary.endswith(f"1 blank line skipped (docbin, 1 shard) to {tmp_path / 'out.spacy'}")
    docs = list(iter_docs(tmp_path / "out.spacy"))  # a directory of DocBin shards + manifest.json
    assert [(d.user_data["line"], d.text) for d in docs] == [(1, LINES[0]), (3, LINES[2])]  # blank line 2 skipped
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, LINES[0])
    expected = pool(states[-1], token_pieces(docs[0], offsets), "mean")
    numpy.testing.assert_allclose(docs[0]._.ctx_vectors, expected, atol=1e-4)
    assert docs[0][8].has_vector


def test_embed_stdin_to_npy_and_docbin_input(tmp_path):
    _run("embed", "-", "-o", str(tmp_path / "npy"), "-f", "npy", stdin="\n".join(LINES))
    vectors, records = load_npy(tmp_path / "npy")
    assert [(r["line"], r["text"]) for r in records] == [(1, LINES[0]), (3, LINES[2])]
    assert records == [json.loads(line) for line in (tmp_path / "npy" / "docs.jsonl").read_text().splitlines()]
    assert vectors.shape == (records[-1]["end"], 384)
    # A DocBin as input gives the same vectors (its suffix in any case: "not UTF-8" before).
    nlp = spacy.blank("en")
    DocBin(docs=[nlp(t) for t in LINES]).to_disk(tmp_path / "in.SPACY")
    _run("embed", str(tmp_path / "in.SPACY"), "-o", str(tmp_path / "npy2"), "-f", "npy")
    numpy.testing.assert_allclose(numpy.load(tmp_path / "npy2" / "vectors.npy"), vectors, atol=1e-6)


def test_demo_prints_table():
    out = _run("demo").stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:3] in ("A-B", "A-C", "B-C")}
    assert set(rows) == {"A-B", "A-C", "B-C"}
    contextual = {k: float(v[-2]) for k, v in rows.items()}
    static = {k: float(v[-1]) for k, v in rows.items()}
    assert contextual["A-C"] > contextual["A-B"]  # same sense closer than different senses
    assert all(v == 1.0 for v in static.values())  # a static vector cannot tell the senses apart
    assert not [line for line in out.splitlines() if line != line.rstrip()]  # README shows it without trailing spaces
    # ... and shows it as it is.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf8")
    shown = re.search(r"^```\n(Cosine similarity of 'ran'.*?)^```", readme, flags=re.S | re.M)
    assert shown and shown.group(1) == out


def test_embed_with_config(tmp_path, hf_reference):
    config = Path(__file__).resolve().parents[1] / "configs" / "ctxembed_bert.cfg"
    _run("embed", "-", "-o", str(tmp_path / "npy"), "-f", "npy", "--config", str(config), stdin=LINES[0])
    vectors = numpy.load(tmp_path / "npy" / "vectors.npy")
    tokenizer, model = hf_reference
    states, offsets = hf_hidden_states(tokenizer, model, LINES[0])
    pieces = token_pieces(spacy.blank("en")(LINES[0]), offsets)
    # layers [-4 .. -1] under an untrained scalar mix: their mean
    expected = numpy.mean([pool(states[i], pieces, "mean") for i in (-4, -3, -2, -1)], axis=0)
    numpy.testing.assert_allclose(vectors, expected, atol=1e-4)


def test_demo_of_an_elmo_pipeline_says_why_it_shows_no_static_vector(tmp_path):
    """Its table's static column is n/a; the footer still described the model's input embedding."""
    from .conftest import ctx_config
    from .elmo_fixture import write_elmo_fixture
    from .test_cli_support import invoke

    options, weights = write_elmo_fixture(tmp_path / "elmo")
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights)))
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    result = invoke("demo", "-m", tmp_path / "pipeline")
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:3] in ("A-B", "A-C", "B-C")]
    assert len(rows) == 3 and all(row[-1] == "n/a" for row in rows)
    assert "static: n/a, the pipeline has no ctxembed_bert component" in result.stdout
    assert "input embedding of 'ran', the same in every sentence" not in result.stdout


def test_demo_of_a_trf_encoder_in_ctxembed_bert(tmp_path, tiny_bert_dir):
    """ctxembed_bert with a TrfEncoder.v2 has no BERT of its own, whose input embedding the static column
    shows: the demo crashed ("no BERT encoder in model '>>'") after the contextual vectors. They are the
    upstream transformer's last layer, mean-pooled (transformers itself, here)."""
    from transformers import AutoModel, AutoTokenizer

    from .test_cli_support import invoke

    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}}})
    nlp.add_pipe("ctxembed_bert", config={"model": {"encoder": {"@architectures": "spacy-ctxembed.TrfEncoder.v2"}}})
    nlp.initialize()
    nlp.to_disk(tmp_path / "pipeline")
    result = invoke("demo", "-m", tmp_path / "pipeline")
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line[:3] in ("A-B", "A-C", "B-C")}
    assert set(rows) == {"A-B", "A-C", "B-C"} and all(row[-1] == "n/a" for row in rows.values())
    assert "static: n/a, the pipeline has no ctxembed_bert component with a BERT encoder" in result.stdout
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()
    vectors = {}
    for key, text in {"A": "It was nice out this morning when I ran to the park",
                      "B": "Yesterday afternoon I ran some more significance tests",
                      "C": "After breakfast she ran to the station to catch her train"}.items():
        states, offsets = hf_hidden_states(tokenizer, model, text)
        doc = spacy.blank("en")(text)
        vectors[key] = pool(states[-1], token_pieces(doc, offsets), "mean")[[t.text for t in doc].index("ran")]
    for pair, row in rows.items():
        u, v = vectors[pair[0]], vectors[pair[2]]
        assert float(row[-2]) == pytest.approx(u @ v / (numpy.linalg.norm(u) * numpy.linalg.norm(v)), abs=1.5e-3)
