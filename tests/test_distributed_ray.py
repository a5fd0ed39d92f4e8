"""`embed_corpus` and `embed --ray` on a local Ray (2 CPUs): complete, exactly once,
resumable, surviving a killed actor, and equal to a single-process `nlp.pipe`.
"""
import json
import os
import re
import shutil
import signal
import threading
import time
import warnings

import numpy
import pytest
import spacy
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

import spacy_ctxembed.distributed as distributed  # noqa: E402
from spacy_ctxembed.cli import app  # noqa: E402
from spacy_ctxembed.distributed import embed_corpus, read_docs  # noqa: E402
from spacy_ctxembed.distributed.shards import shard_name  # noqa: E402
from spacy_ctxembed.outputs import stored_signature  # noqa: E402

from .conftest import make_nlp  # noqa: E402

SENTENCES = [
    "I ran to the park this morning.", "She ran significance tests on the data.", "The bank raised its rates.",
    "We sat on the river bank.", "Time flies like an arrow.", "Fruit flies like a banana.",
    "He left the keys on the right.", "Turn left, then right at the light.",
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, tiny_bert_dir):
    path = tmp_path_factory.mktemp("pipeline") / "nlp"
    make_nlp(tiny_bert_dir).to_disk(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 lines: sentences (some long, some repeated) and the rows that must be rejected."""
    rng = numpy.random.default_rng(0)
    lines = []
    for i in range(60):
        if i % 13 == 5:
            lines.append(b"")
        elif i % 17 == 3:
            lines.append(b"bad \xff\xfe bytes")
        elif i % 19 == 7:
            lines.append(b"   \t ")
        else:
            picked = rng.choice(SENTENCES, size=1 + i % 4)
            lines.append(" ".join(picked).encode("utf8"))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, lines


@pytest.fixture(scope="module")
def reference(pipeline_dir, corpus):
    """What one process gives: `nlp.pipe` over the good lines, by doc id."""
    nlp = spacy.load(pipeline_dir)
    _, lines = corpus
    good = {i: raw.decode("utf8") for i, raw in enumerate(lines) if _is_good(raw)}
    docs = nlp.pipe(good.values(), batch_size=7)
    return {i: (doc.text, [t.text for t in doc], doc._.ctx_vectors) for i, doc in zip(good, docs)}


def _is_good(raw):
    try:
        return bool(raw.decode("utf8").strip())
    except UnicodeDecodeError:
        return False


def _assert_matches(out, reference, n_rows):
    table = pq.read_table(out / "shards")
    ids = table.column("doc_id").to_pylist()
    assert ids == sorted(reference), "every good row once, in doc-id order"
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert sorted(ids + [r["doc_id"] for r in rejected]) == list(range(n_rows))
    for doc_id, text, tokens, vectors in zip(ids, table.column("text").to_pylist(),
                                             table.column("tokens").to_pylist(), table.column("vectors").to_pylist()):
        ref_text, ref_tokens, ref_vectors = reference[doc_id]
        assert (text, tokens) == (ref_text, ref_tokens)
        numpy.testing.assert_allclose(numpy.asarray(vectors, numpy.float32), ref_vectors, atol=1e-5, rtol=0)
    return rejected


def test_embed_corpus_is_complete_and_equals_one_process(
        local_ray, pipeline_dir, corpus, reference, tmp_path, capsys):
    """Two actors: every good row once, equal to one process's `nlp.pipe`; every
    bad row recorded with why; the progress bar counts every row; the docs read
    back carry the signature of the component that made them."""
    path, lines = corpus
    summaries = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = embed_corpus(path, tmp_path / "out", model=str(pipeline_dir), shard_size=8, batch_size=3,
                                actors=2, progress=True, on_shard=summaries.append)
    # The progress bar counts rows, rejected ones too: it ends at every row of the input.
    assert re.search(rf"embedding \(ray\): 100%.* {len(lines)}/{len(lines)} ", capsys.readouterr().err)
    # (Ray's deprecation of the ray_remote_args that carry max_task_retries was printed on every run)
    assert not [str(w.message) for w in caught if "ray_remote_args" in str(w.message)]
    rejected = _assert_matches(tmp_path / "out", reference, len(lines))
    assert [r["reason"] for r in rejected if r["doc_id"] == 3] == ["not UTF-8: byte 0xff at column 5"]
    assert {r["doc_id"] for r in rejected} == {i for i, raw in enumerate(lines) if not _is_good(raw)}
    assert manifest["complete"] and manifest["docs"] == len(reference) and manifest["rejected"] == len(rejected)
    assert sorted(s["shard"] for s in summaries) == list(range(8))
    schema = pq.read_schema(tmp_path / "out" / "shards" / shard_name(0))
    assert str(schema.field("vectors").type) == "list<element: list<element: float>>"
    # Rows back to docs: the vectors and the hooks.
    nlp = spacy.blank("en")
    docs = list(read_docs(tmp_path / "out", nlp.vocab))
    assert [d.user_data["doc_id"] for d in docs] == sorted(reference)
    first = docs[0]
    numpy.testing.assert_allclose(first[1].vector, reference[first.user_data["doc_id"]][2][1], atol=1e-5)
    assert first[1].similarity(first[1]) == pytest.approx(1.0)
    # ... and what made them, as a doc the pipeline annotates says.
    made = spacy.load(pipeline_dir)(first.text)
    assert {stored_signature(doc, "ctxembed_bert") for doc in docs} == {stored_signature(made, "ctxembed_bert")}
    assert manifest["signature"] == stored_signature(made, "ctxembed_bert")


def test_no_more_actors_start_than_there_are_shards_left(
        local_ray, pipeline_dir, corpus, reference, tmp_path, monkeypatch):
    """One shard to embed and two actors asked for: one actor loads the pipeline."""
    pools = []
    strategy = ray.data.ActorPoolStrategy
    monkeypatch.setattr(ray.data, "ActorPoolStrategy", lambda **kwargs: pools.append(kwargs) or strategy(**kwargs))
    path, lines = corpus
    embed_corpus(path, tmp_path / "out", model=str(pipeline_dir), shard_size=len(lines), actors=2, progress=False)
    assert pools == [{"size": 1}]
    _assert_matches(tmp_path / "out", reference, len(lines))


def test_rerun_resumes_and_redoes_only_what_is_missing(local_ray, pipeline_dir, corpus, reference, tmp_path):
    path, lines = corpus
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(pipeline_dir), shard_size=8, actors=2, progress=False)
    shards = out / "shards"
    kept_mtime = (shards / shard_name(0)).stat().st_mtime_ns
    # An interrupted run: two shards not committed, one written half, a temporary file left over.
    (shards / shard_name(2)).unlink()
    (shards / shard_name(5)).write_bytes(b"PAR1 half a file")
    (shards / f".{shard_name(6)}.abc.tmp").write_bytes(b"partial")
    (out / "rejected.jsonl").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    redone = []
    again = embed_corpus(path, out, model=str(pipeline_dir), shard_size=8, actors=2, progress=False,
                         on_shard=redone.append)
    assert sorted(s["shard"] for s in redone) == [2, 5]
    assert again["resumed_shards"] == 6
    assert (shards / shard_name(0)).stat().st_mtime_ns == kept_mtime
    assert not list(shards.glob(".*"))
    _assert_matches(out, reference, len(lines))
    # Complete: a third run does nothing, but puts back a deleted record of the rejected rows, and
    # clears what a write killed before its rename left (which blocked --overwrite: "not an embed run's").
    rejected = (out / "rejected.jsonl").read_bytes()
    (out / "rejected.jsonl").unlink()
    (out / ".rejected.jsonl.x1y2z3.tmp").write_bytes(b"partial")
    (out / ".manifest.json.q9w8.tmp").write_bytes(b"{")
    third = []
    done = embed_corpus(path, out, model=str(pipeline_dir), shard_size=8, actors=2, progress=False,
                        on_shard=third.append)
    assert third == [] and done["already_complete"]
    assert (out / "rejected.jsonl").read_bytes() == rejected and not list(out.glob(".*.tmp"))
    (out / ".rejected.jsonl.x1y2z3.tmp").write_bytes(b"partial")
    embed_corpus(path, out, model=str(pipeline_dir), shard_size=8, actors=2, progress=False, overwrite=True)
    _assert_matches(out, reference, len(lines))


def test_another_run_into_the_same_outdir_is_refused(local_ray, pipeline_dir, corpus, tmp_path):
    path, _ = corpus
    model = tmp_path / "nlp"
    shutil.copytree(pipeline_dir, model)
    out = tmp_path / "out"
    embed_corpus(path, out, model=str(model), shard_size=30, actors=1, progress=False)
    with pytest.raises(FileExistsError, match=r"a different input or settings \(shard_size: 30 then, 20 now\)"):
        embed_corpus(path, out, model=str(model), shard_size=20, actors=1, progress=False)
    # An edited saved pipeline is another pipeline: its vectors must not be mixed with the old ones.
    meta = json.loads((model / "meta.json").read_text())
    (model / "meta.json").write_text(json.dumps({**meta, "version": "0.0.2"}))
    with pytest.raises(FileExistsError, match=r"settings \(model: files [0-9a-f]{12} then, [0-9a-f]{12} now\)"):
        embed_corpus(path, out, model=str(model), shard_size=30, actors=1, progress=False)
    manifest = embed_corpus(path, out, model=str(model), shard_size=20, actors=1, progress=False,
                            overwrite=True)
    assert len(manifest["shards"]) == 3 and len(list((out / "shards").glob("*.parquet"))) == 3
    # Overwriting only ever deletes an embed run's own files.
    (out / "notes.txt").write_text("mine", encoding="utf8")
    with pytest.raises(FileExistsError, match=r"holds files that are not an embed run's \(notes.txt\)"):
        embed_corpus(path, out, model=str(model), shard_size=10, actors=1, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text(encoding="utf8") == "mine"
    assert len(list((out / "shards").glob("*.parquet"))) == 3


def test_a_directory_that_is_not_an_embed_runs_is_left_as_it_was(pipeline_dir, tmp_path):
    """A user's own rejected.jsonl, in a directory with no manifest, was emptied (it has
    an embed run's file name), and a refused directory was given a .lock file. Both are
    refused before Ray starts, and nothing in them is touched."""
    path = tmp_path / "in.txt"
    path.write_text("One line.\n", encoding="utf8")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "rejected.jsonl").write_text('{"mine": 1}\n', encoding="utf8")
    with pytest.raises(FileExistsError, match=r"mine holds rejected.jsonl but no manifest.json; use another "
                                              r"output directory, or overwrite$"):
        embed_corpus(path, mine, model=str(pipeline_dir), progress=False)
    assert os.listdir(mine) == ["rejected.jsonl"]
    assert (mine / "rejected.jsonl").read_text(encoding="utf8") == '{"mine": 1}\n'
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("important", encoding="utf8")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"holds files that are not an embed run's \(notes.txt\)"):
            embed_corpus(path, notes, model=str(pipeline_dir), progress=False, overwrite=overwrite)
        assert os.listdir(notes) == ["notes.txt"]


def test_a_killed_actor_is_retried_and_nothing_is_lost(local_ray, pipeline_dir, tmp_path):
    """SIGKILL an actor as soon as its first shard is reported. Each shard takes a
    while and Ray Data keeps several shards in flight per actor, so the killed
    actor dies inside a shard with more queued: Ray must restart it and retry
    them. The output must still hold every row once, equal to one process."""
    lines = [" ".join([SENTENCES[(i + j) % len(SENTENCES)] for j in range(12)]) for i in range(24 * 15)]
    for i in range(0, len(lines), 37):
        lines[i] = ""  # rejected rows must survive the retry too
    path = tmp_path / "big.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf8")
    nlp = spacy.load(pipeline_dir)
    good = {i: text for i, text in enumerate(lines) if text}
    reference = {i: (doc.text, [t.text for t in doc], doc._.ctx_vectors)
                 for i, doc in zip(good, nlp.pipe(good.values(), batch_size=32))}
    out = tmp_path / "out"
    killed = {}
    summaries = []

    def on_shard(summary):
        summaries.append(summary)
        if not killed:
            killed["pid"] = summary["pid"]
            killed["done_before"] = len(list((out / "shards").glob("*.parquet")))
            os.kill(summary["pid"], signal.SIGKILL)
            # What a shard write killed before its rename leaves (here for certain, not by the kill's timing).
            (out / "shards" / f".{shard_name(23)}.k1ll3d.tmp").write_bytes(b"partial")

    manifest = embed_corpus(path, out, model=str(pipeline_dir), shard_size=15, batch_size=32, actors=2,
                            progress=False, on_shard=on_shard)
    assert killed["done_before"] < 24 - 4, "the kill came while shards were still to do"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    _assert_matches(out, reference, len(lines))
    assert manifest["docs"] == len(good) and manifest["rejected"] == len(lines) - len(good)
    assert sorted(s["shard"] for s in summaries) == list(range(24)), "every shard reported exactly once"
    # A complete output holds no partial shard file (it stayed beside the complete ones).
    assert sorted(p.name for p in (out / "shards").iterdir() if p.name.startswith(".")) == []


def test_concurrent_runs_into_one_outdir_are_refused(local_ray, pipeline_dir, corpus, tmp_path):
    from spacy_ctxembed.distributed import OutputInUse
    from spacy_ctxembed.distributed.run import _locked

    out = tmp_path / "out"
    entered = threading.Event()
    release = threading.Event()

    def hold():
        with _locked(out):
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(10)
    try:
        with pytest.raises(OutputInUse, match="is in use by another embed run"):
            embed_corpus(corpus[0], out, model=str(pipeline_dir), progress=False)
    finally:
        release.set()
        holder.join()


def test_cli_ray_embeds_jsonl_and_parquet_float16(local_ray, pipeline_dir, reference, corpus, tmp_path):
    _, lines = corpus
    good = sorted(reference)
    records = [json.dumps({"body": reference[i][0]}) if i in reference else '{"other": 1}' for i in range(len(lines))]
    (tmp_path / "in.jsonl").write_text("\n".join(records) + "\n", encoding="utf8")
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out"), "--ray",
                                 "--model", str(pipeline_dir), "--actors", "2", "--shard-size", "16",
                                 "--batch-size", "4", "--text-key", "body"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "Parquet shards" in result.output
    table = pq.read_table(tmp_path / "out" / "shards")
    assert table.column("doc_id").to_pylist() == good
    rejected = [json.loads(x) for x in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejected} == {"no field 'body'"}

    import pyarrow as pa

    texts = [reference[i][0] if i in reference else None for i in range(len(lines))]
    pq.write_table(pa.table({"text": texts}), tmp_path / "in.parquet", row_group_size=7)
    result = runner.invoke(app, ["embed", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "pq"), "--ray",
                                 "--model", str(pipeline_dir), "--actors", "1", "--shard-size", "25", "--float16"])
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "pq" / "shards")
    assert str(table.schema.field("vectors").type) == "list<element: list<element: halffloat>>"
    assert table.column("doc_id").to_pylist() == good
    for doc_id, vectors in zip(good, table.column("vectors").to_pylist()):
        expected = reference[doc_id][2]
        numpy.testing.assert_allclose(numpy.asarray(vectors, numpy.float32), expected, rtol=1e-3, atol=1e-3)


def test_cli_ray_an_actors_input_error_reaches_the_user(local_ray, pipeline_dir, tmp_path, monkeypatch):
    """The input is touched once the first shard is done: the actors' next shards refuse it
    (InputError). The user gets that error, naming the file, with exit 2, not Ray's
    "UDF failed to process a data block" with exit 1. So too where the shard had been
    started before (its actor died, Ray retried it): a changed input is no actor's death."""
    from spacy_ctxembed.distributed.actor import attempts_name

    path = tmp_path / "in.txt"
    path.write_text("".join(f"doc number {i}\n" for i in range(12)), encoding="utf8")

    def touched_after_the_first_shard(*args, **kwargs):
        def on_shard(summary):
            later = time.time_ns() + 10**9
            os.utime(path, ns=(later, later))
            for index in range(summary["shard"] + 1, 12):  # an earlier start of each shard after it
                with open(tmp_path / "out" / "shards" / attempts_name(index), "a", encoding="utf8") as f:
                    f.write("a worker that died\n")

        return embed_corpus(*args, on_shard=on_shard, **kwargs)

    monkeypatch.setattr(distributed, "embed_corpus", touched_after_the_first_shard)
    result = CliRunner().invoke(app, ["embed", str(path), "-o", str(tmp_path / "out"), "--ray", "--actors", "1",
                                      "--model", str(pipeline_dir), "--shard-size", "1"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: input {path} changed since the run was planned (size or modification time)")


def test_an_error_that_is_no_actors_death_is_not_reported_as_one(local_ray, pipeline_dir, tmp_path):
    """An error while a shard was being retried after its actor died (here the
    caller's own, in on_shard; so too one an actor raised: a doc the pipeline
    fails on, a full disk) was reported as ShardsFailed, "the actors died on"
    that shard, each time it was retried: the wrong shard and the wrong cause."""
    from spacy_ctxembed.distributed.actor import attempts_name

    path = tmp_path / "in.txt"
    path.write_text("".join(f"doc number {i}\n" for i in range(3)), encoding="utf8")

    def on_shard(summary):
        # (Two starts of a shard not committed, as a retry after its actor's death leaves them.)
        (tmp_path / "out" / "shards" / attempts_name(summary["shard"])).write_text("died\nretried\n")
        raise KeyError("the caller's own error")

    with pytest.raises(KeyError, match="the caller's own error"):
        embed_corpus(path, tmp_path / "out", model=str(pipeline_dir), shard_size=1, actors=1, progress=False,
                     on_shard=on_shard)


def test_gpus_the_ray_does_not_have_are_refused_not_waited_for(local_ray, pipeline_dir, tmp_path):
    """--gpus-per-actor beyond the GPUs of the Ray this process uses: its actors would wait
    for one forever. The user reads the setting, its value and the GPUs found, with exit 2."""
    found = ray.cluster_resources().get("GPU", 0)
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(path), "-o", str(tmp_path / "out"), "--ray", "--actors", "1",
                                      "--model", str(pipeline_dir), "--gpus-per-actor", f"{found + 1:g}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: --gpus-per-actor {found + 1:g}: the local Ray found {found:g} GPUs, and its actors would wait for "
        "one forever; use 0 (CPU), or --address of a cluster with GPUs")
    assert not list((tmp_path / "out" / "shards").iterdir()) and ray.is_initialized()


def test_gpus_the_connected_ray_does_not_have_are_refused_saying_how_to_use_a_cluster(local_ray, pipeline_dir,
                                                                                      tmp_path):
    """The same through the API, where the caller connected to Ray first: the
    message names the setting and the GPUs found, and says how a cluster whose
    GPU nodes join as it scales is used (by its address), not "the local Ray"."""
    from spacy_ctxembed.distributed import NoGPUs

    found = ray.cluster_resources().get("GPU", 0)
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    with pytest.raises(NoGPUs) as caught:
        embed_corpus(path, tmp_path / "out", model=str(pipeline_dir), actors=1, gpus_per_actor=found + 1,
                     progress=False)
    assert str(caught.value) == (
        f"embed_corpus: gpus_per_actor = {float(found + 1)!r}, but the Ray this process uses found {found:g} GPUs: its "
        "actors would wait for one forever; use 0 (CPU), or give the address of a cluster with GPUs (one that adds "
        "GPU nodes as it scales too) instead of connecting to it first")
    assert (caught.value.gpus, caught.value.found) == (found + 1, found) and ray.is_initialized()


def test_an_address_is_refused_where_this_process_already_uses_a_ray(local_ray, pipeline_dir, tmp_path):
    """A caller that called ray.init and gives an address too: which Ray to use cannot be told.
    Refused naming the setting and its value; the caller's Ray is left running."""
    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    with pytest.raises(ValueError) as caught:
        embed_corpus(path, tmp_path / "out", model=str(pipeline_dir), address="auto", progress=False)
    assert str(caught.value) == ("embed_corpus: address = 'auto', but this process is already connected to Ray; "
                                 "leave address out to use that Ray")
    assert ray.is_initialized()


def test_only_rays_word_that_an_actor_died_is_taken_for_a_death():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, OutOfMemoryError, RayTaskError

    from spacy_ctxembed.distributed.run import actor_died

    raised = RayTaskError("submit", "Traceback: ...", ValueError("a doc")).as_instanceof_cause()
    assert not actor_died(raised) and not actor_died(KeyError("the driver's own"))
    assert actor_died(ActorUnavailableError("gone", None)) and actor_died(ActorDiedError())
    assert actor_died(OutOfMemoryError("killed by the memory monitor"))


def test_a_model_changed_after_the_run_started_reaches_the_user(local_ray, pipeline_dir, tmp_path):
    """An actor that loads other model files than the run recorded refuses them, and
    the user reads why (raised when the actor was made, Ray said only that it died)."""
    from spacy_ctxembed.cli.embed import _ray_failure
    from spacy_ctxembed.distributed.run import _run_ray, ray_actor_error
    from spacy_ctxembed.distributed.sources import input_files, plan_shards

    path = tmp_path / "in.txt"
    path.write_text("A doc.\nAnother doc.\n", encoding="utf8")
    shards, _ = plan_shards(input_files([str(path)]), 10)
    (tmp_path / "shards").mkdir()
    recorded = {"name": str(pipeline_dir), "sha256": "0" * 64}  # (what the run recorded: other files)
    with pytest.raises(Exception) as caught:
        _run_ray(shards, tmp_path / "shards", str(pipeline_dir), None, 8, 1, 1.0, 0.0, "float32", None, False,
                 None, recorded)
    assert str(_ray_failure(caught.value)) == (
        f"--model {pipeline_dir}: its files changed after this run started (their checksum differs from the one "
        "the run recorded), so its shards would mix two models' vectors; rerun once it stays put (a model "
        "changed on purpose makes another run: --overwrite)")
    # (A caller of embed_corpus reads it as raised: it said its message twice over.)
    assert str(ray_actor_error(caught.value)) == str(distributed.ModelChanged(str(pipeline_dir)))


def test_cli_ray_float16_refuses_vectors_it_would_store_as_inf(local_ray, tiny_bert_dir, tmp_path):
    """A model with large activations: float16 would have stored its vectors as inf
    without a word. The user reads which doc and value, with exit 2, not "the actors died"."""
    import torch

    from spacy_ctxembed.models.bert import get_runner

    nlp = make_nlp(tiny_bert_dir)
    module = get_runner(nlp.get_pipe("ctxembed_bert").encoder).encoder.module
    with torch.no_grad():
        for param in module.encoder.layer[-1].output.LayerNorm.parameters():
            param.mul_(1e6)
    assert numpy.abs(nlp("A doc.")._.ctx_vectors).max() > 65520  # (float32 holds them: the test's premise)
    nlp.to_disk(tmp_path / "nlp")
    path = tmp_path / "in.txt"
    path.write_text("A doc.\nAnother doc.\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(path), "-o", str(tmp_path / "out"), "--ray", "--actors", "1",
                                      "--model", str(tmp_path / "nlp"), "--float16"])
    assert result.exit_code == 2, result.output
    assert re.fullmatch(r"error: --float16: doc 0 has a vector value of -?\d[\d.e+]*, beyond float16's range "
                        r"\(largest 65504\), which would be stored as inf \(\d+ such values in this shard\); run "
                        r"without --float16 to store float32", result.output.strip().splitlines()[-1])
