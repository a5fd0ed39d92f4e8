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
    (["--text-key", "body"], "--text-key: only with --ray"),
    (["--actors", "2", "--float16"], "--actors, --float16: only with --ray"),
    (["--ray", "--model", "no/such/pipeline"], "--model no/such/pipeline: no such directory"),
    (["--ray", "--input-format", "csv"], "input format 'csv': expected one of text, jsonl, parquet"),
])
def test_cli_ray_usage_errors(tmp_path, args, message):
    """Refused before Ray starts: no local_ray fixture, and none is started."""
    (tmp_path / "in.txt").write_text("a doc\n", encoding="utf8")
    result = CliRunner().invoke(app, ["embed", str(tmp_path / "in.txt"), "-o", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
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


def test_read_docs_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"complete": False, "shards": []}), encoding="utf8")
    with pytest.raises(ValueError, match="is not complete: run embed --ray again"):
        list(read_docs(tmp_path, spacy.blank("en").vocab))
    with pytest.raises(ValueError, match="no readable manifest.json"):
        list(read_docs(tmp_path / "nowhere", spacy.blank("en").vocab))


def test_an_actor_error_is_reported_by_its_cause():
    """Ray Data hands an actor's error over wrapped, once or twice; the CLI reports the original."""
    from spacy_ctxembed.cli.embed import _actor_cause
    from spacy_ctxembed.distributed import InputError

    original = InputError("input corpus.txt changed since the run was planned (size or modification time)")

    class Wrapped(Exception):  # like ray.exceptions.RayTaskError: the original in .cause
        def __init__(self, cause):
            super().__init__("task failed")
            self.cause = cause

    try:
        try:
            raise Wrapped(original)
        except Wrapped as e:
            raise RuntimeError("UserCodeException") from e
    except RuntimeError as outer:
        assert _actor_cause(outer) is original
    plain = ValueError("no chain")
    assert _actor_cause(plain) is plain
