"""`embed --ray` and `read_docs` refusing what they cannot do, before any Ray starts."""
import json

import pytest
import spacy
from typer.testing import CliRunner

pytest.importorskip("pyarrow")

from spacy_ctxembed.cli import app  # noqa: E402
from spacy_ctxembed.distributed import read_docs  # noqa: E402


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
