"""`embed` and `demo` errors: checked before the model loads, one line, a traceback only with --verbose."""
import contextlib
import errno
import io
import os
import warnings
from pathlib import Path

import pytest
import spacy

from spacy_ctxembed.cli import embed as embed_module
from spacy_ctxembed.cli.errors import EXIT_RUNTIME, EXIT_USAGE, CliError, UsageError, exit_code, report, short_message
from spacy_ctxembed.cli.inputs import open_input
from spacy_ctxembed.textlines import decode_file, file_kind, line_bounds, split_lines, wide_encoding

from .conftest import ctx_config
from .test_cli_support import error_lines, invoke, run_subprocess, tiny_pipeline


@pytest.fixture(scope="session")
def pipeline(tiny_bert_dir, tmp_path_factory):
    return tiny_pipeline(tiny_bert_dir, tmp_path_factory)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as building a pipeline."""

    def build_pipeline(**kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(embed_module, "build_pipeline", build_pipeline)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("One line.\nTwo lines.\n", encoding="utf8")
    return path


def _one_error(result, code=2) -> str:
    assert result.exit_code == code, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_latin1_input_is_one_line_with_the_line_number_and_the_model_never_loads(tmp_path, no_model):
    (tmp_path / "latin1.txt").write_bytes("First line.\nCaf\u00e9 au lait.\n".encode("latin-1"))
    result = invoke("embed", tmp_path / "latin1.txt", "-o", tmp_path / "out", "-m", tmp_path / "no-such-model")
    assert _one_error(result) == (
        f"error: INPUT {tmp_path / 'latin1.txt'} is not UTF-8: line 2, byte offset 15 (0xe9); "
        "re-encode it, e.g. iconv -f latin1 -t utf-8"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt"]


def test_latin1_input_in_a_subprocess_names_the_input_not_the_missing_model(tmp_path):
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    result = run_subprocess("embed", tmp_path / "latin1.txt", "-o", tmp_path / "out", "-m", tmp_path / "nope")
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"error: INPUT {tmp_path / 'latin1.txt'} is not UTF-8: line 1, byte offset 3 (0xe9); "
        "re-encode it, e.g. iconv -f latin1 -t utf-8"
    ]


def test_a_directory_or_a_missing_file_as_input(tmp_path, no_model):
    (tmp_path / "corpus").mkdir()
    assert _one_error(invoke("embed", tmp_path / "corpus", "-o", tmp_path / "out")) == (
        f"error: INPUT {tmp_path / 'corpus'} is a directory; expected a text file (one doc per line) or a .spacy DocBin"
    )
    assert _one_error(invoke("embed", tmp_path / "missing.txt", "-o", tmp_path / "out")) == (
        f"error: INPUT {tmp_path / 'missing.txt'}: no such file"
    )
    (tmp_path / "broken.spacy").write_bytes(b"not a docbin")
    broken = invoke("embed", tmp_path / "broken.spacy", "-o", tmp_path / "out")
    assert "is not a readable .spacy DocBin" in _one_error(broken)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_or_an_unreadable_path_as_input_is_refused_before_it_is_read(tmp_path, no_model):
    """A named pipe given as INPUT was opened and read as a file: the run waited
    on it for ever (nothing writes it), or embedded what a writer sent once
    with no way to --resume it. A path that cannot be looked up (a symbolic
    link to itself) is named with the system's reason, not "no such file"."""
    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    assert _one_error(invoke("embed", fifo, "-o", tmp_path / "out")) == (
        f"error: INPUT {fifo} is not a regular file; to read a pipe or a device, use '-' (stdin)"
    )
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    assert _one_error(invoke("embed", loop, "-o", tmp_path / "out")) == (
        f"error: INPUT {loop}: {os.strerror(errno.ELOOP)}"
    )
    assert not (tmp_path / "out").exists()


def test_a_docbin_or_stdin_without_a_doc_of_text_is_refused(tmp_path, no_model):
    """Nothing to embed is an error, not an empty output that reads as a corpus of no docs."""
    from spacy.tokens import DocBin

    nlp = spacy.blank("en")
    DocBin(docs=[nlp(""), nlp("   "), nlp("\n")]).to_disk(tmp_path / "blank.spacy")
    assert _one_error(invoke("embed", tmp_path / "blank.spacy", "-o", tmp_path / "out")) == (
        f"error: INPUT {tmp_path / 'blank.spacy'} has no docs with text (3 docs): nothing to embed"
    )
    assert _one_error(invoke("embed", "-", "-o", tmp_path / "out", stdin=b"\n  \r\n\t\n")) == (
        "error: INPUT <stdin> has only blank lines (3): nothing to embed"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, kind", [("in.jsonl", "jsonl"), ("in.NDJSON", "jsonl"), ("in.parquet", "parquet")])
def test_jsonl_and_parquet_inputs_need_ray(tmp_path, no_model, name, kind):
    """Read as text, JSONL was embedded as JSON syntax, and Parquet failed as "not UTF-8"."""
    (tmp_path / name).write_bytes(b'{"text": "The cat sat."}\n')
    result = invoke("embed", tmp_path / name, "-o", tmp_path / "out")
    assert _one_error(result) == (
        f"error: INPUT {tmp_path / name}: a {kind} file (by its suffix {name[2:]}) needs --ray, "
        "see docs/scaling.md; without --ray, INPUT is a text file (one doc per line) or a .spacy DocBin"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name, kind", [
    ("a.txt", "text"), ("a.TEXT", "text"), ("notes", "text"), ("a.tsv", "text"), ("dir.d/a", "text"),
    ("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.parquet", "parquet"), ("a.Spacy", "docbin"),
    ("a.conllu", "conllu"), ("a.conll", "conll"), ("a.IOB", "conll"), ("a.iob2", "conll"), ("a.spacy.txt", "text"),
])
def test_one_rule_says_what_a_file_name_holds(name, kind):
    """`embed` and `analyze` classify INPUT and CORPUS by this one rule: the last suffix, in any case."""
    assert file_kind(Path("/x") / name) == kind and file_kind(name) == kind


@pytest.mark.parametrize("name", ["dev.conllu", "dev.CONLLU", "train.CONLL", "ner.iob2"])
def test_token_per_line_inputs_are_refused(tmp_path, no_model, name):
    """Read as text, a CoNLL-U file's comment lines and token rows were embedded as docs
    (exit 0). Only CoNLL-U is sent to `analyze`, which reads no other token format."""
    (tmp_path / name).write_bytes(b"# text = The cat sat.\n1\tThe\tthe\tDET\n")
    result = invoke("embed", tmp_path / name, "-o", tmp_path / "out")
    path, suffix = tmp_path / name, Path(name).suffix
    instead = (f"write its sentences one per line first (python scripts/conllu_to_text.py {path} sentences.txt), "
               "or analyse it with `analyze`, which reads CoNLL-U" if suffix.lower() == ".conllu" else
               f"make it a .spacy DocBin first (python -m spacy convert {path} . --converter ner, for CoNLL NER "
               "and IOB), which embed reads with its tokens")
    assert _one_error(result) == (
        f"error: INPUT {path}: a token-per-line file (by its suffix {suffix}), whose lines would be embedded as "
        f"text; {instead}"
    )
    assert result.exit_code == 2 and sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n"])
def test_an_input_with_nothing_to_embed_is_refused(tmp_path, no_model, content):
    (tmp_path / "in.txt").write_bytes(content)
    assert "nothing to embed" in _one_error(invoke("embed", tmp_path / "in.txt", "-o", tmp_path / "out"))


@pytest.mark.parametrize(
    "option, message",
    [
        (["-b", "0"], "--batch-size 0: expected a positive number of docs"),
        (["--batch-size", "-4"], "--batch-size -4: expected a positive number of docs"),
        (["--shard-size", "0"], "--shard-size 0: expected a positive number of docs"),
        (["-g", "-2"], "--gpu-id -2: expected a GPU number, or -1 for CPU"),
        (["-f", "csv"], "--format 'csv': expected one of docbin, npy"),
        (["--overwrite", "--resume"], "--overwrite and --resume exclude each other"),
        (["-m", "x", "-c", "y.cfg"], "give either --model or --config, not both"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path, text_file, no_model, option, message):
    result = invoke("embed", text_file, "-o", tmp_path / "out", *option)
    assert _one_error(result) == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_output_of_the_wrong_kind_is_refused_before_embedding(tmp_path, text_file, no_model):
    existing = tmp_path / "existing.spacy"
    existing.write_bytes(b"precious")
    assert _one_error(invoke("embed", text_file, "-o", existing, "--overwrite")) == (
        f"error: --output {existing} is a file; embed writes a directory (see docs/cli.md)"
    )
    assert existing.read_bytes() == b"precious"
    folder = tmp_path / "folder.spacy"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    assert _one_error(invoke("embed", text_file, "-o", folder, "--overwrite")) == (
        f"error: --output {folder} is a non-empty directory that is not a spacy-ctxembed output; "
        "choose another path (it is never replaced)"
    )
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    # Another tool's manifest.json (valid JSON): not an embed output whose manifest was cut,
    # so its owner is not told to remove the directory.
    (folder / "manifest.json").write_text('{"name": "my web app", "version": "1.0"}')
    assert _one_error(invoke("embed", text_file, "-o", folder, "--overwrite")) == (
        f"error: --output {folder} is a non-empty directory that is not a spacy-ctxembed output; "
        "choose another path (it is never replaced)"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "notes.txt"]
    # Under a file: mkdir's own reason ("File exists") named nothing that was wrong.
    under = existing / "sub" / "out"
    assert _one_error(invoke("embed", text_file, "-o", under)) == (
        f"error: --output {under}: cannot write in {under.parent}: {existing} is a file, not a directory"
    )


def test_an_empty_directory_is_a_fine_output(tmp_path, text_file, pipeline):
    (tmp_path / "out").mkdir()
    result = invoke("embed", text_file, "-o", tmp_path / "out", "-m", pipeline)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_a_line_beyond_max_length_is_refused_before_anything_is_embedded(tmp_path, pipeline):
    """spaCy's tokenizer refuses a text longer than nlp.max_length (E088): found when the run reached it,
    after the lines before were committed, and again on every --resume, the run could never finish."""
    long = "a " * 500_001
    path = tmp_path / "in.txt"
    path.write_text(f"Short.\n{long}\nb\n{long}xyz\n", encoding="utf8")
    assert _one_error(invoke("embed", path, "-o", tmp_path / "out", "-m", pipeline, "-s", "1")) == (
        f"error: INPUT {path}: line 2 has 1,000,002 characters, more than the pipeline's nlp.max_length "
        "(1,000,000), as does 1 more line; split them into shorter lines")  # (the first, not the longest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]
    path.write_text(f"{long[:999_999]}\n{long}\n", encoding="utf8")
    assert _one_error(invoke("embed", path, "-o", tmp_path / "out", "-m", pipeline)) == (
        f"error: INPUT {path}: line 2 has 1,000,002 characters, more than the pipeline's nlp.max_length "
        "(1,000,000); split it into shorter lines")


def _config_with(pipeline, tmp_path, extra: str):
    path = tmp_path / "config.cfg"
    text = spacy.load(pipeline).config.to_str()
    path.write_text(text.replace("[components.ctxembed_bert]\n", "[components.ctxembed_bert]\n" + extra, 1))
    return path


def test_a_bad_config_setting_is_a_short_error(tmp_path, text_file, pipeline):
    config = _config_with(pipeline, tmp_path, "not_a_setting = 3\n")
    line = _one_error(invoke("embed", text_file, "-o", tmp_path / "out", "-c", config))
    assert line.startswith("error: could not build the pipeline: ") and "not_a_setting" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_config_that_does_not_parse_or_is_missing(tmp_path, text_file, no_model):
    (tmp_path / "broken.cfg").write_text("[nlp\nlang = \n")
    assert _one_error(invoke("embed", text_file, "-o", tmp_path / "out", "-c", tmp_path / "broken.cfg")).startswith(
        f"error: --config {tmp_path / 'broken.cfg'}: "
    )
    assert _one_error(invoke("embed", text_file, "-o", tmp_path / "out", "-c", tmp_path / "missing.cfg")) == (
        f"error: --config {tmp_path / 'missing.cfg'}: no such file"
    )


def test_config_errors_keep_their_description(tmp_path, text_file, pipeline):
    """confection's first line is only "Config validation error": the detail must stay."""
    config = _config_with(pipeline, tmp_path, "extra = ${paths.nowhere}\n")
    line = _one_error(invoke("embed", text_file, "-o", tmp_path / "out", "-c", config))
    assert line.startswith("error: could not build the pipeline: ConfigValidationError: Config validation error: "
                           "Bad value substitution: option 'extra' in section 'components.ctxembed_bert' "
                           "contains an interpolation key 'paths.nowhere'"), line
    (tmp_path / "nohdr.cfg").write_text("hello\n")
    line = _one_error(invoke("embed", text_file, "-o", tmp_path / "out", "-c", tmp_path / "nohdr.cfg"))
    assert line.startswith(f"error: --config {tmp_path / 'nohdr.cfg'}: ConfigValidationError: "
                           "Config validation error: "), line
    assert "File contains no section headers. file: '<string>', line: 1" in line


def test_a_missing_pipeline_is_a_short_error(tmp_path, text_file):
    line = _one_error(invoke("embed", text_file, "-o", tmp_path / "out", "-m", tmp_path / "no-such-pipeline"))
    # (spaCy's own message names the path, not the option; analyze names it too)
    assert line.startswith(f"error: --model {tmp_path / 'no-such-pipeline'}: [E050] Can't find model"), line


def test_default_is_one_line_and_verbose_shows_the_traceback(tmp_path, text_file, pipeline):
    config = _config_with(pipeline, tmp_path, "not_a_setting = 3\n")
    args = ["embed", text_file, "-o", tmp_path / "out", "-c", config]
    plain = run_subprocess(*args)
    assert plain.returncode == 2
    lines = plain.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not build the pipeline: "), lines
    verbose = run_subprocess(*args, "--verbose")
    assert verbose.returncode == 2
    text = verbose.stderr.decode()
    assert "Traceback (most recent call last)" in text and "not_a_setting" in text
    assert text.splitlines()[-1] == lines[0]
    assert "╭" not in text  # no rich panels


def test_demo_errors_are_one_line_too(tmp_path):
    result = invoke("demo", "-m", tmp_path / "no-such-pipeline")
    line = _one_error(result)
    # as embed reports it
    assert line.startswith(f"error: --model {tmp_path / 'no-such-pipeline'}: [E050]"), line
    assert "--verbose" not in line
    verbose = invoke("demo", "-m", tmp_path / "no-such-pipeline", "--verbose")
    assert verbose.exit_code == 2 and "Traceback (most recent call last)" in verbose.stderr


def test_demo_of_a_folder_or_file_that_is_not_a_pipeline_names_the_option(tmp_path, tiny_bert_dir):
    """It got spaCy's "[E053] Could not read meta.json", where embed names --model."""
    (tmp_path / "in.txt").write_text("text\n", encoding="utf-8")
    for model in (tiny_bert_dir, tmp_path / "in.txt"):
        line = _one_error(invoke("demo", "-m", model))
        assert line == f"error: --model {model}: not a saved spaCy pipeline (no config.cfg)", line


def test_a_model_folder_that_is_not_a_pipeline_and_a_gpu_id_without_a_gpu_name_their_option(
        tmp_path, text_file, tiny_bert_dir, no_model):
    """Without --ray, a Hugging Face model folder as --model got spaCy's "[E053] Could
    not read meta.json" (with --ray, a line that names --model and what to do), and
    --gpu-id on a machine without CUDA "Cannot use GPU, CuPy is not installed"."""
    result = invoke("embed", text_file, "-o", tmp_path / "out", "-m", tiny_bert_dir)
    assert _one_error(result) == (
        f"error: --model {tiny_bert_dir}: not a saved spaCy pipeline (no config.cfg); to embed with a model's "
        "directory, pass a --config whose ctxembed component names it")
    from thinc.api import get_current_ops, set_current_ops

    from spacy_ctxembed.cli.errors import UsageError
    from spacy_ctxembed.cli.pipelines import build_pipeline

    ops = get_current_ops()
    try:
        spacy.require_gpu(0)
    except Exception as err:  # noqa: BLE001 - what this machine says (no CuPy, or no device 0)
        reason = str(err)
    else:  # pragma: no cover - a GPU machine
        set_current_ops(ops)  # (require_gpu switched every later test to the GPU)
        pytest.skip("this machine has a GPU 0")
    with pytest.raises(UsageError, match=r"^--gpu-id 0: ") as error:
        build_pipeline(gpu_id=0)
    assert reason.split(": ")[-1][:40] in str(error.value)


def test_an_installed_package_beside_a_folder_of_its_name_is_not_refused(tmp_path, text_file, monkeypatch):
    """spacy.load takes an installed package before a folder of its name (a package's
    source folder, run from inside it): the folder has no config.cfg, which is no reason
    to refuse the package. (The pipeline is built then: here, a stand-in says so.)"""
    (tmp_path / "my_pipeline").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(spacy.util, "is_package", lambda name: name == "my_pipeline")

    def build_pipeline(**kwargs):
        raise RuntimeError(f"building {kwargs['model']}")

    monkeypatch.setattr(embed_module, "build_pipeline", build_pipeline)
    result = invoke("embed", text_file, "-o", tmp_path / "out", "-m", "my_pipeline")
    assert "building my_pipeline" in result.stderr or "building my_pipeline" in repr(result.exception)
    refused = invoke("embed", text_file, "-o", tmp_path / "out", "-m", tmp_path)  # (a folder, no package)
    assert _one_error(refused).startswith(f"error: --model {tmp_path}: not a saved spaCy pipeline (no config.cfg)")


def test_a_pipeline_whose_embedder_is_not_primary_is_refused_before_any_doc_runs(tiny_bert_dir, tmp_path,
                                                                                    text_file):
    """It set no doc._.ctx_vectors: embed failed at the first doc ("line 1: the pipeline
    set no doc._.ctx_vectors", exit 1), naming neither the component nor the setting."""
    from .conftest import ctx_config

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="emb", config=ctx_config(name=tiny_bert_dir, primary=False))
    nlp.initialize()
    nlp.to_disk(tmp_path / "not-primary")
    result = invoke("embed", text_file, "-o", tmp_path / "out", "-m", tmp_path / "not-primary")
    assert _one_error(result) == (
        "error: [emb] primary = false: no component of the pipeline sets doc._.ctx_vectors, which a corpus job "
        "writes (a component that is not primary keeps its outputs in doc._.ctx_outputs['emb'] only); set "
        "primary = true on one ctxembed component")
    assert not (tmp_path / "out").exists()


def test_load_pipeline_names_a_disabled_primary_and_reads_no_other_components_cfg(tiny_bert_dir):
    from spacy.language import Language
    from thinc.api import Config

    from spacy_ctxembed.pipeline.build import NoContextualEmbedder, load_pipeline

    class NoCfg:
        cfg = None  # (what a component keeps there is its own affair)

        def __call__(self, doc):
            return doc

    if not Language.has_factory("ctxembed_test_no_cfg"):
        Language.factory("ctxembed_test_no_cfg", func=lambda nlp, name: NoCfg())
    bert = {"factory": "ctxembed_bert", "model": {"encoder": {"name": str(tiny_bert_dir)}}}
    config = spacy.blank("en").config
    config["nlp"]["pipeline"] = ["emb", "emb2", "other"]
    config["components"] = {"emb": bert, "emb2": {**bert, "primary": False},
                            "other": {"factory": "ctxembed_test_no_cfg"}}
    assert load_pipeline(config=Config(config)).pipe_names == ["emb", "emb2", "other"]
    config["nlp"]["disabled"] = ["emb"]
    with pytest.raises(NoContextualEmbedder) as error:
        load_pipeline(config=Config(config))
    assert str(error.value) == (
        "[emb2] primary = false: no component of the pipeline sets doc._.ctx_vectors, which a corpus job writes (a "
        "component that is not primary keeps its outputs in doc._.ctx_outputs['emb2'] only); set primary = true on "
        "one ctxembed component; 'emb' is disabled: enable it")


@pytest.mark.parametrize("encoding,named", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16LE"),
                                           ("utf-16-be", "UTF-16BE"), ("utf-32", "UTF-32")])
@pytest.mark.parametrize("stdin", [False, True])
def test_utf16_input_is_refused_not_embedded_as_its_bytes(tmp_path, no_model, encoding, named, stdin):
    """A UTF-16 file (PowerShell's `>`) is mostly valid UTF-8: its lines were
    embedded as their bytes, a NUL between letters ("\\x00P\\x00r..."), and the
    run said it wrote them all. Refused as a whole, naming the encoding iconv
    takes (the byte order, where no mark says it), before the model loads."""
    path = tmp_path / "u16.txt"
    path.write_bytes("Pretty good.\nThe second line.\n".encode(encoding))
    result = invoke("embed", "-" if stdin else path, "-o", tmp_path / "out", "-m", tmp_path / "no-such-model",
                    stdin=path.read_bytes() if stdin else None)
    label = "<stdin>" if stdin else str(path)
    assert _one_error(result) == (
        f"error: INPUT {label} looks like {named}, not UTF-8 (a byte order mark, or NUL and control bytes between its "
        f"characters: PowerShell's > and Notepad's \"Unicode\" write it): re-encode it, e.g. iconv -f {named} -t UTF-8")
    assert not (tmp_path / "out").exists()


def _compressed(name):
    import bz2
    import gzip
    import lzma

    text = b"Pretty good.\nThe second line.\n"
    return {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}[name](text)


@pytest.mark.parametrize("data,said", [
    (_compressed("gzip"), "is gzip-compressed, not text: decompress it first, e.g. gunzip -k"),
    (_compressed("bzip2"), "is bzip2-compressed, not text: decompress it first, e.g. bunzip2 -k"),
    (_compressed("xz"), "is xz-compressed, not text: decompress it first, e.g. unxz -k"),
    (b"\x7fELF\x02\x01\x01" + bytes(500), "is an executable (ELF), not text: give a text file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "is a PNG image, not text: give a text file"),
], ids=["gzip", "bzip2", "xz", "elf", "png"])
@pytest.mark.parametrize("stdin", [False, True])
def test_a_compressed_or_binary_input_is_said_to_be_one(tmp_path, no_model, data, said, stdin):
    """A gzip corpus was refused as "not UTF-8 ... re-encode it, e.g. iconv -f latin1", and an ELF
    file as UTF-32: following the advice gave a run that embedded the compressed bytes."""
    path = tmp_path / "corpus.txt.gz"
    path.write_bytes(data)
    result = invoke("embed", "-" if stdin else path, "-o", tmp_path / "out", "-m", tmp_path / "no-such-model",
                    stdin=data if stdin else None)
    assert _one_error(result) == f"error: INPUT {'<stdin>' if stdin else path} {said}"
    assert not (tmp_path / "out").exists()


def test_text_that_starts_like_a_signature_is_still_text():
    """bzip2's "BZh" counts only with its block magic after it; plain text never matches the others."""
    from spacy_ctxembed.textlines import not_text_refusal

    for text in ("BZh9 is a line of text\n", "PK is a name\n", "GIF89a\n", "%PDF-1.4 in a sentence\n"):
        assert not_text_refusal(text.encode("utf-8"), "INPUT x") is None, text


SCRIPTS = ["Pretty good, thanks.\nSecond line.\n", "Привет, как дела?\nМосква стоит на реке.\n",
           "مرحبا كيف حالك اليوم\nيا صديقي\n", "Ελληνικά κείμενα εδώ.\n", "यह एक परीक्षण वाक्य है।\n",
           "ਇਹ ਇੱਕ ਟੈਸਟ ਹੈ\n", "ภาษาไทย ง่าย มาก\n"]


@pytest.mark.parametrize("text", SCRIPTS, ids=["latin", "cyrillic", "arabic", "greek", "hindi", "gurmukhi", "thai"])
def test_wide_encodings_of_alphabetic_scripts_are_told_by_the_name_iconv_takes(text):
    """Cyrillic, Greek, Arabic or Indic text in UTF-16 is all bytes below 0x80:
    valid UTF-8 of control characters, which only counting NULs let through
    (a Russian file embedded as '\\x1f\\x04@\\x04...'; Gurmukhi's high byte is
    0x0A, a newline: a line became 16 docs). UTF-8 is never taken for them,
    nor are tab-separated or one-letter lines."""
    from spacy_ctxembed.textlines import HEAD_BYTES, wide_encoding

    expected = {"utf-16": "UTF-16", "utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE", "utf-32": "UTF-32",
                "utf-32-le": "UTF-32LE", "utf-32-be": "UTF-32BE", "utf-8": None, "utf-8-sig": None}
    for encoding, named in expected.items():
        assert wide_encoding(text.encode(encoding)[:HEAD_BYTES]) == named, encoding
    for text in ("a\tb\tc\td\n", "T\nF\nT\nF\n", "a\x0cb\n", "red \x1b[31mtext\x1b[0m\n"):
        assert wide_encoding(text.encode("utf-8")) is None, text


def test_cjk_in_utf16_without_a_mark_is_refused_as_not_utf8(tmp_path, no_model):
    """(Its bytes are mostly not valid UTF-8: the decoding refuses it.)"""
    path = tmp_path / "cjk.txt"
    path.write_bytes("你好，世界。\n".encode("utf-16-le"))  # (its byte order was told backwards)
    result = invoke("embed", path, "-o", tmp_path / "out", "-m", tmp_path / "no-such-model")
    assert _one_error(result).startswith(f"error: INPUT {path} is not UTF-8: line 1")


def test_a_training_configs_untrained_components_are_left_out_and_sourced_ones_run(tiny_bert_dir, tmp_path):
    """`embed --config` on a training config (an embedder and a tagger listening
    to it) failed to build with spaCy's E143 (the tagger has no labels without
    examples); a tagger that could be initialized would have tagged from random
    weights. Untrained components are left out, by name; the vectors are the
    embedder's alone; a tagger the config sources (with its embedder), trained, runs."""
    import warnings

    import numpy
    from spacy.training import Example
    from thinc.api import Config

    from spacy_ctxembed.pipeline.build import load_pipeline

    bert = {"factory": "ctxembed_bert", "model": {"encoder": {"name": str(tiny_bert_dir)}}}
    tagger = {"factory": "tagger", "model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}}
    config = spacy.blank("en").config
    config["nlp"]["pipeline"] = ["emb", "tagger"]
    config["components"] = {"emb": bert, "tagger": tagger}
    text = "I like green eggs"
    with pytest.warns(UserWarning, match=r"^'tagger': built untrained from the config .* so left out"):
        nlp = load_pipeline(config=Config(config))
    assert nlp.pipe_names == ["emb"] and nlp.disabled == ["tagger"]
    alone = spacy.blank("en").config
    alone["nlp"]["pipeline"], alone["components"] = ["emb"], {"emb": bert}
    doc = nlp(text)
    assert not any(token.tag_ for token in doc)
    numpy.testing.assert_array_equal(doc._.ctx_vectors, load_pipeline(config=Config(alone))(text)._.ctx_vectors)
    with pytest.warns(UserWarning, match=r"^'tagger': built untrained from the config"):
        result = invoke("embed", *_text_input(tmp_path, text), "-o", tmp_path / "out", "-c",
                        _written(tmp_path, config))
    assert result.exit_code == 0, result.stderr

    trained = spacy.blank("en")
    trained.add_pipe("ctxembed_bert", name="emb", config={"model": {"encoder": {"name": str(tiny_bert_dir)}}})
    trained.add_pipe("tagger", config={"model": tagger["model"]})
    examples = [Example.from_dict(trained.make_doc(text), {"tags": ["PRP", "VBP", "JJ", "NNS"]})]
    optimizer = trained.initialize(lambda: examples)
    for _ in range(10):
        trained.update(examples, sgd=optimizer)
    trained.to_disk(tmp_path / "trained")
    config["components"] = {name: {"source": str(tmp_path / "trained")} for name in ("emb", "tagger")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sourced = load_pipeline(config=Config(config))
    assert sourced.pipe_names == ["emb", "tagger"]
    assert [token.tag_ for token in sourced(text)] == [token.tag_ for token in trained(text)] != [""] * 4


def _text_input(tmp_path, text):
    path = tmp_path / "in.txt"
    path.write_text(text + "\n", encoding="utf8")
    return (path,)


def _written(tmp_path, config):
    from thinc.api import Config

    path = tmp_path / "config.cfg"
    Config(config).to_disk(path)
    return path


def test_line_bounds_drop_the_files_byte_order_mark_and_a_final_carriage_return():
    bom = b"\xef\xbb\xbf"
    assert line_bounds(bom + b"ab\r\n", first=True) == (3, 5)
    assert line_bounds(bom + b"ab\r\n", first=False) == (0, 5)  # a BOM inside the file is text
    assert line_bounds(b"ab\r", first=False) == (0, 2)  # the last line, without "\n"
    assert line_bounds(b"ab\r\r\n", first=False) == (0, 3)  # one "\r" is the line ending, the other text
    assert line_bounds(b"\n", first=True) == (0, 0)


def test_split_lines_keeps_a_last_line_of_spaces():
    assert split_lines("a\r\n \n") == ["a", " "]
    assert split_lines("a\n ") == ["a", " "]  # no final "\n"
    assert split_lines("a\n\n") == ["a", ""]


def test_decode_file_error_positions_count_the_byte_order_mark():
    with pytest.raises(UnicodeDecodeError) as error:
        decode_file(b"\xef\xbb\xbfab\xe9")
    assert error.value.start == 5


def test_utf16_with_three_quarters_of_its_high_bytes_below_0x20_is_refused():
    head = "a\u2020bc".encode("utf-16-le")  # high bytes 00 20 00 00: three in four below 0x20
    assert wide_encoding(head) == "UTF-16LE"


@pytest.mark.parametrize("head,named", [
    (b"a\x00", "UTF-16LE"), (b"\x00a", "UTF-16BE"), (b"\n\x00", "UTF-16LE"),  # one UTF-16 character
    (b"ab\x00", None), (b"a", None), (b"\x00", None), (b"", None), (b"ab", None), (b"\xc3\xa9", None),
])
def test_a_file_of_one_utf16_character_is_told_as_utf16(head, named):
    """Below four bytes only UTF-32 cannot be told: "a\\x00" is "a" in UTF-16LE, which
    would otherwise be embedded as "a" and a NUL character."""
    assert wide_encoding(head) == named


def test_lines_beyond_max_length_are_counted_and_a_line_of_exactly_max_length_is_fine(tmp_path):
    """The refusal names the first long line and how many more there are; a line of exactly
    nlp.max_length characters is accepted (spaCy refuses only longer texts)."""
    from spacy_ctxembed.cli.embed import _check_line_lengths

    nlp = spacy.blank("en")
    nlp.max_length = 5
    path = tmp_path / "in.txt"
    path.write_text("ok\nsixsix\nfine\nsevenxx\neight888\n", encoding="utf8")
    inp = open_input(str(path))
    try:
        with pytest.raises(UsageError) as caught:
            _check_line_lengths(inp, nlp)
    finally:
        inp.close()
    assert str(caught.value) == (f"INPUT {path}: line 2 has 6 characters, more than the pipeline's nlp.max_length "
                                 "(5), as do 2 more lines; split them into shorter lines")
    path.write_text("ok\nfive5\n", encoding="utf8")
    inp = open_input(str(path))
    try:
        _check_line_lengths(inp, nlp)  # no error
    finally:
        inp.close()


def test_a_long_foreign_message_is_cut_to_400_characters_and_says_so():
    """A foreign first line (a tensor, a file listing) is cut to MAX_MESSAGE (400)
    characters, the note included; the CLI's own lines and the library's tagged ones
    are never cut: they are long where a user's path is, and their advice comes last
    (a 90-character path cut "or analyse it with `analyze`" off the CoNLL-U refusal)."""
    note = "... (cut; --verbose shows all of it)"
    message = short_message(RuntimeError("x" * 1000))
    assert message == "RuntimeError: " + "x" * (400 - len("RuntimeError: ") - len(note)) + note
    assert short_message(CliError("x" * 1000)) == "x" * 1000
    tagged = "[ctxembed_bert] model = '/" + "d/" * 300 + "': no such folder"
    assert short_message(ValueError(tagged)) == "ValueError: " + tagged
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert report(RuntimeError("x" * 1000), verbose=False) == EXIT_RUNTIME
    assert stderr.getvalue() == "error: " + message + "\n"  # (the note, not the hint a second time)
    with contextlib.redirect_stderr(stderr := io.StringIO()):
        report(CliError("could not build the pipeline: " + message), verbose=False)
    assert stderr.getvalue().endswith(note + "\n")


def test_a_refusal_under_a_deep_folder_keeps_its_advice(tmp_path, no_model):
    """The whole line, however long the user's path: 400 characters cut this one before
    its advice (`analyze`), at a 90-character path."""
    deep = tmp_path.joinpath(*["a-folder-of-the-corpus"] * 12)
    deep.mkdir(parents=True)
    (deep / "dev.conllu").write_bytes(b"# text = The cat sat.\n1\tThe\tthe\tDET\n")
    line = _one_error(invoke("embed", deep / "dev.conllu", "-o", tmp_path / "out"))
    assert len(line) > 600 and line.endswith("or analyse it with `analyze`, which reads CoNLL-U"), line


def test_config_validation_errors_show_three_and_count_the_rest():
    """A config with many bad settings: the first three on the line, then how many more."""
    class Invalid(ValueError):
        title = "Config validation error"
        errors = [{"loc": ["components", "c", f"s{i}"], "msg": f"bad {i}"} for i in range(5)]

    assert short_message(Invalid()) == ("Config validation error: components -> c -> s0: bad 0; components -> c -> s1: "
                                        "bad 1; components -> c -> s2: bad 2 (and 2 more)")
    assert exit_code(Invalid()) == EXIT_USAGE


def test_the_traceback_hint_is_given_only_without_verbose(capsys):
    """--verbose prints the traceback, so its error line does not tell the user to pass --verbose."""
    assert report(RuntimeError("boom"), verbose=False) == EXIT_RUNTIME
    assert capsys.readouterr().err.splitlines()[-1] == "error: RuntimeError: boom (--verbose shows the traceback)"
    assert report(RuntimeError("boom"), verbose=True) == EXIT_RUNTIME
    assert capsys.readouterr().err.splitlines()[-1] == "error: RuntimeError: boom"


def test_only_a_message_that_starts_with_a_tag_is_a_usage_error():
    """"[component] setting = ..." and "[E050] ..." are about what the user asked for (2);
    a bracketed word inside a message (a path, "[Errno 28]") is a failure while running (1)."""
    assert exit_code(ValueError("[ctxembed_bert] pooling = 'x': expected one of 'mean'")) == EXIT_USAGE
    assert exit_code(OSError("[E050] Can't find model 'x'")) == EXIT_USAGE
    assert exit_code(OSError("cannot write /data/[run1]/vectors.npy: disk full")) == EXIT_RUNTIME
    assert exit_code(OSError(28, "No space left on device")) == EXIT_RUNTIME


def test_load_pipeline_refuses_a_model_and_a_config_together():
    """The Python API refuses both, as the CLI and embed_corpus do, before loading either."""
    from spacy_ctxembed.pipeline.build import load_pipeline

    with pytest.raises(ValueError, match=r"^give either a model or a config, not both$"):
        load_pipeline(model="no_such_model", config="no_such.cfg")


def test_load_pipeline_gpu_id_0_asks_for_gpu_0(monkeypatch):
    """gpu_id 0 is a GPU (the first), not the CPU: spaCy's require_gpu is asked for it."""
    from spacy_ctxembed.pipeline.build import load_pipeline

    asked = []

    def require_gpu(gpu_id=0):
        asked.append(gpu_id)
        raise RuntimeError("no GPU here")

    monkeypatch.setattr(spacy, "require_gpu", require_gpu)
    with pytest.raises(RuntimeError, match="no GPU here"):
        load_pipeline(model="no_such_model", gpu_id=0)
    assert asked == [0]


def test_load_pipeline_reads_a_config_file_given_as_a_path(tiny_bert_dir, tmp_path):
    """`config` as a pathlib.Path is a file to read, not config text."""
    from spacy_ctxembed.pipeline.build import load_pipeline

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="emb", config=ctx_config(name=tiny_bert_dir))
    nlp.config.to_disk(tmp_path / "config.cfg")
    loaded = load_pipeline(config=tmp_path / "config.cfg")
    assert loaded.pipe_names == ["emb"]
    assert loaded("A doc.")._.ctx_vectors.shape == (3, 32)


@pytest.mark.parametrize("learns", ["encoder", "combiner", "none"])
def test_an_embedder_a_training_config_fine_tunes_is_told_to_run_on_its_base_weights(tiny_bert_dir, tmp_path,
                                                                                      learns):
    """`embed --config` on the config of a pipeline that fine-tuned its embedder
    (`training/model-best/config.cfg`) built the embedder from its base model
    (and a fresh ScalarMix): other vectors than the trained pipeline's, with a
    warning about the tagger only. It now says so, naming the embedder; where
    nothing of it trains (frozen encoder, a listener mixing the layers itself),
    the vectors are the same and nothing is said."""
    import warnings

    import numpy
    from spacy.training import Example

    from spacy_ctxembed.pipeline.build import load_pipeline

    trained = spacy.blank("en")
    combiner = {"combiner": {"@layers": "spacy-ctxembed.ScalarMix.v1"}} if learns == "combiner" else {}
    trained.add_pipe("ctxembed_bert", name="emb", config={"model": {"encoder": {
        "name": str(tiny_bert_dir), "layers": [1, 2], "trainable": learns == "encoder"}, **combiner}})
    trained.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16,
        "mix_layers": learns != "combiner"}}})
    text = "I like green eggs"
    examples = [Example.from_dict(trained.make_doc(text), {"tags": ["PRP", "VBP", "JJ", "NNS"]})]
    optimizer = trained.initialize(lambda: examples)
    for _ in range(3):
        trained.update(examples, sgd=optimizer)
    trained.to_disk(tmp_path / "trained")
    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        built = load_pipeline(config=tmp_path / "trained" / "config.cfg")
    fine_tuned = [str(w.message) for w in told if "fine-tuned by the config" in str(w.message)]
    moved = numpy.abs(built(text)._.ctx_vectors - trained(text)._.ctx_vectors).max()
    if learns != "none":
        assert moved > 1e-5
        assert len(fine_tuned) == 1 and fine_tuned[0].startswith("'emb': fine-tuned by the config")
        assert "give the trained pipeline instead" in fine_tuned[0]
    else:
        assert moved == 0 and not fine_tuned


def test_one_component_left_out_untrained_is_told_of_as_it():
    """The warning speaks of one component as "it", of several as "them"."""
    from spacy_ctxembed.pipeline.build import leave_out_untrained

    nlp = spacy.blank("en")
    nlp.add_pipe("tagger")
    nlp.add_pipe("senter")
    with pytest.warns(UserWarning) as one:
        leave_out_untrained(nlp, ["tagger"])
    assert str(one[0].message).endswith(
        "so left out: the docs carry no annotation from it; to run it, give the trained pipeline instead")
    with pytest.warns(UserWarning) as two:
        leave_out_untrained(nlp, ["senter"], where="--config c.cfg", instead=" with --model")
    assert str(two[0].message) == (
        "--config c.cfg: 'senter': built untrained from the config (a training config: only a `source`d component "
        "keeps trained weights), so left out: the docs carry no annotation from it; to run it, give the trained "
        "pipeline with --model instead")
    nlp.enable_pipe("tagger")
    nlp.enable_pipe("senter")
    with pytest.warns(UserWarning) as both:
        leave_out_untrained(nlp, ["tagger", "senter"])
    assert "'tagger', 'senter': built untrained" in str(both[0].message)
    assert str(both[0].message).endswith("from them; to run them, give the trained pipeline instead")
    assert nlp.disabled == ["tagger", "senter"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        leave_out_untrained(nlp, ["tagger"], warn=False)


def test_split_lines_drops_one_carriage_return_as_line_bounds_does():
    """Whole-file readers (split_lines) and line-by-line readers (line_bounds)
    follow one rule: only one "\\r" before the "\\n" (or at the end) is the line
    ending, another is text. Before, split_lines was only tried with single
    "\\r"s, line_bounds with the double one. The reference is line_bounds on
    each line's bytes."""
    text = "ab\r\r\nc\r\n\r\r\nend\r\r"
    raw = text.encode("utf8")
    lines = raw.split(b"\n")
    expected = [line[slice(*line_bounds(line, first=False))].decode("utf8") for line in lines]
    assert split_lines(text) == expected == ["ab\r", "c", "\r", "end\r"]
