"""`embed --ray` and `read_docs` refusing what they cannot do, before any Ray starts."""
import json
import re

import pytest
import spacy
from typer.testing import CliRunner

pytest.importorskip("pyarrow")

import spacy_ctxembed.distributed as distributed  # noqa: E402
from spacy_ctxembed.cli import app  # noqa: E402
from spacy_ctxembed.cli.errors import CliError, UsageError  # noqa: E402
from spacy_ctxembed.distributed import read_docs  # noqa: E402
from spacy_ctxembed.pipeline.build import NoContextualEmbedder, check_writes_vectors  # noqa: E402


def _ray_started() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


@pytest.mark.parametrize("args, message", [
    (["--ray", "--format", "npy"], "--ray always writes Parquet shards"),
    (["--ray", "--gpu-id", "0"], "with --ray, use --gpus-per-actor"),
    (["--ray", "--actors", "0"], "--actors 0: expected a positive number"),
    (["--ray", "--gpus-per-actor", "-1"], "--gpus-per-actor -1.0: expected 0"),
    (["--ray", "--gpus-per-actor", "nan"], "--gpus-per-actor nan: expected 0 (CPU) or a positive number"),
    (["--ray", "--gpus-per-actor", "inf"], "--gpus-per-actor inf: expected 0 (CPU) or a positive number"),
    (["--ray", "--cpus-per-actor", "nan"], "--cpus-per-actor nan: expected a positive number"),
    (["--ray", "--cpus-per-actor", "inf"], "--cpus-per-actor inf: expected a positive number"),
    (["--text-key", "body"], "--text-key: only with --ray"),
    (["--actors", "2", "--float16"], "--actors, --float16: only with --ray"),
    (["--ray", "--model", "no/such/pipeline"], "--model no/such/pipeline: no such directory"),
    (["--ray", "--model", "."], "--model .: not a saved spaCy pipeline (no config.cfg); to embed with a model's"),
    (["--ray", "--input-format", "csv"], "--input-format csv: expected one of text, jsonl, parquet"),
])
def test_cli_ray_usage_errors(tmp_path, args, message):
    """Refused before Ray starts: no local_ray fixture, and none is started."""
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not _ray_started()


def test_an_address_where_no_ray_answers_is_refused_up_front(tmp_path, monkeypatch):
    """`--address HOST:PORT` with nothing listening there: ray.init retried it
    without end (over 6 minutes, printing only Ray's connection warnings), after
    the output directory and its manifest were made."""
    import socket

    ray = pytest.importorskip("ray")

    def init(*args, **kwargs):  # (the real one would wait for the address without end)
        raise AssertionError(f"ray.init was called: {kwargs}")

    monkeypatch.setattr(ray, "init", init)
    with socket.socket() as probe:  # a port that was free a moment ago, and so refuses connections
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out"), "--ray",
                                      "--address", f"127.0.0.1:{port}"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: --address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused); start one (ray "
        "start --head) and give the address it prints, or leave --address out for a local Ray")
    assert not (tmp_path / "out").exists() and not _ray_started()


def test_stdin_and_an_output_that_cannot_be_made_are_usage_errors_before_ray_starts(tmp_path):
    """`-` (stdin) was looked for as a file ("input -: no such file or
    directory"), and an output under a file, or unwritable, gave a raw
    OSError (exit 1): both name the option, as without --ray."""
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", "-", "-o", str(tmp_path / "out"), "--ray"], input="a doc\n")
    assert result.exit_code == 2, result.output
    assert "INPUT -: --ray does not read stdin" in result.output
    (tmp_path / "file").write_text("", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "file" / "out"),
                                      "--ray"])
    assert result.exit_code == 2, result.output
    assert f"--output {tmp_path / 'file' / 'out'}: cannot write in it: Not a directory" in result.output
    assert not _ray_started()


def test_a_pipeline_without_an_embedder_is_refused_before_ray_starts(tmp_path):
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.to_disk(tmp_path / "plain")
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out"), "--ray",
                                      "--model", str(tmp_path / "plain")])
    assert result.exit_code == 2, result.output
    assert "the pipeline has no contextual embedder" in result.output and "['sentencizer']" in result.output
    assert not _ray_started()


def test_a_pipeline_whose_embedder_is_not_primary_is_refused_before_ray_starts(tmp_path):
    config = spacy.blank("en").config
    config["nlp"]["pipeline"] = ["emb"]
    config["components"]["emb"] = {"factory": "ctxembed_bert", "primary": False}
    config.to_disk(tmp_path / "not-primary.cfg")
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out"), "--ray",
                                      "--config", str(tmp_path / "not-primary.cfg")])
    assert result.exit_code == 2, result.output
    assert "[emb] primary = false: no component of the pipeline sets doc._.ctx_vectors" in result.output
    assert not _ray_started()


def _config(components, disabled=(), variables=None, pipeline=None):
    config = spacy.blank("en").config
    config["nlp"]["pipeline"] = list(components) if pipeline is None else pipeline
    config["nlp"]["disabled"] = list(disabled)
    config["components"] = components
    if variables:
        config["vars"] = variables
    return config.to_str()


@pytest.mark.parametrize("components, disabled, variables, refused", [
    # sourced blocks say what they are only when they load: not refused (the primary one was)
    ({"emb": {"source": "some/pipeline"}, "emb2": {"factory": "ctxembed_bert", "primary": False}}, (), None, None),
    ({"emb": {"source": "some/pipeline"}}, (), None, None),
    ({"emb": {"factory": "ctxembed_bert", "primary": "${vars.primary}"}}, (), {"primary": False},
     "[emb] primary = false: no component"),  # (it was taken for primary)
    ({"emb": {"factory": "ctxembed_bert"}, "emb2": {"factory": "ctxembed_bert", "primary": False}}, ["emb"], None,
     "[emb2] primary = false: no component of the pipeline sets doc._.ctx_vectors"),
    ({"emb": {"factory": "ctxembed_bert"}}, ["emb"], None, "has no contextual embedder"),
    # a block [nlp] pipeline does not list is not built
    ({"emb": {"factory": "ctxembed_bert", "primary": False}, "unlisted": {"factory": "ctxembed_bert"}}, (),
     None, "[emb] primary = false: no component"),
])
def test_the_driver_reads_a_config_as_the_actors_will(components, disabled, variables, refused):
    from spacy_ctxembed.distributed.run import _check_pipeline
    from spacy_ctxembed.pipeline.build import NoContextualEmbedder

    text = _config(components, disabled, variables, pipeline=[name for name in components if name != "unlisted"])
    if refused is None:
        _check_pipeline(None, text)
        return
    with pytest.raises(NoContextualEmbedder) as error:
        _check_pipeline(None, text)
    assert refused in str(error.value)
    if disabled:
        assert str(error.value).endswith("; 'emb' is disabled: enable it")


def test_read_docs_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False, "shards": []}), encoding="utf8")
    with pytest.raises(ValueError, match="is not complete: run embed --ray again"):
        list(read_docs(tmp_path, spacy.blank("en").vocab))
    with pytest.raises(ValueError, match="no readable manifest.json"):
        list(read_docs(tmp_path / "nowhere", spacy.blank("en").vocab))
    # the run's shards/ folder (what docs_from_table reads) is named as such
    (tmp_path / "shards").mkdir()
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'shards'))} holds no readable manifest.json: "
                                         rf"not the output of embed --ray; it is the shards folder of the run in "
                                         rf"{re.escape(str(tmp_path))}: give read_docs that$"):
        list(read_docs(tmp_path / "shards", spacy.blank("en").vocab))


def test_an_actor_error_is_reported_by_its_cause():
    """Ray hands an actor's error to the driver as a RayTaskError that is also of the
    original's type, with the original in `.cause` (`as_instanceof_cause`, as Ray's
    own deserialization builds it; a real run: test_distributed_ray), and with lines
    about its retries appended to the message. The CLI reports the original."""
    RayTaskError = pytest.importorskip("ray.exceptions").RayTaskError

    from spacy_ctxembed.cli.embed import _ray_failure
    from spacy_ctxembed.cli.errors import CliError, UsageError
    from spacy_ctxembed.distributed import InputError

    def from_actor(error):
        return RayTaskError("MapWorker.submit", "Traceback ...", error).as_instanceof_cause()

    changed = InputError("input corpus.txt changed since the run was planned (size or modification time)\n"
                         "Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s).")
    reported = _ray_failure(from_actor(changed))
    assert type(reported) is UsageError and reported.exit_code == 2
    assert str(reported) == "input corpus.txt changed since the run was planned (size or modification time)"
    nested = RayTaskError("outer", "Traceback ...", from_actor(changed))  # a remote call inside an actor
    assert str(_ray_failure(nested)).startswith("input corpus.txt changed")
    reported = _ray_failure(from_actor(ValueError("[ctxembed_bert] left no vectors on a doc of shard 3")))
    assert type(reported) is CliError and reported.exit_code == 1
    assert str(reported) == "a Ray actor failed: ValueError: [ctxembed_bert] left no vectors on a doc of shard 3"
    # The driver's own errors are not an actor's, even when chained.
    try:
        try:
            raise KeyError("x")
        except KeyError as inner:
            raise RuntimeError("on the driver") from inner
    except RuntimeError as driver:
        assert _ray_failure(driver) is driver
    assert type(_ray_failure(InputError("input a.txt: no such file or directory"))) is UsageError


def test_an_output_file_and_an_empty_text_key_name_their_option(tmp_path):
    """`-o` an existing file gave "[Errno 17] File exists"; `--text-key ''` was taken as
    'text' without a word, and then "has no field 'text' (--text-key)"."""
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    for args, message in ((["-o", str(tmp_path / "in.txt")], f"--output {tmp_path / 'in.txt'} is a file"),
                          (["-o", str(tmp_path / "out"), "--text-key", ""], "--text-key '': expected the name")):
        result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "--ray", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not _ray_started()


def test_a_different_run_in_the_output_names_the_options_and_values(tmp_path):
    """A rerun with other settings said "(differs in: dtype)", in embed_corpus's
    parameter names, without the values, the files, or --overwrite."""
    from spacy_ctxembed.cli.embed import _ray_failure
    from spacy_ctxembed.cli.errors import UsageError
    from spacy_ctxembed.distributed import DifferentRun
    from spacy_ctxembed.distributed.run import _described

    recorded = {"inputs": [{"path": "a.txt", "sha256": "1"}, {"path": "b.txt", "sha256": "2"}],
                "dtype": "float16", "model": {"name": "/m", "sha256": "abcdef0123456789"}}
    now = {"inputs": [{"path": "a.txt", "sha256": "9"}, {"path": "c.txt", "sha256": "3"}],
           "dtype": "float32", "model": {"name": "/m", "sha256": "0123456789abcdef"}}
    error = DifferentRun(tmp_path / "out", {key: _described(key, recorded[key], now[key]) for key in recorded})
    reported = _ray_failure(error)
    assert isinstance(reported, UsageError)
    assert str(reported) == (
        f"--output {tmp_path / 'out'} holds a run of other inputs or settings (INPUT: changed a.txt; added "
        "c.txt; removed b.txt; --float16: 'float16' then, 'float32' now; the model: files abcdef0123456789 then, "
        "0123456789abcdef now); use another --output, or --overwrite")


def test_gpus_per_actor_without_a_gpu_is_refused_not_left_waiting(tmp_path, tiny_bert_dir):
    """A local Ray without a GPU and --gpus-per-actor 1: Ray logged that no node could
    take the actors, and the run waited forever."""
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():  # pragma: no cover - a GPU machine
        pytest.skip("this machine has a GPU")
    from .conftest import make_nlp

    make_nlp(tiny_bert_dir).to_disk(tmp_path / "nlp")
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = subprocess.run([sys.executable, "-m", "spacy_ctxembed", "embed", str(tmp_path / "in.txt"), "-o",
                             str(tmp_path / "out"), "--ray", "--actors", "1", "--gpus-per-actor", "1", "-m",
                             str(tmp_path / "nlp")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --gpus-per-actor 1: the local Ray found 0 GPUs, and its actors would wait for one forever; use "
        "0 (CPU), or --address of a cluster with GPUs")


@pytest.mark.parametrize("missing", ["pyarrow", "ray"])
def test_a_missing_ray_extra_is_named_before_ray_starts(tmp_path, monkeypatch, missing):
    """Without pyarrow, embed_corpus (and embed --ray) started a local Ray and then
    failed; read_docs and docs_from_table gave a bare ModuleNotFoundError."""
    import sys

    from spacy_ctxembed.distributed import MissingExtra, docs_from_table, embed_corpus

    path = tmp_path / "in.txt"
    path.write_text("A doc.\n", encoding="utf8")
    extra = "pip install 'spacy-ctxembed[ray]'"
    with monkeypatch.context() as patch:
        for module in (missing, f"{missing}.data", f"{missing}.parquet"):
            patch.setitem(sys.modules, module, None)  # (import fails)
        with pytest.raises(MissingExtra, match=rf"^embed_corpus needs {missing}, which is not installed \(.*\): "
                                               rf"{extra.replace('[', '.').replace(']', '.')}$"):
            embed_corpus(str(path), tmp_path / "out")
        result = CliRunner().invoke(app, ["embed", str(path), "-o", str(tmp_path / "out2"), "--ray"])
        assert result.exit_code == 2, result.output
        last = result.output.strip().splitlines()[-1]
        assert last == f"error: --ray needs {missing}, which is not installed: {extra}"
        if missing == "pyarrow":
            with pytest.raises(MissingExtra, match="^read_docs needs pyarrow"):
                next(read_docs(tmp_path, spacy.blank("en").vocab))
            with pytest.raises(MissingExtra, match="^docs_from_table needs pyarrow"):
                next(docs_from_table(None, spacy.blank("en").vocab))
    assert not _ray_started() and not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_a_different_run_is_described_field_by_field():
    """What differs between a recorded run and this one, in words a user can act on."""
    from spacy_ctxembed.distributed.run import _described

    a, b = {"path": "a.txt", "sha256": "1"}, {"path": "b.txt", "sha256": "2"}
    assert _described("inputs", [a, b], [b, a]) == "the same files in another order"
    assert _described("shard_size", 30, 20) == "30 then, 20 now"
    assert _described("text_key", "text", "body") == "'text' then, 'body' now"
    model = {"name": "m", "sha256": "f" * 64, "package_version": "1.0", "ctxembed": "0.1",
             "files": {"/w/a.bin": "1", "/w/b.bin": "2"}}
    assert _described("model", model, {**model, "package_version": "1.1"}) == "package version 1.0 then, 1.1 now"
    assert _described("model", model, {**model, "ctxembed": None}) == "spacy-ctxembed version 0.1 then, none now"
    assert _described("model", model, {**model, "sha256": "0" * 64}) == "files ffffffffffff then, 000000000000 now"
    assert _described("model", model, {**model, "files": {"/w/a.bin": "9", "/w/c.bin": "3"}}) == (
        "the files its config names (/w/a.bin, /w/b.bin, /w/c.bin)")
    assert _described("model", None, model) == "not recorded then"
    assert _described("model", model, {**model, "other": 1}) == "other model files"


def _fake(monkeypatch, manifest):
    calls = []

    def embed_corpus(inputs, out_dir, **kwargs):
        calls.append({"inputs": inputs, "out_dir": out_dir, **kwargs})
        return manifest

    monkeypatch.setattr(distributed, "embed_corpus", embed_corpus)
    return calls


DONE = {"docs": 5, "rejected": 2, "shards": [{}, {}, {}], "resumed_shards": 0}


def test_ray_options_reach_embed_corpus_with_their_defaults(tmp_path, monkeypatch):
    """`embed --ray` passes each option to embed_corpus, and the documented defaults where one is left out:
    2 actors, 1 CPU and 0 GPUs per actor, float32, text key 'text', no address, no overwrite."""
    calls = _fake(monkeypatch, DONE)
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(out), "--ray"])
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert {k: call[k] for k in ("actors", "cpus_per_actor", "gpus_per_actor", "dtype", "text_key", "address",
                                 "overwrite", "shard_size", "batch_size", "input_format", "model", "config")} == {
        "actors": 2, "cpus_per_actor": 1.0, "gpus_per_actor": 0.0, "dtype": "float32", "text_key": "text",
        "address": None, "overwrite": False, "shard_size": 1000, "batch_size": 32, "input_format": None,
        "model": None, "config": None}
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(out), "--ray", "--actors", "3",
                                      "--cpus-per-actor", "2", "--gpus-per-actor", "0.5", "--float16",
                                      "--text-key", "body", "--address", "auto", "--overwrite", "-s", "7", "-b", "4",
                                      "--input-format", "jsonl"])
    assert result.exit_code == 0, result.output
    call = calls[-1]
    assert {k: call[k] for k in ("actors", "cpus_per_actor", "gpus_per_actor", "dtype", "text_key", "address",
                                 "overwrite", "shard_size", "batch_size", "input_format")} == {
        "actors": 3, "cpus_per_actor": 2.0, "gpus_per_actor": 0.5, "dtype": "float16", "text_key": "body",
        "address": "auto", "overwrite": True, "shard_size": 7, "batch_size": 4, "input_format": "jsonl"}


def _last_line_of_ray_run(tmp_path, monkeypatch, manifest):
    """(OUTPUT, the last line) of `embed --ray` where embed_corpus returns `manifest`."""
    _fake(monkeypatch, manifest)
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(out), "--ray"])
    assert result.exit_code == 0, result.output
    return out, result.output.strip().splitlines()[-1]


@pytest.mark.parametrize("kept, note", [(0, ""), (1, "resumed: 1 shard kept; "), (2, "resumed: 2 shards kept; ")])
def test_ray_summary_says_what_was_written_and_kept(tmp_path, monkeypatch, kept, note):
    """The last line names the docs, the shards, the rejected rows and where they are, and how many
    shards a resumed run kept."""
    out, last = _last_line_of_ray_run(tmp_path, monkeypatch, {**DONE, "resumed_shards": kept})
    assert last == (
        f"{note}wrote 5 docs in 3 Parquet shards to {out / 'shards'}; 2 rows rejected "
        f"(see {out / 'rejected.jsonl'})")


def test_ray_summary_counts_one_of_each_in_the_singular(tmp_path, monkeypatch):
    one = {**DONE, "docs": 1, "rejected": 1, "shards": DONE["shards"][:1]}
    out, last = _last_line_of_ray_run(tmp_path, monkeypatch, one)
    assert last == f"wrote 1 doc in 1 Parquet shard to {out / 'shards'}; 1 row rejected (see {out / 'rejected.jsonl'})"


def test_ray_rerun_of_a_complete_output_says_there_is_nothing_to_do(tmp_path, monkeypatch):
    """A complete OUTPUT: the last line says so with its totals, not "wrote"."""
    out, last = _last_line_of_ray_run(tmp_path, monkeypatch, {**DONE, "already_complete": True})
    assert last == (
        f"nothing to do: {out} is already complete (5 docs, 2 rows rejected)")


def test_ray_failures_name_cli_options(tmp_path):
    """Errors of embed_corpus reach the user in the CLI's words: options, not parameter names."""
    from spacy_ctxembed.cli.embed import _ray_failure
    from spacy_ctxembed.distributed import DifferentRun, ShardsFailed

    reported = _ray_failure(ShardsFailed("embed_corpus: the actors died on shard 1 (doc ids 3-5, in.txt from "
                                         "line 4: started 3 times): each was retried"))
    assert type(reported) is CliError
    assert str(reported) == "the actors died on shard 1 (doc ids 3-5, in.txt from line 4: started 3 times): " \
                            "each was retried"
    changes = {"config_sha256": "'a' then, 'b' now", "shard_size": "30 then, 20 now", "text_key": "'text' then, "
               "'body' now"}
    reported = _ray_failure(DifferentRun(tmp_path, changes))
    assert type(reported) is UsageError
    assert str(reported) == (f"--output {tmp_path} holds a run of other inputs or settings (--config: 'a' then, "
                             "'b' now; --shard-size: 30 then, 20 now; --text-key: 'text' then, 'body' now); use "
                             "another --output, or --overwrite")


def test_an_output_directory_of_other_files_is_a_usage_error(tmp_path):
    """embed_corpus refuses an OUTPUT holding files that are not an embed run's with a
    FileExistsError: the CLI reports it as a usage error (exit 2), with its own words."""
    from spacy_ctxembed.cli.embed import _ray_failure
    from spacy_ctxembed.cli.errors import UsageError

    message = f"{tmp_path} holds files that are not an embed run's (notes.txt); use another output directory"
    reported = _ray_failure(FileExistsError(message + "\nretried 0 times"))
    assert type(reported) is UsageError and reported.exit_code == 2
    assert str(reported) == message


def test_one_primary_embedder_beside_a_non_primary_one_writes_vectors():
    """A pipeline is refused only where no ctxembed component is primary; a helper
    embedder with primary = false beside a primary one is fine."""
    check_writes_vectors({"helper": ("ctxembed_bert", False), "main": ("ctxembed_bert", True)})
    with pytest.raises(NoContextualEmbedder, match=r"^\[a\] primary = false, \[b\] primary = false: "):
        check_writes_vectors({"a": ("ctxembed_bert", False), "b": ("ctxembed_elmo", False)})


def test_two_disabled_embedders_are_named_together():
    """The message names every disabled embedder, in the plural where there are several."""
    with pytest.raises(NoContextualEmbedder) as caught:
        check_writes_vectors({"tagger": ("tagger", None)}, disabled=["a", "b"])
    assert str(caught.value).endswith("its components are: ['tagger']; 'a', 'b' are disabled: enable it")
    with pytest.raises(NoContextualEmbedder) as caught:
        check_writes_vectors({"tagger": ("tagger", None)}, disabled=["a"])
    assert str(caught.value).endswith("its components are: ['tagger']; 'a' is disabled: enable it")
