"""`embed` streams: shards written as it goes, line numbers kept, atomic output, --resume."""
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy
import pytest
import spacy
import torch
from spacy.tokens import DocBin
from spacy.vocab import Vocab

from spacy_ctxembed import embedded
from spacy_ctxembed.cli import embed as embed_cli
from spacy_ctxembed.cli import output as output_module
from spacy_ctxembed.cli.errors import CliError, UsageError
from spacy_ctxembed.cli.inputs import open_input
from spacy_ctxembed.cli.output import Run, doc_to_host, to_host
from spacy_ctxembed.embedded import LAYOUT, MANIFEST, SHARD, iter_docs, load_npy, read_manifest

from .conftest import make_nlp
from .test_cli_support import (
    assert_same_docs,
    expected,
    invoke,
    last_line,
    manifest_of,
    read_output,
    run_subprocess,
    tiny_pipeline,
)

LINES = [
    "It was nice out this morning when I ran to the park.",
    "",
    "Yesterday afternoon I ran some more significance tests.",
    "   ",
    "After breakfast she ran to the station.",
    "The dog barked.",
    "\t",
    "A fourth sentence, with a comma.",
    "Short.",
    "The last line has no newline",
]
N_DOCS, N_BLANK = 7, 3


@pytest.fixture(scope="session")
def pipeline(tiny_bert_dir, tmp_path_factory):
    return tiny_pipeline(tiny_bert_dir, tmp_path_factory)


@pytest.fixture(scope="session")
def want(pipeline):
    return expected(pipeline, LINES)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES), encoding="utf8")
    return path


@pytest.mark.parametrize("fmt", ["docbin", "npy"])
def test_shards_hold_every_doc_once_in_order_with_line_numbers(tmp_path, corpus, pipeline, want, fmt):
    out = tmp_path / "out"
    result = invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", fmt, "--shard-size", "2", "-b", "3")
    assert result.exit_code == 0, result.stderr
    assert "embedding" in result.stderr and "100%" in result.stderr  # the progress bar
    manifest = manifest_of(out)
    assert (manifest["format"], manifest["docs"], manifest["blank_lines"]) == (fmt, N_DOCS, N_BLANK)
    if fmt == "docbin":
        shards = manifest["shards"]
        assert [s["file"] for s in shards] == [f"shard-00000{i}.spacy" for i in range(4)]
        assert [(s["first_line"], s["last_line"], s["docs"]) for s in shards] == [
            (1, 3, 2), (4, 6, 2), (7, 9, 2), (10, 10, 1)
        ]
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [s["file"] for s in shards]
    else:
        assert sorted(p.name for p in out.iterdir()) == ["docs.jsonl", "manifest.json", "vectors.npy"]
        assert numpy.load(out / "vectors.npy").shape == (manifest["tokens"], manifest["width"])
    got = read_output(out)
    assert [line for line, _, _ in got] == [1, 3, 5, 6, 8, 9, 10]
    assert_same_docs(got, want)
    assert manifest["tokens"] == sum(len(v) for _, _, v in got)
    assert last_line(result.stderr) == (
        f"wrote {N_DOCS} docs, {manifest['tokens']} tokens, {N_BLANK} blank lines skipped "
        f"({fmt}{', 4 shards' if fmt == 'docbin' else ''}) to {out}"
    )
    assert not (tmp_path / ".out.partial").exists()


def test_blank_lines_are_skipped_and_counted(tmp_path, pipeline):
    (tmp_path / "in.txt").write_bytes(b"\n \n\t\r\nOne doc.\r\n\x0c\n\xe2\x80\xa8\nTwo docs.\n\n")
    result = invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "out", "-m", pipeline, "-f", "npy")
    assert result.exit_code == 0, result.stderr
    assert [(line, text) for line, text, _ in read_output(tmp_path / "out")] == [(4, "One doc."), (7, "Two docs.")]
    assert manifest_of(tmp_path / "out")["blank_lines"] == 6  # lines 1-3, 5, 6 and 8
    assert "2 docs" in last_line(result.stderr) and "6 blank lines skipped" in last_line(result.stderr)


def test_path_and_stdin_split_lines_the_same_way(tmp_path, pipeline):
    text = "form\x0cfeed inside a line\nnext\x85line\u2028still the same line\r\n\n  last\u2028line \u2029end"
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    (tmp_path / "in.txt").write_bytes(text.encode("utf8"))
    from_path = invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "a", "-m", pipeline, "-f", "npy")
    assert from_path.exit_code == 0, from_path.stderr
    from_stdin = run_subprocess("embed", "-", "-o", tmp_path / "b", "-m", pipeline, "-f", "npy", stdin=text.encode())
    assert from_stdin.returncode == 0, from_stdin.stderr
    a, b = read_output(tmp_path / "a"), read_output(tmp_path / "b")
    assert [(line, t) for line, t, _ in a] == [(1, lines[0]), (2, lines[1]), (4, lines[3])]
    assert_same_docs(a, b)
    assert_same_docs(a, expected(pipeline, lines))
    assert manifest_of(tmp_path / "a")["input"]["sha256"] == manifest_of(tmp_path / "b")["input"]["sha256"]


def test_a_byte_order_mark_is_stripped(tmp_path, pipeline):
    (tmp_path / "in.txt").write_bytes("\ufeffHello there.\nSecond line.\n".encode("utf8"))
    result = invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "out", "-m", pipeline)
    assert result.exit_code == 0, result.stderr
    docs = list(iter_docs(tmp_path / "out"))
    assert [d.text for d in docs] == ["Hello there.", "Second line."]
    assert docs[0][0].text == "Hello"
    assert_same_docs(read_output(tmp_path / "out"), expected(pipeline, ["Hello there.", "Second line."]))


def test_docbin_input_keeps_doc_numbers(tmp_path, pipeline):
    nlp = spacy.blank("en")
    texts = ["First doc here.", "", "Third doc, after an empty one."]
    DocBin(docs=[nlp(t) for t in texts]).to_disk(tmp_path / "in.spacy")
    result = invoke("embed", tmp_path / "in.spacy", "-o", tmp_path / "out", "-m", pipeline, "-f", "npy")
    assert result.exit_code == 0, result.stderr
    assert_same_docs(read_output(tmp_path / "out"), expected(pipeline, texts))
    assert manifest_of(tmp_path / "out")["input"]["kind"] == "docbin"


def test_a_docbin_inputs_own_line_numbers_are_replaced_with_a_warning(tmp_path):
    """The output's "line" is a doc's position in INPUT; a "line" the docs carried
    (an earlier embed's shard: lines of its own input) was replaced without a word.
    Only the docs that are embedded and whose own "line" differs are counted."""
    nlp = spacy.blank("en")
    docs = [nlp(t) for t in ["One.", "", "Three.", "Four.", "Five."]]
    docs[0].user_data["line"] = 1  # (its position already: nothing is lost)
    docs[1].user_data["line"] = 9  # (blank: not embedded)
    docs[2].user_data["line"] = 40
    docs[3].user_data["line"] = True  # (a bool, not the number 1)
    docs[4].user_data["line"] = numpy.int64(5)  # (its position: nothing is lost)
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "in.spacy")
    with pytest.warns(UserWarning) as told:
        open_input(str(tmp_path / "in.spacy"))
    assert [str(w.message) for w in told] == [
        f"INPUT {tmp_path / 'in.spacy'}: 2 docs carry a user_data['line'] of their own (doc 3: 40), replaced in the "
        "output by the doc's 1-based position in INPUT; copy it to another key first to keep it"]
    del docs[2].user_data["line"]
    docs[3].user_data["line"] = "4"
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "one.spacy")
    with pytest.warns(UserWarning, match=r": 1 doc carries a user_data\['line'\] of its own \(doc 4: '4'\),"):
        open_input(str(tmp_path / "one.spacy"))
    del docs[3].user_data["line"]
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "none.spacy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_input(str(tmp_path / "none.spacy"))


def _interrupt_at_second_commit(monkeypatch, exc):
    """The second shard's files get written, but its ledger line never does (a kill at the worst moment)."""
    commit = Run.commit

    def interrupted(self, shard):
        if self.committed.shards:
            raise exc
        commit(self, shard)

    monkeypatch.setattr(Run, "commit", interrupted)


@pytest.mark.parametrize("fmt", ["docbin", "npy"])
def test_interrupted_run_is_not_complete_and_resume_finishes_it(tmp_path, corpus, pipeline, monkeypatch, fmt):
    args = ["embed", corpus, "-m", pipeline, "-f", fmt, "-s", "2"]
    reference = invoke(*args, "-o", tmp_path / "ref")
    assert reference.exit_code == 0, reference.stderr
    out, partial = tmp_path / "out", tmp_path / ".out.partial"

    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        result = invoke(*args, "-o", out)
    assert result.exit_code == 130
    assert last_line(result.stderr) == "error: interrupted"
    assert f"2 docs (input lines 1-3) are kept in {partial}; rerun with --resume" in result.stderr
    assert not out.exists() and partial.is_dir() and read_manifest(partial) is None
    with (partial / "ledger.jsonl").open("a") as f:
        f.write('{"shard": 1, "first_li')  # a torn ledger line is not a commit

    refused = invoke(*args, "-o", out)
    assert refused.exit_code == 2
    assert last_line(refused.stderr) == (
        f"error: an interrupted run left {partial}; pass --resume to continue it or --overwrite to start over"
    )
    resumed = invoke(*args, "-o", out, "-b", "5", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run; wrote 7 docs")
    assert not partial.exists()
    assert_same_docs(read_output(out), read_output(tmp_path / "ref"))
    got, ref = manifest_of(out), manifest_of(tmp_path / "ref")
    for key in ("created", "run"):
        got.pop(key), ref.pop(key)
    assert got == ref
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())


def test_a_resumed_run_writes_the_bytes_of_an_uninterrupted_one(tmp_path, pipeline, monkeypatch):
    """With shards of 3 docs in batches of 2, a run resumed at the second shard makes the batches an
    uninterrupted run makes (each shard's own), so the same vectors to the last bit, and the same files."""
    rng = numpy.random.default_rng(1)
    words = "the dog ran to a park and some tests were run again on it".split()
    lines = [" ".join(rng.choice(words, size=int(rng.integers(3, 30)))) for _ in range(11)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf8")
    args = ["embed", corpus, "-m", pipeline, "-f", "npy", "-s", "3", "-b", "2"]
    assert invoke(*args, "-o", tmp_path / "ref").exit_code == 0
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 3 docs kept from the interrupted run; wrote 11 docs")
    for name in ("vectors.npy", "docs.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_an_interrupt_once_a_ledger_line_is_durable_keeps_its_shard(tmp_path, corpus, pipeline, monkeypatch):
    """Ctrl-C arriving as `commit` returns from the ledger's fsync (the line
    durable, not yet counted): the partial directory was removed, and the
    committed shard with it (found by a review helper)."""
    args = ["embed", corpus, "-m", pipeline, "-s", "2"]
    assert invoke(*args, "-o", tmp_path / "ref").exit_code == 0
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    commit = Run.commit

    def interrupted(self, shard):
        counted = list(self.committed.shards)
        commit(self, shard)
        self.committed.shards[:] = counted  # (what the run had counted when the signal came)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Run, "commit", interrupted)
        result = invoke(*args, "-o", out)
    assert result.exit_code == 130
    assert f"2 docs (input lines 1-3) are kept in {partial}; rerun with --resume" in result.stderr
    resumed = invoke(*args, "-o", out, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run")
    assert_same_docs(read_output(out), read_output(tmp_path / "ref"))


def test_failure_before_the_first_commit_leaves_nothing(tmp_path, corpus, pipeline, monkeypatch):
    monkeypatch.setattr(Run, "commit", lambda self, shard: (_ for _ in ()).throw(OSError(28, "No space left")))
    result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-s", "2")
    assert result.exit_code == 1
    assert last_line(result.stderr) == (
        "error: OSError: [Errno 28] No space left (--verbose shows the traceback)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--overwrite"]])
def test_a_partial_run_with_nothing_committed_is_discarded_by_the_next_run(tmp_path, corpus, pipeline, monkeypatch,
                                                                           flags):
    """With any flag, and other settings (docs/cli.md's table): --resume refused it
    as "started with other settings", though it held nothing to continue."""
    with monkeypatch.context() as patch:  # as if killed before the first commit: nothing cleans up
        patch.setattr(Run, "commit", lambda self, shard: (_ for _ in ()).throw(KeyboardInterrupt()))
        patch.setattr(Run, "abandon", lambda self: self._release())
        assert invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline).exit_code == 130
    assert (tmp_path / ".out.partial").is_dir()
    result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-f", "npy", *flags)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "out"]
    assert read_manifest(tmp_path / "out")["run"]["format"] == "npy"


def test_interrupted_at_the_final_rename_resume_only_renames(tmp_path, corpus, pipeline, monkeypatch):
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    rename = os.rename

    def failing_rename(src, dst):
        if Path(src) == partial:
            raise KeyboardInterrupt
        rename(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", failing_rename)
        assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", "npy").exit_code == 130
    assert not out.exists() and read_manifest(partial) is not None
    with monkeypatch.context() as patch:
        patch.setattr(embed_cli, "build_pipeline", None)  # no model: only the rename
        resumed = invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", "npy", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith(f"resumed: {N_DOCS} docs kept from the interrupted run; "
                                                f"wrote {N_DOCS} docs")  # (what the manifest written says)
    assert_same_docs(read_output(out), expected(pipeline, LINES))


def test_a_run_in_progress_is_never_touched_and_resume_without_anything_to_resume_runs(
    tmp_path, corpus, pipeline, monkeypatch
):
    fcntl = pytest.importorskip("fcntl")
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-s", "2").exit_code == 130
    partial = tmp_path / ".out.partial"
    with (partial / ".lock").open("a") as lock:  # as if another embed were still writing it
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for flag in ("--resume", "--overwrite"):
            result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, flag)
            assert result.exit_code == 2
            assert last_line(result.stderr) == f"error: another embed run is writing {partial}"
    assert (partial / "ledger.jsonl").read_text().count("\n") == 1
    fresh = invoke("embed", corpus, "-o", tmp_path / "new", "-m", pipeline, "--resume")
    assert fresh.exit_code == 0 and last_line(fresh.stderr).startswith("wrote 7 docs")


@pytest.mark.parametrize("flags", [(), ("--resume",), ("--overwrite",)])
@pytest.mark.parametrize("kind", ["directory", "file"])
def test_something_of_the_user_s_at_the_partial_path_is_never_removed(tmp_path, corpus, pipeline, flags, kind):
    """A directory or file at OUTPUT's partial path that no embed run made (no
    run.json, no manifest) is in the way: the run stops, naming it, and leaves
    it as it is, even with --overwrite (which discards interrupted runs, not
    the user's files)."""
    partial = tmp_path / ".out.partial"
    if kind == "directory":
        partial.mkdir()
        (partial / "notes.txt").write_text("mine", encoding="utf8")
    else:
        partial.write_text("mine", encoding="utf8")
    result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, *flags)
    assert result.exit_code == 2, result.stderr
    assert last_line(result.stderr) == (
        f"error: {partial} is in the way and is not a spacy-ctxembed partial run; remove it")
    assert (partial / "notes.txt" if kind == "directory" else partial).read_text(encoding="utf8") == "mine"
    assert not (tmp_path / "out").exists()


def test_a_run_that_waited_for_a_lock_another_run_has_just_replaced_is_refused(tmp_path, corpus, pipeline, monkeypatch):
    """Run C opens a stale partial's lock; before C's flock, run B takes it,
    discards the stale partial and starts its own under the same name. C then
    holds the lock of a deleted file: it must not take B's directory for stale
    (it removed it, and both runs wrote into one directory)."""
    fcntl = pytest.importorskip("fcntl")
    with monkeypatch.context() as patch:  # a stale partial with nothing committed, as after kill -9
        patch.setattr(Run, "commit", lambda self, shard: (_ for _ in ()).throw(KeyboardInterrupt()))
        patch.setattr(Run, "abandon", lambda self: self._release())
        assert invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline).exit_code == 130
    partial = tmp_path / ".out.partial"
    run_json = (partial / "run.json").read_bytes()
    real_flock, held = fcntl.flock, []

    def b_runs_first(fd, operation):
        if not held:  # run B, between C's open and C's flock
            shutil.rmtree(partial)
            partial.mkdir()
            (partial / "run.json").write_bytes(run_json)
            (partial / "ledger.jsonl").touch()  # B has just started: nothing committed yet
            (partial / "b-was-here").touch()
            held.append((partial / ".lock").open("a"))
            real_flock(held[0].fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        real_flock(fd, operation)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(output_module.fcntl, "flock", b_runs_first)
            result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline)
        assert result.exit_code == 2, result.stderr
        assert last_line(result.stderr) == f"error: another embed run is writing {partial}"
        assert (partial / "b-was-here").exists()  # B's run, untouched
        assert not (tmp_path / "out").exists()
    finally:
        for f in held:
            f.close()


def test_a_reader_of_an_output_replaced_midway_gets_an_error_not_two_runs(tmp_path, corpus, pipeline, want):
    """`iter_docs` opened each shard by path as it came to it: an `--overwrite`
    run renamed into place meanwhile gave the reader the first run's first
    shards and the second run's later ones (other shard sizes: docs lost and
    repeated, silently)."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2").exit_code == 0
    reader = iter_docs(out)
    first = [next(reader).user_data["line"] for _ in range(3)]  # into the second shard
    replaced = invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "3", "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    with pytest.raises(ValueError, match="was replaced or removed while it was being read"):
        for doc in reader:
            first.append(doc.user_data["line"])
    assert first == [line for line, _, _ in want][: len(first)]  # what it did yield was the first run's, in order
    assert_same_docs(read_output(out), want)  # and the new output reads whole


def test_npy_records_keep_texts_with_unicode_line_separators(tmp_path, pipeline):
    """docs.jsonl is split at its newlines only: JSON leaves U+2028, U+0085 and
    the like unescaped inside a text."""
    lines = ["one\u2028two three", "four\x85five", "six\x1cseven"]
    (tmp_path / "in.txt").write_text("\n".join(lines), encoding="utf8")
    result = invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "out", "-m", pipeline, "-f", "npy")
    assert result.exit_code == 0, result.stderr
    vectors, records = load_npy(tmp_path / "out")
    assert [r["text"] for r in records] == lines
    assert_same_docs(read_output(tmp_path / "out"), expected(pipeline, lines))
    assert isinstance(vectors, numpy.memmap) and not vectors.flags.writeable


def test_output_dot_in_an_empty_directory_runs_and_resumes(tmp_path, corpus, pipeline, want, monkeypatch):
    """`-o .`: the partial run is a sibling named after the directory. (It was `..partial`
    inside OUTPUT: the whole corpus was embedded, then the run failed, unresumable.)"""
    for name in ("fresh", "resumed"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "fresh")
    result = invoke("embed", corpus, "-o", ".", "-m", pipeline, "-s", "2")
    assert result.exit_code == 0, result.stderr
    assert_same_docs(read_output(tmp_path / "fresh"), want)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "fresh", "resumed"]

    monkeypatch.chdir(tmp_path / "resumed")
    args = ["embed", corpus, "-o", ".", "-m", pipeline, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*args).exit_code == 130
    partial = tmp_path / ".resumed.partial"
    assert partial.is_dir() and not any((tmp_path / "resumed").iterdir())
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run; wrote 7 docs")
    assert_same_docs(read_output(tmp_path / "resumed"), want)
    assert not partial.exists()


def test_a_symbolic_link_as_output_is_refused(tmp_path, corpus):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    result = invoke("embed", corpus, "-o", tmp_path / "link")
    assert result.exit_code == 2
    link = tmp_path / "link"
    assert last_line(result.stderr) == f"error: --output {link} is a symbolic link; give the path it points to"


def test_complete_output_is_refused_kept_until_overwritten_and_resume_is_a_no_op(
    tmp_path, corpus, pipeline, monkeypatch
):
    out = tmp_path / "out"
    first = invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2")
    assert first.exit_code == 0, first.stderr
    before = read_output(out)
    other = tmp_path / "other.txt"
    other.write_text("A different corpus.\nWith two lines.\nAnd three.\n", encoding="utf8")

    refused = invoke("embed", other, "-o", out, "-m", pipeline)
    assert refused.exit_code == 2
    assert last_line(refused.stderr) == (
        f"error: --output {out} already holds a complete output (7 docs); "
        "pass --overwrite to replace it, or choose another path"
    )
    again = invoke("embed", corpus, "-o", out, "-m", pipeline, "--resume")
    assert again.exit_code == 0 and last_line(again.stderr).startswith(f"nothing to do: {out} is already complete")
    different = invoke("embed", other, "-o", out, "-m", pipeline, "--resume")
    assert different.exit_code == 2
    # (What differs, with its values: the records and checksums of both inputs.)
    sha = {path: hashlib.sha256(path.read_bytes()).hexdigest()[:12] for path in (corpus, other)}
    assert (f"a complete output of a different run (different input: 10 records, sha256 {sha[corpus]} then, "
            f"3 records, sha256 {sha[other]} now); pass --overwrite") in different.stderr

    # An interrupted --overwrite leaves the old output as it was...
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        interrupted = invoke("embed", other, "-o", out, "-m", pipeline, "-s", "1", "--overwrite")
    assert interrupted.exit_code == 130
    assert_same_docs(read_output(out), before)
    # ... until the new run is complete.
    resumed = invoke("embed", other, "-o", out, "-m", pipeline, "-s", "1", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_docs(read_output(out), expected(pipeline, other.read_text().split("\n")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "other.txt", "out"]


def test_resume_refuses_an_interrupted_run_of_another_input(tmp_path, corpus, pipeline, monkeypatch):
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-s", "2").exit_code == 130
    was = hashlib.sha256(corpus.read_bytes()).hexdigest()[:12]
    corpus.write_text("Changed text.\n", encoding="utf8")
    result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-s", "2", "--resume")
    assert result.exit_code == 2
    now = hashlib.sha256(corpus.read_bytes()).hexdigest()[:12]
    assert (f"was started with other settings (different input: 10 records, sha256 {was} then, 1 record, "
            f"sha256 {now} now); pass --overwrite") in last_line(result.stderr)
    restarted = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "--overwrite")
    assert restarted.exit_code == 0, restarted.stderr
    assert [text for _, text, _ in read_output(tmp_path / "out")] == ["Changed text."]


def test_resume_refuses_an_interrupted_run_of_another_layout_version(tmp_path, corpus, pipeline, monkeypatch):
    """A partial run whose run.json records another layout_version (written
    by another spacy-ctxembed, whose shards and ledger are laid out
    otherwise) but the same settings: --resume, held to the settings alone,
    appended this version's shards to it, and the output mixed two layouts
    under one manifest."""
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-s", "2").exit_code == 130
    run_json = output_module.partial_path(tmp_path / "out") / output_module.RUN
    record = json.loads(run_json.read_text(encoding="utf8"))
    record["layout_version"] += 1
    run_json.write_text(json.dumps(record), encoding="utf8")
    result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-s", "2", "--resume")
    assert result.exit_code == 2
    assert "was started with other settings" in last_line(result.stderr)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_another_model_at_the_same_path(tmp_path, corpus, pipeline, tiny_bert_dir, monkeypatch):
    """The model is checksummed: the same --model path holding another pipeline is another
    run (its vectors would be mixed with the first model's)."""
    model, partial = tmp_path / "model", tmp_path / ".out.partial"
    shutil.copytree(pipeline, model)
    args = ["embed", corpus, "-o", tmp_path / "out", "-m", model, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*args).exit_code == 130
    shutil.rmtree(model)
    make_nlp(tiny_bert_dir, pooling="first").to_disk(model)
    refused = invoke(*args, "--resume")
    assert refused.exit_code == 2
    # (The pipeline's checksums, then and now.)
    said = re.fullmatch(
        re.escape(f"error: the interrupted run in {partial} was started with other settings ") +
        r"\(different model: same name, other files \(files ([0-9a-f]{12}) then, ([0-9a-f]{12}) now\)\); "
        r"pass --overwrite to start over", last_line(refused.stderr))
    assert said is not None and said[1] != said[2]
    # A run recorded before models were checksummed cannot be compared: refused the same way.
    record = json.loads((partial / "run.json").read_text())
    del record["run"]["pipeline"]
    (partial / "run.json").write_text(json.dumps(record))
    assert "(model not checksummed: started by an older spacy-ctxembed); pass --overwrite" in last_line(
        invoke(*args, "--resume").stderr)
    restarted = invoke(*args, "--overwrite")
    assert restarted.exit_code == 0, restarted.stderr
    assert_same_docs(read_output(tmp_path / "out"), expected(model, LINES))


def test_a_model_replaced_between_its_checksum_and_its_load_is_refused(tmp_path, corpus, pipeline, tiny_bert_dir,
                                                                        monkeypatch):
    """`embed` checksums --model when it plans the run and loads it after: a folder replaced
    in between (`spacy train` saving model-best there) gave another model's vectors under the
    first one's checksum, exit 0; resumed, two models' vectors in one output. The Ray actors
    checked it; the single process now does too. The folder put back, the run resumes."""

    from .test_cli_support import error_lines

    model = tmp_path / "model"
    shutil.copytree(pipeline, model)
    args = ["embed", corpus, "-o", tmp_path / "out", "-m", model, "-s", "2"]
    build = embed_cli.build_pipeline

    def replaced_then_built(**kwargs):
        shutil.rmtree(model)
        make_nlp(tiny_bert_dir, pooling="first").to_disk(model)
        return build(**kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(embed_cli, "build_pipeline", replaced_then_built)
        failed = invoke(*args)
    assert failed.exit_code == 1
    assert error_lines(failed.stderr)[-1] == (
        f"error: --model {model}: its files changed after this run started (their checksum differs from the one "
        "the run recorded), so its shards would mix two models' vectors; rerun once it stays put (a model changed "
        "on purpose makes another run: --overwrite)")
    assert not (tmp_path / "out").exists()
    shutil.rmtree(model)
    shutil.copytree(pipeline, model)
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_docs(read_output(tmp_path / "out"), expected(pipeline, LINES))


def test_an_output_inside_the_model_folder_runs_and_resumes(tmp_path, corpus, pipeline, monkeypatch):
    """`embed -m . -o vectors`: the run's own files in the model's folder read as a
    change of the model, once it was hashed again after loading (every run stopped)
    and on --resume (refused as another model)."""
    model = tmp_path / "model"
    shutil.copytree(pipeline, model)
    args = ["embed", corpus, "-o", model / "vectors", "-m", model, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*args).exit_code == 130
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_docs(read_output(model / "vectors"), expected(pipeline, LINES))
    done = invoke(*args, "--resume")
    assert done.exit_code == 0 and "nothing to do" in done.stderr
    # Two runs into one model folder: one interrupted, another run to its end, the first resumed.
    first = ["embed", corpus, "-o", model / "train", "-m", model, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*first).exit_code == 130
    other = invoke("embed", corpus, "-o", model / "dev", "-m", model, "-f", "npy")
    assert other.exit_code == 0, other.stderr
    resumed = invoke(*first, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert_same_docs(read_output(model / "train"), expected(pipeline, LINES))


def _interrupted_config_run(tmp_path, corpus, config, monkeypatch):
    """`embed -c` of `config`, interrupted at its second shard: (its arguments, the
    model files its run recorded)."""
    config.to_disk(tmp_path / "embed.cfg")
    args = ["embed", corpus, "-o", tmp_path / "out", "-c", tmp_path / "embed.cfg", "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*args).exit_code == 130
    return args, json.loads((tmp_path / ".out.partial" / "run.json").read_text())["run"]["pipeline"]["files"]


def test_resume_refuses_other_model_files_named_by_the_config(tmp_path, corpus, tiny_bert_dir, monkeypatch):
    """With --config, the checksum was of the config's text alone: the model
    directory it names could hold other weights on --resume, and the output
    would mix two models' vectors."""
    from transformers import AutoModel

    model = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, model)
    config = make_nlp(model).config.copy()
    config["paths"]["bert"] = str(model)  # through a variable, as configs usually name it
    config["components"]["ctxembed_bert"]["model"]["encoder"]["name"] = "${paths.bert}"
    args, recorded = _interrupted_config_run(tmp_path, corpus, config, monkeypatch)
    assert list(recorded) == [str(model.resolve())]
    other = AutoModel.from_pretrained(model)
    with torch.no_grad():
        other.embeddings.word_embeddings.weight.mul_(2.0)
    other.save_pretrained(model)
    refused = invoke(*args, "--resume")
    assert refused.exit_code == 2
    assert (f"(different model: same name, other files (the files its config names ({model.resolve()}))); "
            "pass --overwrite") in last_line(refused.stderr)


def test_resume_refuses_another_revision_of_a_hub_model_in_the_cache(tmp_path, corpus, tiny_bert_dir, monkeypatch):
    """A `name` that is a hub name (read from the local Hugging Face cache) was not
    checksummed: a newer revision cached between the interruption and --resume
    (refs/main moved) gave one output of two models' vectors."""
    from transformers import AutoModel

    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny"
    for revision in ("aaaa", "bbbb"):
        shutil.copytree(tiny_bert_dir, repo / "snapshots" / revision)
    other = AutoModel.from_pretrained(repo / "snapshots" / "bbbb")
    with torch.no_grad():
        other.embeddings.word_embeddings.weight.mul_(2.0)
    other.save_pretrained(repo / "snapshots" / "bbbb")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaaa")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # (read at its import)
    config = make_nlp(tiny_bert_dir).config.copy()
    config["components"]["ctxembed_bert"]["model"]["encoder"]["name"] = "someone/tiny"
    args, recorded = _interrupted_config_run(tmp_path, corpus, config, monkeypatch)
    assert list(recorded) == [str((repo / "snapshots" / "aaaa").resolve())]
    (repo / "refs" / "main").write_text("bbbb")
    refused = invoke(*args, "--resume")
    assert refused.exit_code == 2
    assert "was started with other settings (different model" in last_line(refused.stderr)
    (repo / "refs" / "main").write_text("aaaa")  # the revision it was started with: it goes on
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    make_nlp(repo / "snapshots" / "aaaa").to_disk(tmp_path / "reference")
    assert_same_docs(read_output(tmp_path / "out"), expected(tmp_path / "reference", LINES))


@pytest.mark.parametrize("fmt", ["docbin", "npy"])
def test_resume_refuses_docs_embedded_from_an_input_edited_mid_run_and_put_back(tmp_path, corpus, pipeline,
                                                                                 monkeypatch, fmt):
    """The input edited after it was hashed, while its first shards were embedded:
    the run fails at its end, saying --resume continues with the input as it was.
    Put back, --resume was accepted, and the output held the edited text's docs
    under the original's checksum. The kept docs are checked against the lines
    they were embedded from."""

    from .test_cli_support import error_lines

    opened, original = embed_cli.open_input, corpus.read_bytes()

    def edited_while_read(*args, **kwargs):
        inp = opened(*args, **kwargs)
        corpus.write_bytes(original.replace(b"nice out", b"cold out"))  # (same length: only the hash tells)
        return inp

    args = ["embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "-f", fmt, "-s", "2"]
    with monkeypatch.context() as patch:
        patch.setattr(embed_cli, "open_input", edited_while_read)
        failed = invoke(*args)
    assert failed.exit_code == 1
    assert error_lines(failed.stderr)[-1].endswith("changed while it was being embedded; the output was not finished")
    corpus.write_bytes(original)
    refused = invoke(*args, "--resume")
    assert refused.exit_code == 2
    assert re.fullmatch(
        rf"error: the \d+ docs kept in {re.escape(str(tmp_path / '.out.partial'))} were embedded from other text "
        rf"than INPUT {re.escape(str(corpus))} has in lines 1-\d+ \(it was changed while they were embedded, and "
        r"put back since\); pass --overwrite to start over", last_line(refused.stderr)), refused.stderr
    restarted = invoke(*args, "--overwrite")
    assert restarted.exit_code == 0, restarted.stderr
    assert_same_docs(read_output(tmp_path / "out"), expected(pipeline, LINES))


def test_config_files_are_the_paths_components_are_built_from(tmp_path, monkeypatch):
    from thinc.api import Config

    from spacy_ctxembed.fileio import config_files

    for name in ("options.json", "weights.hdf5", "pipeline", "vocab"):
        (tmp_path / name).touch() if "." in name else (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)  # relative paths are read from the working directory, as spaCy does
    config = Config().from_str(f"""
        [paths]
        weights = "{tmp_path / 'weights.hdf5'}"
        [components]
        [components.elmo]
        [components.elmo.model]
        [components.elmo.model.encoder]
        options_file = "options.json"
        weight_file = ${{paths.weights}}
        [components.tagger]
        source = "pipeline"
        [components.other]
        [components.other.model]
        name = "bert-base-uncased"
        vocab_file = "vocab"
        """, interpolate=False)
    assert config_files(config) == sorted(tmp_path / n for n in ("options.json", "weights.hdf5", "pipeline"))


def test_a_bare_hub_name_is_checksummed_as_the_cached_model_it_loads_even_where_a_file_has_it(
        tmp_path, tiny_bert_dir, monkeypatch):
    """The encoder loads a bare `name` from the hub cache even where a file in the working
    directory has that name; the run's checksum hashed that unrelated file instead, so a
    newer revision cached before --resume went unseen."""
    import huggingface_hub.constants
    from thinc.api import Config

    from spacy_ctxembed.fileio import config_files

    cache = tmp_path / "hub"
    snapshot = cache / "models--tinyname" / "snapshots" / "aaaa"
    shutil.copytree(tiny_bert_dir, snapshot)
    (cache / "models--tinyname" / "refs").mkdir()
    (cache / "models--tinyname" / "refs" / "main").write_text("aaaa")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # (read at its import)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "tinyname").write_text("an unrelated file")
    monkeypatch.chdir(tmp_path / "work")
    config = Config().from_str("""
        [components]
        [components.bert]
        [components.bert.model]
        [components.bert.model.encoder]
        name = "tinyname"
        """)
    assert config_files(config) == [snapshot.resolve()]


@pytest.mark.slow
def test_killed_process_leaves_no_complete_output_and_resumes(tmp_path, pipeline):
    words = "the a cat dog sat ran on under mat park station morning quickly tests yesterday".split()
    rng = numpy.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 25))) + "." for _ in range(3000)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    args = ["embed", str(tmp_path / "in.txt"), "-o", str(out), "-m", str(pipeline), "-s", "100"]
    process = subprocess.Popen([sys.executable, "-m", "spacy_ctxembed", *args], stderr=subprocess.DEVNULL)
    ledger = partial / "ledger.jsonl"
    while process.poll() is None and not (ledger.exists() and ledger.stat().st_size):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.returncode == 0:
        pytest.skip("the run finished before it could be killed")
    assert not out.exists() and read_manifest(partial) is None
    kept = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert kept and kept[0]["first_line"] == 1
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"resumed: {sum(s['docs'] for s in kept)} docs kept" in last_line(resumed.stderr)
    reference = invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "ref", "-m", pipeline, "-s", "100")
    assert reference.exit_code == 0, reference.stderr
    got = read_output(out)
    assert [line for line, _, _ in got] == list(range(1, 3001))
    assert_same_docs(got, read_output(tmp_path / "ref"))


class FakeGpuArray:
    """Looks like a cupy array to `to_host`: a CUDA array interface and `.get()`."""

    __cuda_array_interface__ = {"shape": (), "typestr": "<f4", "version": 3}

    def __init__(self, array):
        self.array = array

    def get(self):
        return self.array


def test_gpu_arrays_in_user_data_go_to_the_host_wherever_they_are():
    nlp = spacy.blank("en")
    doc = nlp("two tokens")
    a, b, c = (numpy.full((2, 3), i, dtype="float32") for i in range(3))
    doc.user_data[("._.", "anything", 0, 10)] = {"outputs": {"x": {"vectors": FakeGpuArray(a), "n": 3}}}
    doc.user_data["nested"] = [FakeGpuArray(b), (FakeGpuArray(c), "text", {"plain": c})]
    doc_to_host(doc)
    store = doc.user_data[("._.", "anything", 0, 10)]
    assert type(store["outputs"]["x"]["vectors"]) is numpy.ndarray and store["outputs"]["x"]["n"] == 3
    nested = doc.user_data["nested"]
    assert type(nested[0]) is numpy.ndarray and type(nested[1][0]) is numpy.ndarray and nested[1][1] == "text"
    restored = next(DocBin(store_user_data=True, docs=[doc]).get_docs(nlp.vocab))  # serializable now
    numpy.testing.assert_array_equal(restored.user_data["nested"][1][0], c)
    assert to_host({"get": "a dict is not an array"}) == {"get": "a dict is not an array"}


def test_an_input_changed_mid_run_is_not_offered_a_plain_resume(tmp_path, corpus, pipeline, monkeypatch):
    """The note said "rerun with --resume to continue", which --resume then refused (another input)."""

    from .test_cli_support import error_lines

    opened = embed_cli.open_input

    def changed_while_read(*args, **kwargs):
        inp = opened(*args, **kwargs)
        with open(corpus, "ab") as f:  # after it was hashed: the read's hash differs at its end
            f.write(b"\nOne more line.")
        return inp

    monkeypatch.setattr(embed_cli, "open_input", changed_while_read)
    result = invoke("embed", corpus, "-o", tmp_path / "out", "-m", pipeline, "--shard-size", "2", "-b", "2")
    assert result.exit_code == 1
    lines = error_lines(result.stderr)
    assert lines[-2].endswith("are kept in " + str(tmp_path / ".out.partial") + "; --resume continues them only "
                              "with the input as it was, and only if they were all read before it changed (it "
                              "checks); else rerun with --overwrite to start over"), lines
    assert lines[-1] == f"error: INPUT {corpus} changed while it was being embedded; the output was not finished"


@pytest.mark.parametrize("fmt, lost", [("docbin", "shard-000001.spacy"), ("npy", "vectors.npy")])
def test_resume_of_a_complete_output_with_a_file_deleted_says_it_is_damaged(tmp_path, corpus, pipeline, fmt, lost):
    """It said "nothing to do: already complete", and reading it then failed as if it were being replaced."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", fmt, "-s", "2").exit_code == 0
    (out / lost).unlink()
    again = invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", fmt, "-s", "2", "--resume")
    assert again.exit_code == 2
    assert last_line(again.stderr) == (
        f"error: --output {out} is damaged: {lost} is missing; pass --overwrite to embed it again")
    again = invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", fmt, "-s", "2", "--overwrite")
    assert again.exit_code == 0 and (out / lost).is_file()


@pytest.mark.parametrize("damage", ["last doc cut", "a doc lost", "a doc repeated"])
def test_a_damaged_docs_file_of_an_npy_output_is_named(tmp_path, corpus, pipeline, damage):
    """docs.jsonl was never checked: cut at a line's end, it loaded with fewer docs
    (the rest of the rows read by no doc), and --resume called the output complete."""
    out = tmp_path / "out"
    args = ["embed", corpus, "-o", out, "-m", pipeline, "-f", "npy"]
    assert invoke(*args).exit_code == 0
    docs = out / "docs.jsonl"
    lines = docs.read_bytes().splitlines(keepends=True)
    docs.write_bytes(b"".join({"last doc cut": lines[:-1], "a doc lost": lines[:1] + lines[2:],
                               "a doc repeated": lines + lines[-1:]}[damage]))
    with pytest.raises(ValueError) as error:
        load_npy(out)
    n_docs = len(lines) + (1 if damage == "a doc repeated" else -1)
    assert re.fullmatch(rf"{re.escape(str(out))}: docs\.jsonl holds {n_docs} docs whose rows do not make the "
                        rf"manifest's {len(lines)} docs of \d+ rows: the file is damaged; embed the input again",
                        str(error.value)), str(error.value)
    again = invoke(*args, "--resume")
    assert again.exit_code == 2
    assert re.fullmatch(rf"error: --output {re.escape(str(out))} is damaged: docs\.jsonl holds [\d,]+ bytes, where "
                        r"its manifest says [\d,]+; pass --overwrite to embed it again", last_line(again.stderr))


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("cut", [-4, 8])
def test_load_npy_of_a_cut_or_padded_vectors_file_names_it(tmp_path, corpus, pipeline, mmap, cut):
    """A vectors.npy shorter than its header says gave numpy's "mmap length is
    greater than file size" (or "cannot reshape"), naming neither file nor
    cause; one with bytes beyond its rows was read without a word."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", "npy").exit_code == 0
    vectors = out / "vectors.npy"
    nbytes, data = numpy.load(vectors).nbytes, vectors.read_bytes()
    vectors.write_bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    with pytest.raises(ValueError) as error:
        load_npy(out, mmap=mmap)
    assert str(error.value).startswith(f"{out}: vectors.npy holds {nbytes + cut:,} bytes of rows, its header says (")
    assert str(error.value).endswith("the file is damaged; embed the input again")


@pytest.mark.parametrize("cut", [-4, 8])
def test_resume_of_a_complete_output_with_a_cut_vectors_file_says_it_is_damaged(tmp_path, corpus, pipeline, cut):
    """It said "nothing to do: already complete" of an output that no reader could read."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", "npy").exit_code == 0
    vectors = out / "vectors.npy"
    data, (rows, width) = vectors.read_bytes(), numpy.load(vectors).shape
    vectors.write_bytes(data[:cut] if cut < 0 else data + b"\0" * cut)
    again = invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", "npy", "--resume")
    assert again.exit_code == 2
    assert last_line(again.stderr) == (
        f"error: --output {out} is damaged: vectors.npy holds {len(data) + cut:,} bytes, where its {rows:,} rows of "
        f"{width} take {len(data):,}; pass --overwrite to embed it again")


def test_iter_docs_of_a_cut_shard_names_it(tmp_path, corpus, pipeline):
    """spaCy's E1014 ("doesn't look like ... DocBin format ... convert it") named no file."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2").exit_code == 0
    shard = out / "shard-000001.spacy"
    shard.write_bytes(shard.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out))}: shard-000001.spacy cannot be read as a DocBin "
                                         r"\(ValueError\): the file is damaged; embed the input again$"):
        list(iter_docs(out))
    # --resume said "nothing to do: already complete" of it (only a deleted shard was seen).
    again = invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2", "--resume")
    assert again.exit_code == 2
    assert re.fullmatch(rf"error: --output {re.escape(str(out))} is damaged: shard-000001\.spacy holds 40 bytes, "
                        r"where its manifest says [\d,]+; pass --overwrite to embed it again", last_line(again.stderr))


def test_a_docbin_input_with_outputs_of_an_earlier_run_gets_this_runs_only(tmp_path, corpus, pipeline, tiny_bert_dir):
    """An earlier embed's shard as INPUT, embedded with another pipeline: its
    docs' outputs (here of a component named "other", another model) were
    carried into the new output beside this run's, as if this run made them.
    They are dropped; the docs' other user data stays; the vectors are this
    pipeline's, as the pipeline gives them directly; and the same input gives
    the same shard bytes twice (stores are keyed by their content)."""
    other = spacy.blank("en")
    other.add_pipe("ctxembed_bert", name="other", config={"model": {"encoder": {"name": str(tiny_bert_dir),
                                                                                 "layers": [0]}}})
    other.initialize()
    docs = list(other.pipe(["An earlier run.", "Its second doc."]))
    for doc in docs:
        doc.user_data["mine"] = "kept"
    # One as 0.1's embed wrote it: plain extension values, no store.
    docs.append(other.make_doc("Written by 0.1."))
    docs[-1].user_data.update({"mine": "kept", ("._.", "ctx_vectors", None, None): numpy.ones((4, 3), "f"),
                               ("._.", "ctx_layers", None, None): numpy.ones((1, 4, 3), "f")})
    DocBin(docs=docs, store_user_data=True).to_disk(tmp_path / "earlier.spacy")
    for out in ("out", "again"):
        result = invoke("embed", tmp_path / "earlier.spacy", "-o", tmp_path / out, "-m", pipeline)
        assert result.exit_code == 0, result.stderr
    nlp = spacy.load(pipeline)
    (shard,) = sorted((tmp_path / "out").glob("shard-*.spacy"))
    got = list(DocBin(store_user_data=True).from_disk(shard).get_docs(nlp.vocab))
    assert [doc.text for doc in got] == ["An earlier run.", "Its second doc.", "Written by 0.1."]
    for doc in got:
        assert sorted(doc._.ctx_outputs) == [nlp.pipe_names[0]] and doc.user_data["mine"] == "kept"
        assert not [key for key in doc.user_data if key[:2] in (("._.", "ctx_vectors"), ("._.", "ctx_layers"))]
        numpy.testing.assert_allclose(doc._.ctx_vectors, nlp(doc.text)._.ctx_vectors, atol=1e-6)
    assert shard.read_bytes() == (tmp_path / "again" / shard.name).read_bytes()


def test_a_docbin_input_is_hashed_from_the_bytes_its_docs_are_read_from(tmp_path, monkeypatch):
    """A DocBin input was hashed, then read again: a file replaced in between had its
    docs embedded under the other file's checksum (and a resume with the first file
    put back was accepted: a DocBin's kept docs are not checked line by line)."""
    import hashlib

    from spacy_ctxembed.cli import inputs as inputs_module
    from spacy_ctxembed.cli.inputs import open_input

    nlp = spacy.blank("en")
    path = tmp_path / "in.spacy"
    DocBin(docs=[nlp(text) for text in LINES if text.strip()]).to_disk(path)
    original = path.read_bytes()
    replacement = DocBin(docs=[nlp("Another text.")]).to_bytes()

    class ReplacedOnRead(DocBin):
        """The file replaced as the docs are read (from the path or from bytes)."""

        def from_disk(self, *args, **kwargs):
            path.write_bytes(replacement)
            return super().from_disk(*args, **kwargs)

        def from_bytes(self, *args, **kwargs):
            path.write_bytes(replacement)
            return super().from_bytes(*args, **kwargs)

    monkeypatch.setattr(inputs_module, "DocBin", ReplacedOnRead)
    inp = open_input(str(path))
    assert inp.sha256 == hashlib.sha256(original).hexdigest()
    assert [doc.text for doc in inp.doc_bin.get_docs(nlp.vocab)] == [text for text in LINES if text.strip()]


def test_resume_after_several_committed_shards_carries_on_after_the_last(tmp_path, corpus, pipeline, monkeypatch):
    """Two shards committed before the interrupt: the resumed run starts after the
    second's last line (the other resume tests commit one shard, the first and
    the last at once)."""
    args = ["embed", corpus, "-m", pipeline, "-f", "npy", "-s", "2"]
    assert invoke(*args, "-o", tmp_path / "ref").exit_code == 0
    commit = Run.commit

    def interrupted(self, shard):
        if len(self.committed.shards) == 2:
            raise KeyboardInterrupt()
        commit(self, shard)

    with monkeypatch.context() as patch:
        patch.setattr(Run, "commit", interrupted)
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 4 docs kept from the interrupted run; wrote 7 docs")
    assert_same_docs(read_output(tmp_path / "out"), read_output(tmp_path / "ref"))
    got, ref = manifest_of(tmp_path / "out"), manifest_of(tmp_path / "ref")
    for key in ("created", "run"):
        got.pop(key), ref.pop(key)
    assert got == ref
    for name in ("vectors.npy", "docs.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


@pytest.mark.parametrize("output_format, name, damage", [
    ("npy", "docs.jsonl", lambda data: data[:10]),
    ("npy", "vectors.npy", lambda data: data[: output_module.NPY_HEADER_SIZE + 8]),
    ("docbin", "shard-000000.spacy", lambda data: data + b"\0" * 16),
    ("docbin", "shard-000000.spacy", lambda data: data[:-1] + bytes([data[-1] ^ 1])),  # (same size, other bytes)
])
def test_resume_redoes_a_shard_that_does_not_match_its_ledger_line(tmp_path, corpus, pipeline, monkeypatch,
                                                                   output_format, name, damage):
    """The ledger says shard 0 is committed, but its file is not what was
    committed: docs.jsonl or vectors.npy lost its end (a disk that did not keep
    it), or a docbin shard has bytes appended. The shard is not intact and is
    redone. Held to docs.jsonl alone, a cut vectors.npy was kept and the next
    rows were written where the cut left off, under shard 0's docs; held to "at
    least as long", a longer docbin shard was kept and the finished output read
    as damaged at once; a cut docs.jsonl is never padded back with NULs. Held to
    its size alone, a docbin shard of the same size with other bytes (another
    run's) was kept, and the finished output failed to read."""
    args = ["embed", corpus, "-m", pipeline, "-f", output_format, "-s", "2"]
    assert invoke(*args, "-o", tmp_path / "ref").exit_code == 0
    with monkeypatch.context() as patch:
        _interrupt_at_second_commit(patch, KeyboardInterrupt())
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    damaged = tmp_path / ".out.partial" / name
    damaged.write_bytes(damage(damaged.read_bytes()))
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "2 docs kept" not in resumed.stderr
    assert_same_docs(read_output(tmp_path / "out"), read_output(tmp_path / "ref"))
    if output_format == "npy":
        assert b"\0" not in (tmp_path / "out" / "docs.jsonl").read_bytes()
    again = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert again.exit_code == 0 and "is damaged" not in again.stderr, again.stderr


def _interrupt_after_commits(monkeypatch, n, *, in_commit=False):
    """KeyboardInterrupt once `n` shards are committed: at the next commit (its
    files written, its ledger line not), or with `in_commit` as the n-th commit
    returns (its ledger line durable, nothing written after it)."""
    commit = Run.commit

    def interrupted(self, shard):
        if in_commit and len(self.committed.shards) == n - 1:
            commit(self, shard)
            raise KeyboardInterrupt
        if len(self.committed.shards) == n:
            raise KeyboardInterrupt
        commit(self, shard)

    monkeypatch.setattr(Run, "commit", interrupted)


def test_an_npy_shard_whose_rows_end_the_vectors_file_is_kept(tmp_path, corpus, pipeline, monkeypatch):
    """Interrupted as the first shard's ledger line became durable, before any
    later row was written: vectors.npy ends exactly at that shard's rows, and
    the shard is intact (the docbin format's own test of this has no npy twin)."""
    args = ["embed", corpus, "-m", pipeline, "-f", "npy", "-s", "2"]
    assert invoke(*args, "-o", tmp_path / "ref").exit_code == 0
    with monkeypatch.context() as patch:
        _interrupt_after_commits(patch, 1, in_commit=True)
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run")
    assert_same_docs(read_output(tmp_path / "out"), read_output(tmp_path / "ref"))


def test_a_damaged_shard_drops_the_shards_after_it_too(tmp_path, corpus, pipeline, monkeypatch):
    """Resume carries on after the last kept shard: a damaged first shard with an
    intact second must not keep the second alone (its lines 1-3 would be lost)."""
    args = ["embed", corpus, "-m", pipeline, "-f", "docbin", "-s", "2"]
    assert invoke(*args, "-o", tmp_path / "ref").exit_code == 0
    with monkeypatch.context() as patch:
        _interrupt_after_commits(patch, 2)
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    first = tmp_path / ".out.partial" / "shard-000000.spacy"
    first.write_bytes(first.read_bytes()[:-1])
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 0 docs kept from the interrupted run; wrote 7 docs")
    assert_same_docs(read_output(tmp_path / "out"), read_output(tmp_path / "ref"))


def test_npy_records_list_every_token_of_their_rows_whitespace_included(tmp_path, pipeline):
    """A doc's rows start:end are one per token, whitespace tokens (zero rows)
    included: its record's tokens must be those same tokens, or a reader that
    pairs tokens with rows shifts every vector after a double space."""
    lines = ["Two  spaces and\ta tab here.", "Plain words."]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    assert invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "out", "-m", pipeline, "-f", "npy").exit_code == 0
    nlp = spacy.load(pipeline)
    records = [json.loads(line) for line in (tmp_path / "out" / "docs.jsonl").read_text("utf8").splitlines()]
    assert any(t.is_space for t in nlp.make_doc(lines[0]))  # the premise
    for record, text in zip(records, lines):
        assert record["tokens"] == [t.text for t in nlp.make_doc(text)]
        assert record["end"] - record["start"] == len(record["tokens"])
    assert_same_docs(read_output(tmp_path / "out"), expected(pipeline, lines))


def test_text_input_lines_skips_and_resume_point(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "Caf\u00e9 one\r\n  \nsecond\n".encode("utf8") + b"\xef\xbb\xbfthird\r")
    inp = open_input(str(path))
    assert (inp.kind, inp.n_records, inp.n_docs, inp.n_blank) == ("text", 4, 3, 1)
    assert inp.longest == len("Caf\u00e9 one") == 8  # characters of the text, not the 14 bytes of its raw line
    # the file's BOM is no text; one inside the file is; a final "\r" is a line ending
    assert list(inp.records(Vocab())) == [("Caf\u00e9 one", 1), ("second", 3), ("\ufeffthird", 4)]
    assert list(inp.records(Vocab(), after=3)) == [("\ufeffthird", 4)]
    assert list(inp.records(Vocab(), after=1)) == [("second", 3), ("\ufeffthird", 4)]


def test_not_utf8_error_counts_the_byte_order_mark_in_the_offset(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfab\xe9\n")
    with pytest.raises(UsageError, match=r"line 1, byte offset 5 \(0xe9\)"):
        open_input(str(path))


def test_docbin_input_resumes_after_the_last_doc_it_numbered(tmp_path):
    nlp = spacy.blank("en")
    DocBin(docs=[nlp(t) for t in ["one", "", "three", "four"]]).to_disk(tmp_path / "in.spacy")
    inp = open_input(str(tmp_path / "in.spacy"))
    assert (inp.kind, inp.n_records, inp.n_docs) == ("docbin", 4, 3)
    assert [(doc.text, n) for doc, n in inp.records(nlp.vocab)] == [("one", 1), ("three", 3), ("four", 4)]
    assert [n for _, n in inp.records(nlp.vocab, after=3)] == [4]
    assert [n for _, n in inp.records(nlp.vocab, after=1)] == [3, 4]


def test_iter_docs_refuses_a_shard_from_elsewhere_and_names_a_missing_one(tmp_path, corpus, pipeline):
    """A shard replaced by a readable copy of a sibling's (or another run's) read as the right one:
    the wrong docs, silently. Its size, and then its docs' input lines, are checked against the
    manifest; a deleted shard was said to be "replaced or removed while it was being read"."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2").exit_code == 0
    first, third = out / SHARD.format(0), out / SHARD.format(2)
    manifest = read_manifest(out)
    third.write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out))}: shard-000002\.spacy holds [\d,]+ bytes, where its "
                                         r"manifest says [\d,]+: the file is damaged, or another's; embed the input"):
        list(iter_docs(out))
    # The same copy where the sizes agree (the manifest says so here), in a manifest without
    # checksums (an earlier version's): its docs' lines give it away.
    manifest["shards"][2]["bytes"] = third.stat().st_size
    del manifest["shards"][2]["sha256"]
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf8")
    lines = manifest["shards"][2]["first_line"], manifest["shards"][2]["last_line"]
    with pytest.raises(ValueError, match=rf"shard-000002\.spacy holds a doc of input line 1, where its manifest "
                                         rf"gives it lines {lines[0]}-{lines[1]} \(after line \d+\): the file is "
                                         "another's"):
        list(iter_docs(out))
    third.unlink()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out))}: shard-000002\.spacy is missing, though its "
                                         r"manifest\.json lists it: the output is damaged; embed the input again$"):
        list(iter_docs(out))


def test_iter_docs_of_a_shard_with_fewer_docs_than_its_manifest_says_names_it(tmp_path, monkeypatch):
    """A shard replaced by a readable DocBin of fewer docs (not a cut one, which fails to parse)."""
    monkeypatch.setattr(embedded, "restore_vectors", lambda doc: doc)  # (no vectors here: only the count is tested)
    nlp = spacy.blank("en")
    DocBin(docs=[nlp("one"), nlp("two")], store_user_data=True).to_disk(tmp_path / SHARD.format(0))
    manifest = {"layout": LAYOUT, "format": "docbin", "shards": [{"file": SHARD.format(0), "docs": 3}]}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest), encoding="utf8")
    with pytest.raises(ValueError, match="holds 2 docs, its manifest says 3"):
        list(iter_docs(tmp_path))


@pytest.mark.parametrize("manifest, reader, message", [
    (None, iter_docs, "is not a complete spacy-ctxembed docbin output .no readable manifest.json."),
    ({"layout": LAYOUT, "format": "npy", "shards": []}, iter_docs,
     "is an embed output of format 'npy', not 'docbin': read it with load_npy"),
    ({"layout": LAYOUT, "format": "docbin", "shards": []}, load_npy,
     "is an embed output of format 'docbin', not 'npy': read it with iter_docs"),
    ({"layout": "other/tool", "format": "docbin"}, iter_docs,
     "its manifest.json is not an embed output's .layout 'other/tool', not 'spacy-ctxembed/embed'."),
    ([1, 2], load_npy, "its manifest.json is not an embed output's .layout None"),
])
def test_reading_an_output_of_another_format_or_tool_says_which(tmp_path, manifest, reader, message):
    """Reading an npy output with iter_docs (or a docbin one with load_npy) said
    "no manifest.json" of a directory that has one."""
    if manifest is not None:
        (tmp_path / MANIFEST).write_text(json.dumps(manifest), encoding="utf8")
    with pytest.raises(ValueError, match=message):
        list(reader(tmp_path)) if reader is iter_docs else reader(tmp_path)


def _identity():
    return {"format": "docbin", "input": "x", "input_kind": "text", "input_sha256": "0" * 64, "input_lines": 1,
            "model": None, "pipeline": None, "config": None, "config_sha256": None}


def test_the_output_directory_gets_the_permissions_mkdir_would_give(tmp_path):
    """OUTPUT is made as `mkdir` would make it (0777 less the umask), not private to the user."""
    old = os.umask(0o022)
    try:
        run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
        run.finish({"format": "docbin", "docs": 0, "shards": []})
    finally:
        os.umask(old)
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == oct(0o755)


def test_an_overwrite_interrupted_at_its_last_rename_puts_the_old_output_back(tmp_path, monkeypatch):
    """Ctrl-C between moving the old OUTPUT aside and renaming the new one into place: OUTPUT
    is the old output again (not gone, nor hidden in a .out.old-* folder for good), and
    --resume then puts the finished run in place and leaves no old copy behind."""
    out = tmp_path / "out"
    Run.plan(out, _identity(), overwrite=False, resume=False).finish({"format": "docbin", "docs": 1, "shards": []})
    run = Run.plan(out, _identity(), overwrite=True, resume=False)
    rename = os.rename

    def interrupted(src, dst):
        if Path(src) == run.dir:
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.finish({"format": "docbin", "docs": 2, "shards": []})
    run.abandon()
    monkeypatch.setattr(os, "rename", rename)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial", "out"]
    assert json.loads((out / MANIFEST).read_text(encoding="utf8"))["docs"] == 1
    Run.plan(out, _identity(), overwrite=False, resume=True).finish({})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert json.loads((out / MANIFEST).read_text(encoding="utf8"))["docs"] == 2


def test_old_outputs_a_killed_run_left_are_removed_at_the_next_finish_and_no_others(tmp_path):
    """A run killed between its two renames leaves the old OUTPUT in .out.old-XXXXXXXX (mkdtemp's
    name); the next run to finish into OUTPUT removes it. Folders of other outputs' names stay."""
    left = tmp_path / ".out.old-k1ll3d_x"
    (left / "shard-000000.spacy").parent.mkdir()
    (left / "shard-000000.spacy").write_bytes(b"old")
    others = [tmp_path / ".out.old-b.old-abcdefgh", tmp_path / ".out.old-k1ll3d_xy", tmp_path / ".outs.old-abcdefgh"]
    for other in others:
        other.mkdir()
    Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False).finish(
        {"format": "docbin", "docs": 0, "shards": []})
    assert not left.exists() and all(other.is_dir() for other in others)


def test_what_a_run_killed_while_making_its_partial_left_is_removed_and_no_others(tmp_path):
    """A run killed between mkdtemp and the rename of its new partial directory
    left .out.new-XXXXXXXX (its run record and an empty ledger) for ever. The next
    run to finish removes it; not one that another run holds locked, or made less
    than ABANDONED_NEW_AFTER_S ago (between its mkdtemp and its lock), or of another name."""
    import fcntl

    old = time.time() - output_module.ABANDONED_NEW_AFTER_S - 5
    folders = {name: tmp_path / name for name in (".out.new-k1ll3d_x", ".out.new-l0cked_x", ".out.new-y0ung_xx",
                                                  ".out.new-k1ll3d_xy", ".outs.new-abcdefgh")}
    for name, folder in folders.items():
        folder.mkdir()
        (folder / "run.json").write_text("{}", encoding="utf8")
        (folder / ".lock").touch()
        if name != ".out.new-y0ung_xx":
            os.utime(folder, (old, old))
    with (folders[".out.new-l0cked_x"] / ".lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False).finish(
            {"format": "docbin", "docs": 0, "shards": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*folders, "out"} - {".out.new-k1ll3d_x"})


def test_a_new_partial_renamed_while_finish_sweeps_does_not_fail_the_finished_run(tmp_path, monkeypatch):
    """Another run's .out.new-XXXXXXXX is listed by finish's sweep and renamed to
    .out.partial by that run before the sweep reads its age (a second run started
    with --overwrite as this one finishes). The sweep's stat raised
    FileNotFoundError out of finish, after OUTPUT was complete: a finished run
    reported as failed."""
    other = tmp_path / ".out.new-r4c1ng_x"
    other.mkdir()
    listed = output_module._mkdtemp_folders

    def racing(output, prefix):
        found = listed(output, prefix)
        if other in found:
            other.rename(tmp_path / ".elsewhere")  # (the other run's rename, between the listing and the stat)
        return found

    monkeypatch.setattr(output_module, "_mkdtemp_folders", racing)
    run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
    run.finish({"format": "docbin", "docs": 0, "shards": []})
    assert read_manifest(tmp_path / "out") is not None


def test_a_run_with_a_config_that_names_no_files_is_not_said_to_have_other_model_files(tmp_path):
    """Only the config differs from the default run's: the refusal said "different model: same name,
    other files (other model files)" too, of the empty record of the files a config names."""
    model = {"name": None, "sha256": "1" * 64, "ctxembed": "0.2.0"}
    then = {**_identity(), "pipeline": model}
    now = {**_identity(), "pipeline": {**model, "files": {}}, "config": "c.cfg", "config_sha256": "2" * 64}
    Run.plan(tmp_path / "out", then, overwrite=False, resume=False).finish({"format": "docbin", "docs": 0,
                                                                           "shards": []})
    with pytest.raises(UsageError) as caught:
        Run.plan(tmp_path / "out", now, overwrite=False, resume=True)
    assert str(caught.value) == (f"--output {tmp_path / 'out'} holds a complete output of a different run (different "
                                 "config: sha256 none then, 222222222222 now); pass --overwrite to replace it")
    now["pipeline"]["files"] = {"c/options.json": "3" * 64}
    with pytest.raises(UsageError, match=r"different model: .*the files its config names \(c/options.json\)"):
        Run.plan(tmp_path / "out", now, overwrite=False, resume=True)


def test_an_output_that_appeared_during_the_run_is_not_replaced(tmp_path):
    """A directory of someone else's files made at OUTPUT while the run worked is left alone;
    the error names it, and the result stays in the partial directory."""
    run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine", encoding="utf8")
    with pytest.raises(CliError) as caught:
        run.finish({"format": "docbin", "docs": 0, "shards": []})
    assert str(caught.value) == (f"--output {tmp_path / 'out'} appeared during the run; the result is left in "
                                 f"{tmp_path / '.out.partial'}")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]
    assert (tmp_path / ".out.partial" / "manifest.json").is_file()


def test_an_output_another_run_finished_after_this_one_looked_is_not_replaced(tmp_path, monkeypatch):
    """Run B (other input, no --overwrite) finds OUTPUT absent; run A renames its finished
    directory into place before B's partial directory takes its name. B's finish must
    not replace A's output: refused by name, A's shard as written, B's result kept
    in the partial directory, where --resume then puts it in place."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    a = Run.plan(out, _identity(), overwrite=False, resume=False)
    _commit_one_shard(a, b"A's vectors")
    state = output_module._output_state

    def b_looks_then_a_finishes(path):
        found = state(path)
        monkeypatch.setattr(output_module, "_output_state", state)
        a.finish({"format": "docbin", "docs": 1, "shards": [{"file": SHARD.format(0), "bytes": 11}]})
        return found

    monkeypatch.setattr(output_module, "_output_state", b_looks_then_a_finishes)
    other = {**_identity(), "input_sha256": "1" * 64}
    b = Run.plan(out, other, overwrite=False, resume=False)
    _commit_one_shard(b, b"B's vectors")
    with pytest.raises(CliError) as caught:
        b.finish({"format": "docbin", "docs": 1, "shards": [{"file": SHARD.format(0), "bytes": 11}]})
    b.abandon()
    assert str(caught.value) == (f"--output {out} was completed by another embed run after this one started (and "
                                 f"this run has no --overwrite); it is left as it is, and this run's result is left "
                                 f"in {partial}: --resume puts it in place of that output")
    assert (out / SHARD.format(0)).read_bytes() == b"A's vectors"
    assert (partial / SHARD.format(0)).read_bytes() == b"B's vectors"
    Run.plan(out, other, overwrite=False, resume=True).finish({})
    assert (out / SHARD.format(0)).read_bytes() == b"B's vectors"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_vectors_of_another_width_than_earlier_docs_are_refused(tmp_path):
    """All docs of an output share one vector width; a doc with another is refused naming its line."""
    from types import SimpleNamespace

    from spacy_ctxembed.cli.output import ShardWriter

    class Doc:
        def __init__(self, rows, width):
            self.vectors = numpy.zeros((rows, width), numpy.float32)
            self._ = SimpleNamespace(get=lambda name: self.vectors if name == "ctx_vectors" else None)

        def __len__(self):
            return len(self.vectors)

    run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
    try:
        writer = ShardWriter(run)
        writer.add(Doc(2, 4), 1)
        with pytest.raises(CliError) as caught:
            writer.add(Doc(1, 8), 3)
        assert str(caught.value) == "line 3: vectors are 8 wide, earlier ones 4"
    finally:
        run.abandon()


def test_resume_of_a_complete_output_with_several_files_deleted_counts_the_others(tmp_path):
    """The damage message names the first missing file and how many more are gone:
    three shards lost is "(and 2 more)", not a count that includes the one named."""
    shards = [{"file": f"shard-00000{i}.spacy"} for i in range(4)]
    run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
    for shard in shards:
        (run.dir / shard["file"]).write_bytes(b"x")
    run.finish({"format": "docbin", "docs": 4, "shards": shards})
    for name in ("shard-000000.spacy", "shard-000002.spacy", "shard-000003.spacy"):
        (tmp_path / "out" / name).unlink()
    with pytest.raises(UsageError) as caught:
        Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=True)
    assert str(caught.value) == (f"--output {tmp_path / 'out'} is damaged: shard-000000.spacy is missing (and 2 more); "
                                 "pass --overwrite to embed it again")


def test_resume_refuses_an_interrupted_run_of_an_edited_config(tmp_path, monkeypatch):
    """A run records the SHA-256 of its --config's bytes: the same model files under
    other settings (another layer, say) make other vectors, and --resume must not
    append them to the kept ones."""
    monkeypatch.setattr(embed_cli, "model_identity", lambda model, config: {"files": {}})
    (tmp_path / "in.txt").write_text("One doc.\n", encoding="utf8")
    config = tmp_path / "embed.cfg"
    config.write_text("[nlp]\nlang = \"en\"\npipeline = []\n", encoding="utf8")
    inp = open_input(str(tmp_path / "in.txt"))
    try:
        first = embed_cli._identity(inp, "docbin", None, config)
        assert first["config_sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
        run = Run.plan(tmp_path / "out", first, overwrite=False, resume=False)
        run.commit({"file": "shard-000000.spacy", "last_line": 1, "docs": 1, "tokens": 2, "width": 4, "bytes": 0})
        (run.dir / "shard-000000.spacy").write_bytes(b"")
        run.abandon()
        config.write_text("[nlp]\nlang = \"en\"\npipeline = []\nbatch_size = 7\n", encoding="utf8")
        edited = embed_cli._identity(inp, "docbin", None, config)
    finally:
        inp.close()
    with pytest.raises(UsageError) as caught:
        Run.plan(tmp_path / "out", edited, overwrite=False, resume=True)
    assert (f"(different config: sha256 {first['config_sha256'][:12]} then, {edited['config_sha256'][:12]} now); "
            "pass --overwrite to start over") in str(caught.value)


def _commit_one_shard(run, data=b"docs"):
    """A committed docbin shard of one doc, as `DocBinWriter.commit` leaves it."""
    name = SHARD.format(len(run.committed.shards))
    (run.dir / name).write_bytes(data)
    run.commit({"shard": len(run.committed.shards), "file": name, "first_line": 1, "last_line": 1, "docs": 1,
                "tokens": 2, "width": 4, "bytes": len(data)})


def test_a_run_holds_its_lock_until_it_is_abandoned(tmp_path):
    """While a run works, no other run may resume or discard its partial directory;
    once it gives up (its shards kept), the next --resume takes it."""
    pytest.importorskip("fcntl")
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    _commit_one_shard(run)
    for flags in ({"overwrite": True, "resume": False}, {"overwrite": False, "resume": True}):
        with pytest.raises(UsageError) as caught:
            Run.plan(out, _identity(), **flags)
        assert str(caught.value) == f"another embed run is writing {partial}"
    run.abandon()
    assert run.committed.docs == 1 and partial.is_dir()
    resumed = Run.plan(out, _identity(), overwrite=False, resume=True)
    try:
        assert resumed.resumed and resumed.committed.docs == 1
    finally:
        resumed.abandon()


def test_a_finished_output_holds_only_its_manifest_and_shards_and_replaces_the_old_one_whole(tmp_path):
    """No lock file, run record or ledger in OUTPUT, and nothing left beside it:
    neither the old output it replaced nor a temporary directory."""
    out = tmp_path / "out"
    for overwrite, data in ((False, b"old"), (True, b"new!")):
        run = Run.plan(out, _identity(), overwrite=overwrite, resume=False)
        _commit_one_shard(run, data)
        run.finish({"format": "docbin", "docs": 1, "shards": [{"file": SHARD.format(0), "bytes": len(data)}]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, SHARD.format(0)])
    assert (out / SHARD.format(0)).read_bytes() == b"new!"


def test_a_partial_directory_is_locked_before_it_takes_its_name(tmp_path, monkeypatch):
    """A run that finds the new partial directory the instant it is renamed into
    place, nothing committed yet, must find it locked: not take it for a stale one
    and discard it from under the run that made it."""
    pytest.importorskip("fcntl")
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    rename, other = os.rename, []

    def rename_then_another_run_looks(src, dst):
        rename(src, dst)
        if Path(dst) == partial and not other:
            with pytest.raises(UsageError) as caught:
                Run.plan(out, _identity(), overwrite=True, resume=False)
            other.append(str(caught.value))

    monkeypatch.setattr(os, "rename", rename_then_another_run_looks)
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    try:
        assert other == [f"another embed run is writing {partial}"]
        assert (partial / "run.json").is_file()
    finally:
        run.abandon()


def test_a_partial_directory_another_run_has_just_created_is_left_to_it(tmp_path, monkeypatch):
    """Two runs start at once: the one whose rename comes second is refused by name,
    leaves the other's directory as it is, and leaves no temporary directory behind."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    rename = os.rename

    def the_other_run_renames_first(src, dst):
        if Path(dst) == partial and not partial.exists():
            partial.mkdir()
            (partial / "theirs").write_text("the other run's", encoding="utf8")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", the_other_run_renames_first)
    with pytest.raises(UsageError) as caught:
        Run.plan(out, _identity(), overwrite=False, resume=False)
    assert str(caught.value) == f"another embed run has just created {partial}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.partial"]
    assert [p.name for p in partial.iterdir()] == ["theirs"]


def test_a_partial_directory_removed_before_its_lock_is_opened_is_another_runs(tmp_path, monkeypatch):
    """Between finding an interrupted run's directory and opening its lock, another
    run may discard it: a refusal naming it, not a FileNotFoundError."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    _commit_one_shard(run)
    run.abandon()
    record = output_module._partial_record

    def read_then_removed(path):
        found = record(path)
        shutil.rmtree(path)
        return found

    monkeypatch.setattr(output_module, "_partial_record", read_then_removed)
    with pytest.raises(UsageError) as caught:
        Run.plan(out, _identity(), overwrite=False, resume=True)
    assert str(caught.value) == f"another embed run is writing {partial}"


def test_resume_drops_a_symbolic_link_in_the_partial_directory_not_what_it_points_to(tmp_path):
    """What the ledger does not list is removed; a link to a directory is removed as a
    link (rmtree refuses one), and the directory it names is not touched."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    _commit_one_shard(run)
    run.abandon()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("mine", encoding="utf8")
    (partial / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    resumed = Run.plan(out, _identity(), overwrite=False, resume=True)
    try:
        assert not os.path.lexists(partial / "linked")
        assert (tmp_path / "elsewhere" / "keep.txt").read_text(encoding="utf8") == "mine"
        assert resumed.committed.docs == 1
    finally:
        resumed.abandon()


def test_a_committed_ledger_line_is_on_disk_before_commit_returns(tmp_path, monkeypatch):
    """A shard counts as committed once its ledger line is durable (fsynced), not
    merely written: after a power cut, --resume keeps only what the ledger holds."""
    run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
    try:
        synced, fsync = [], os.fsync

        def recorded(fd):
            synced.append(os.fstat(fd).st_ino)
            fsync(fd)

        monkeypatch.setattr(os, "fsync", recorded)
        _commit_one_shard(run)
        assert (run.dir / "ledger.jsonl").stat().st_ino in synced
    finally:
        run.abandon()


def test_an_output_under_folders_that_do_not_exist_yet_gets_them(tmp_path):
    """As `mkdir -p`: the folders above OUTPUT are made, the partial directory beside it."""
    out = tmp_path / "new" / "deeper" / "out"
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    try:
        assert run.dir == tmp_path / "new" / "deeper" / ".out.partial" and run.dir.is_dir()
    finally:
        run.abandon()


def test_a_resumed_run_interrupted_again_keeps_what_both_runs_committed(tmp_path):
    """--resume rewrites the ledger to the shards it keeps: a torn last line left by
    the first interruption must not swallow the lines the resumed run appends."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    _commit_one_shard(run)
    run.abandon()
    with (partial / "ledger.jsonl").open("a", encoding="utf8") as f:
        f.write('{"shard": 1, "first_li')  # killed while writing the second shard's line
    resumed = Run.plan(out, _identity(), overwrite=False, resume=True)
    assert resumed.committed.docs == 1
    _commit_one_shard(resumed, b"more docs")
    resumed.abandon()
    again = Run.plan(out, _identity(), overwrite=False, resume=True)
    try:
        assert [s["file"] for s in again.committed.shards] == [SHARD.format(0), SHARD.format(1)]
    finally:
        again.abandon()


def test_resume_removes_the_files_and_folders_the_ledger_does_not_list(tmp_path):
    """What a killed run left beyond its last commit (a shard not in the ledger, the
    temporary of a write cut short, a folder) is not carried into OUTPUT."""
    out, partial = tmp_path / "out", tmp_path / ".out.partial"
    run = Run.plan(out, _identity(), overwrite=False, resume=False)
    _commit_one_shard(run)
    run.abandon()
    (partial / SHARD.format(1)).write_bytes(b"not committed")
    (partial / f".{SHARD.format(2)}.x1y2.tmp").write_bytes(b"cut short")
    (partial / "leftover").mkdir()
    (partial / "leftover" / "file").write_bytes(b"x")
    resumed = Run.plan(out, _identity(), overwrite=False, resume=True)
    try:
        kept = sorted(p.name for p in partial.iterdir())
        assert kept == sorted([".lock", "ledger.jsonl", "run.json", SHARD.format(0)])
    finally:
        resumed.abandon()


# Outputs written here by hand, in the documented layout (embedded.py's docstring), with
# NumPy and json: the readers are checked on files no model made.
_EMBED_LAYOUT = "spacy-ctxembed/embed"


def _npy_output(path, vectors, bounds, rows=None, docs=None, save=numpy.save):
    """An npy output of `vectors` whose docs.jsonl gives the docs' (start, end) `bounds`."""
    path.mkdir(parents=True, exist_ok=True)
    save(path / "vectors.npy", vectors)
    records = [{"line": i + 1, "text": f"doc {i}", "tokens": ["w"] * (e - s), "start": s, "end": e}
               for i, (s, e) in enumerate(bounds)]
    (path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
    manifest = {"layout": _EMBED_LAYOUT, "format": "npy", "rows": len(vectors) if rows is None else rows,
                "docs": len(bounds) if docs is None else docs}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf8")
    return path


@pytest.mark.parametrize("mmap", [True, False])
def test_load_npy_reads_a_fortran_ordered_vectors_file_by_its_header(tmp_path, mmap):
    """Not seen before: a vectors.npy whose header says fortran_order True (numpy.save
    of a column-major array); embed writes C order, so only C order had been read."""
    expected = numpy.arange(6 * 4, dtype="float64").reshape(6, 4) / 7.0
    out = _npy_output(tmp_path / "out", numpy.asfortranarray(expected.astype("float32")), [(0, 2), (2, 6)])
    assert b"'fortran_order': True" in (out / "vectors.npy").read_bytes()[:128]
    vectors, records = load_npy(out, mmap=mmap)
    numpy.testing.assert_allclose(numpy.asarray(vectors, dtype="float64"), expected, rtol=1e-6)
    assert [(r["start"], r["end"]) for r in records] == [(0, 2), (2, 6)]


@pytest.mark.parametrize("mmap", [True, False])
def test_load_npy_reads_a_version_2_vectors_file(tmp_path, mmap):
    """Not seen before: a .npy file of format version 2.0 (4-byte header length), which
    numpy writes for headers over 64 KiB and on request; embed writes 1.0."""
    expected = numpy.linspace(-1.0, 1.0, 3 * 5).reshape(3, 5)

    def save_v2(file, array):
        with open(file, "wb") as f:
            numpy.lib.format.write_array(f, array, version=(2, 0))

    out = _npy_output(tmp_path / "out", expected.astype("float32"), [(0, 1), (1, 3)], save=save_v2)
    assert (out / "vectors.npy").read_bytes()[6:8] == b"\x02\x00"
    vectors, _ = load_npy(out, mmap=mmap)
    numpy.testing.assert_allclose(numpy.asarray(vectors, dtype="float64"), expected, rtol=1e-6)


@pytest.mark.parametrize("case", ["manifest rows", "first doc starts late", "last doc ends early"])
def test_load_npy_refuses_docs_and_rows_that_do_not_add_up(tmp_path, case):
    """Not seen before: a manifest whose row count is not the vectors file's; a
    docs.jsonl whose first doc does not start at row 0, or whose last doc ends before
    the last row (the right number of docs each time, chained end to start)."""
    vectors = numpy.zeros((6, 3), dtype="float32")
    bounds, rows = {"manifest rows": ([(0, 2), (2, 6)], 7), "first doc starts late": ([(1, 2), (2, 6)], None),
                    "last doc ends early": ([(0, 2), (2, 5)], None)}[case]
    out = _npy_output(tmp_path / "out", vectors, bounds, rows=rows)
    with pytest.raises(ValueError, match=r"the file is damaged|its manifest says 7") as error:
        load_npy(out)
    assert str(error.value).startswith(f"{out}: ")
    good = _npy_output(tmp_path / "good", vectors, [(0, 2), (2, 6)])
    assert load_npy(good)[0].shape == (6, 3)  # the same output, consistent, reads


@pytest.mark.parametrize("manifest", [
    {"layout": "other/tool", "format": "npy", "rows": 0, "docs": 0},
    ["not", "an", "object"],
    '{"layout": "spacy-ctxembed/embed", "format": "npy", "ro',  # cut while written
    b"\xff\xfe{}",  # not UTF-8
])
def test_read_manifest_of_another_tools_or_a_damaged_manifest_is_none(tmp_path, manifest):
    """Not seen before: read_manifest was only asked of directories without a manifest
    (an unfinished output). Another tool's manifest, or one that is not JSON, is not
    a complete output's: None, never an exception."""
    path = tmp_path / "manifest.json"
    if isinstance(manifest, bytes):
        path.write_bytes(manifest)
    else:
        path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest), encoding="utf8")
    assert read_manifest(tmp_path) is None
    path.write_text(json.dumps({"layout": _EMBED_LAYOUT, "format": "npy"}), encoding="utf8")
    assert read_manifest(tmp_path) == {"layout": _EMBED_LAYOUT, "format": "npy"}


def _docbin_output(path, shard_lines, shard_meta):
    """A docbin output of one shard whose docs have the input lines `shard_lines`."""
    nlp = spacy.blank("en")
    docs = []
    for line in shard_lines:
        doc = nlp(f"line {line}")
        doc.user_data["line"] = line
        docs.append(doc)
    data = DocBin(docs=docs, store_user_data=True).to_bytes()
    (path / "shard-000000.spacy").write_bytes(data)
    shard = {"file": "shard-000000.spacy", "docs": len(docs), **shard_meta(len(data))}
    manifest = {"layout": _EMBED_LAYOUT, "format": "docbin", "shards": [shard]}
    (path / "manifest.json").write_text(json.dumps(manifest), encoding="utf8")


@pytest.mark.parametrize("lines", [[3, 3], [4, 3]], ids=["repeated", "backwards"])
def test_iter_docs_refuses_a_shard_whose_lines_repeat_or_go_back(tmp_path, monkeypatch, lines):
    """Not seen before: docs whose input lines are all inside the manifest's range but
    not increasing (a doc repeated, or out of order): each doc's line must come after
    the one before."""
    monkeypatch.setattr(embedded, "restore_vectors", lambda doc: doc)  # (no vectors here: only lines are read)
    _docbin_output(tmp_path, lines, lambda size: {"first_line": 3, "last_line": 4, "bytes": size})
    with pytest.raises(ValueError, match=r"holds a doc of input line 3, where its manifest gives it lines 3-4 "
                                         r"\(after line \d\): the file is another's"):
        list(iter_docs(tmp_path))
    _docbin_output(tmp_path, [3, 4], lambda size: {"first_line": 3, "last_line": 4, "bytes": size})
    assert [doc.user_data["line"] for doc in iter_docs(tmp_path)] == [3, 4]


def test_iter_docs_refuses_a_shard_larger_than_its_manifest_says(tmp_path, monkeypatch):
    """Not seen before: a readable shard with more bytes than the manifest records
    (only smaller, cut shards were tried); no line range to catch it otherwise."""
    monkeypatch.setattr(embedded, "restore_vectors", lambda doc: doc)
    _docbin_output(tmp_path, [1, 2], lambda size: {"bytes": size - 1})
    size = (tmp_path / "shard-000000.spacy").stat().st_size
    with pytest.raises(ValueError, match=rf"shard-000000\.spacy holds {size:,} bytes, where its manifest says "
                                         rf"{size - 1:,}: the file is damaged, or another's"):
        list(iter_docs(tmp_path))


def _edited_corpus(tmp_path):
    """The corpus with one word of line 5 changed for another of as many characters (and tokens)."""
    path = tmp_path / "edited.txt"
    path.write_text("\n".join(LINES).replace("she ran to the station", "she won to the station"), encoding="utf8")
    return path


def test_iter_docs_refuses_a_shard_of_another_run_with_the_same_size_and_lines(tmp_path, corpus, pipeline):
    """A shard of a run of the input edited since (or of another model) has the same input lines,
    and its size can agree by chance (it did for "ran" -> "won" with another tiny model): it was read
    as this output's, its text and vectors another run's. Each shard's sha256 is in the manifest."""
    out, other = tmp_path / "out", tmp_path / "other"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2").exit_code == 0
    assert invoke("embed", _edited_corpus(tmp_path), "-o", other, "-m", pipeline, "-s", "2").exit_code == 0
    assert [doc.user_data["line"] for doc in iter_docs(out)] == [1, 3, 5, 6, 8, 9, 10]
    shutil.copyfile(other / SHARD.format(1), out / SHARD.format(1))
    manifest = read_manifest(out)
    manifest["shards"][1]["bytes"] = (out / SHARD.format(1)).stat().st_size  # (sizes that agree by chance)
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf8")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out))}: shard-000001\.spacy has sha256 [0-9a-f]{{12}}, "
                                         r"where its manifest says [0-9a-f]{12}: the file is another's, or was "
                                         r"edited; embed the input again$"):
        list(iter_docs(out))


@pytest.mark.parametrize("fmt, name", [("docbin", "shard-000001.spacy"), ("npy", "docs.jsonl")])
def test_resume_of_a_complete_output_holding_another_runs_file_says_it_is_damaged(tmp_path, corpus, pipeline, fmt,
                                                                                 name):
    """A file of the same size from a run of the input edited since: --resume said "nothing
    to do: already complete" (it compared sizes only), and every reader then refused it."""
    out, other = tmp_path / "out", tmp_path / "other"
    args = ["-m", pipeline, "-f", fmt, "-s", "2"]
    assert invoke("embed", corpus, "-o", out, *args).exit_code == 0
    assert invoke("embed", _edited_corpus(tmp_path), "-o", other, *args).exit_code == 0
    shutil.copyfile(other / name, out / name)
    if fmt == "docbin":  # (sizes that agree by chance)
        manifest = read_manifest(out)
        manifest["shards"][1]["bytes"] = (out / name).stat().st_size
        (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf8")
    else:
        assert (other / name).stat().st_size == (out / name).stat().st_size
    again = invoke("embed", corpus, "-o", out, *args, "--resume")
    assert again.exit_code == 2
    assert re.fullmatch(rf"error: --output {re.escape(str(out))} is damaged: {re.escape(name)} has sha256 "
                        r"[0-9a-f]{12}, where its manifest says [0-9a-f]{12}; pass --overwrite to embed it again",
                        last_line(again.stderr)), last_line(again.stderr)


@pytest.mark.parametrize("edit", ["last entry", "middle entry"])
def test_iter_docs_refuses_a_manifest_whose_shards_do_not_make_its_docs(tmp_path, corpus, pipeline, edit):
    """A shard's entry deleted from manifest.json (the last; or one in the middle, with the
    docs count made to agree) read as an output of fewer docs, without a word."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-s", "2").exit_code == 0
    manifest = read_manifest(out)
    lost = manifest["shards"].pop(-1 if edit == "last entry" else 1)
    if edit == "middle entry":
        manifest["docs"] -= lost["docs"]
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf8")
    message = (r"its manifest\.json lists shards of 6 docs, where it says 7 docs" if edit == "last entry" else
               r"its manifest\.json gives shard-000002\.spacy input lines 7-9, where the shard before ends at line 3")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out))}: {message}: a shard's entry is missing or was "
                                         r"edited; embed the input again$"):
        list(iter_docs(out))


@pytest.mark.parametrize("damage", ["vectors of another width", "a token dropped", "docs of another run"])
def test_load_npy_refuses_files_that_do_not_pair_its_rows_with_its_tokens(tmp_path, corpus, pipeline, damage):
    """Each loaded without a word: a vectors.npy of as many rows but another width (another
    model's); a docs.jsonl record edited to list one token fewer than its rows (every row
    after it read as the next token's); the docs.jsonl of a run of the input edited since
    (the same size and rows, another text)."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline, "-f", "npy").exit_code == 0
    if damage == "vectors of another width":
        rows, width = numpy.load(out / "vectors.npy").shape
        numpy.save(out / "vectors.npy", numpy.zeros((rows, width + 8), dtype="float32"))
        message = rf"vectors\.npy holds rows of {width + 8} values, its manifest says {width}: the file is " \
                  "another model's, or was edited"
    elif damage == "a token dropped":
        records = [json.loads(line) for line in (out / "docs.jsonl").read_text(encoding="utf8").splitlines()]
        records[1]["tokens"] = records[1]["tokens"][1:]
        (out / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf8")
        n = records[1]["end"] - records[1]["start"]
        message = rf"docs\.jsonl: the doc of input line 3 lists {n - 1} tokens for its {n} rows: the file was edited"
    else:
        other = tmp_path / "other"
        assert invoke("embed", _edited_corpus(tmp_path), "-o", other, "-m", pipeline, "-f", "npy").exit_code == 0
        assert (other / "docs.jsonl").stat().st_size == (out / "docs.jsonl").stat().st_size
        shutil.copyfile(other / "docs.jsonl", out / "docs.jsonl")
        message = r"docs\.jsonl has sha256 [0-9a-f]{12}, where its manifest says [0-9a-f]{12}: the file is another's"
    with pytest.raises(ValueError, match=rf"^{re.escape(str(out))}: {message}"):
        load_npy(out)


@pytest.mark.parametrize("flag", [[], ["--resume"], ["--overwrite"]])
def test_an_output_whose_manifest_was_cut_is_refused_naming_its_manifest(tmp_path, corpus, pipeline, flag):
    """A complete output whose manifest.json was cut (or hand-edited into invalid JSON) was
    called "a non-empty directory that is not a spacy-ctxembed output; choose another path":
    its owner was sent looking elsewhere. It is still never replaced, and the error names
    the manifest."""
    out = tmp_path / "out"
    assert invoke("embed", corpus, "-o", out, "-m", pipeline).exit_code == 0
    data = (out / MANIFEST).read_bytes()
    (out / MANIFEST).write_bytes(data[: len(data) // 2])
    files = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    again = invoke("embed", corpus, "-o", out, "-m", pipeline, *flag)
    assert again.exit_code == 2
    assert last_line(again.stderr) == (
        f"error: --output {out}: its manifest.json is not an embed output's (not JSON: cut, or edited); it is "
        "never replaced: put the manifest back, or remove the directory to embed into it again, or choose another "
        "path")
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == files


def _model():
    return {"name": "core_web_ctx", "sha256": "1" * 64, "ctxembed": "0.2.0"}


@pytest.mark.parametrize("change,said", [
    ({"format": "npy"}, "different format: 'docbin' then, 'npy' now"),
    ({"model": "/models/b"}, "different model: '/models/a' then, '/models/b' now"),
    ({"model": None}, "different model: '/models/a' then, no --model (the embedded default, or --config's) now"),
    ({"pipeline": {**_model(), "ctxembed": "0.3.0"}}, "different spacy-ctxembed version (0.2.0, now 0.3.0)"),
])
def test_resume_of_another_runs_output_names_what_differs_then_and_now(tmp_path, change, said):
    """--resume with another --format, another --model path (a copy of the same files), no
    --model, or after an upgrade of spacy-ctxembed: the refusal says which, with both values."""
    then = {**_identity(), "model": "/models/a", "pipeline": _model()}
    Run.plan(tmp_path / "out", then, overwrite=False, resume=False).finish({"format": "docbin", "docs": 0,
                                                                           "shards": []})
    with pytest.raises(UsageError) as caught:
        Run.plan(tmp_path / "out", {**then, **change}, overwrite=False, resume=True)
    assert str(caught.value) == (f"--output {tmp_path / 'out'} holds a complete output of a different run ({said}); "
                                 "pass --overwrite to replace it")


def test_a_dangling_link_made_at_output_during_the_run_is_not_replaced(tmp_path):
    """A symbolic link to nothing is not OUTPUT's absence: the finished run is not renamed
    over it (a link is never replaced, as `plan` refuses one), and its result is kept."""
    run = Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False)
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CliError) as caught:
        run.finish({"format": "docbin", "docs": 0, "shards": []})
    assert str(caught.value) == (f"--output {tmp_path / 'out'} appeared during the run; the result is left in "
                                 f"{tmp_path / '.out.partial'}")
    assert os.readlink(tmp_path / "out") == str(tmp_path / "nowhere")
    assert (tmp_path / ".out.partial" / "manifest.json").is_file()


def test_a_new_partial_left_by_a_run_killed_before_it_took_its_lock_is_removed(tmp_path):
    """Killed between mkdtemp and its lock: the folder has no .lock at all, and is no
    run's (one in the making is younger than ABANDONED_NEW_AFTER_S)."""
    left = tmp_path / ".out.new-n0l0ck_x"
    left.mkdir()
    (left / "run.json").write_text("{}", encoding="utf8")
    old = time.time() - output_module.ABANDONED_NEW_AFTER_S - 5
    os.utime(left, (old, old))
    Run.plan(tmp_path / "out", _identity(), overwrite=False, resume=False).finish(
        {"format": "docbin", "docs": 0, "shards": []})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resume_redoes_a_committed_shard_whose_file_was_deleted(tmp_path, corpus, pipeline, want, monkeypatch):
    """The ledger lists two shards; the second's file is gone: it is redone, the first kept."""
    args = ["embed", corpus, "-m", pipeline, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_after_commits(patch, 2)
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    (tmp_path / ".out.partial" / "shard-000001.spacy").unlink()
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run; wrote 7 docs")
    assert [s["first_line"] for s in manifest_of(tmp_path / "out")["shards"]] == [1, 4, 7, 10]
    assert_same_docs(read_output(tmp_path / "out"), want)


@pytest.mark.parametrize("fmt", ["docbin", "npy"])
def test_resume_after_the_last_shard_was_committed_only_finishes(tmp_path, corpus, pipeline, want, monkeypatch,
                                                                 fmt):
    """Interrupted as the last shard's ledger line became durable, before the manifest:
    every doc is kept (the input checked up to its last line), none embedded again."""
    args = ["embed", corpus, "-m", pipeline, "-f", fmt, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_after_commits(patch, 4, in_commit=True)
        assert invoke(*args, "-o", tmp_path / "out").exit_code == 130
    assert read_manifest(tmp_path / ".out.partial") is None
    resumed = invoke(*args, "-o", tmp_path / "out", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 7 docs kept from the interrupted run; wrote 7 docs")
    assert_same_docs(read_output(tmp_path / "out"), want)


def test_an_interrupted_run_of_a_docbin_input_resumes(tmp_path, pipeline, want, monkeypatch):
    """A DocBin input has no lines to hold the kept docs to (its checksum is the run's):
    --resume carries on after the last doc committed."""
    nlp = spacy.blank("en")
    DocBin(docs=[nlp(t) for t in LINES]).to_disk(tmp_path / "in.spacy")
    args = ["embed", tmp_path / "in.spacy", "-o", tmp_path / "out", "-m", pipeline, "-s", "2"]
    with monkeypatch.context() as patch:
        _interrupt_after_commits(patch, 1)
        assert invoke(*args).exit_code == 130
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert last_line(resumed.stderr).startswith("resumed: 2 docs kept from the interrupted run; wrote 7 docs")
    assert_same_docs(read_output(tmp_path / "out"), want)


def test_a_text_only_stdin_is_read_as_its_utf8_bytes(monkeypatch):
    """A stdin with no byte buffer (a harness's io.StringIO) gives the bytes a file of that text would."""
    text = "caf\u00e9 one\n\n  \nlast"
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    inp = open_input("-")
    try:
        assert (inp.label, inp.n_records, inp.n_docs) == ("<stdin>", 4, 2)
        assert inp.sha256 == hashlib.sha256(text.encode("utf8")).hexdigest()
        assert list(inp.records(Vocab())) == [("caf\u00e9 one", 1), ("last", 4)]
    finally:
        inp.close()
