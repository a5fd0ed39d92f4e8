"""`embed`: run a pipeline over a corpus and write the token vectors, streaming.

Memory stays bounded whatever the corpus size: docs are written as they come
out of the pipeline, a shard (``--shard-size`` docs) at a time. The output
layout, atomicity and ``--resume`` are described in `output` and docs/cli.md.

With ``--ray`` the corpus is embedded by a pool of Ray actors instead, into
Parquet shards (`spacy_ctxembed.distributed`, docs/scaling.md).
"""
import contextlib
import hashlib
import math
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import spacy.util
import typer
from spacy.language import Language
from spacy.util import load_config, minibatch
from thinc.api import Config
from tqdm import tqdm

from ..errors import MissingExtra, install_extra
from ..fileio import MODEL_CHANGED, model_identity
from .errors import CliError, UsageError, short_message
from .inputs import Input, InputChanged, open_input
from .output import WRITERS, AlreadyComplete, Run, ShardWriter, counted, read_manifest
from .pipelines import build_pipeline, refuse_folder_without_pipeline

FORMATS = tuple(WRITERS)

HELP = {
    "input": ("Text file (one doc per line, UTF-8), '-' for stdin, or a .spacy DocBin; "
              "with --ray: a text, JSONL or Parquet file, or a directory of them"),
    "output": "Output directory (created when complete; see docs/cli.md for the layout)",
    "format": "docbin (the default): DocBin shards, vectors in user data; npy: vectors.npy + docs.jsonl",
    "model": "A saved pipeline (path or package) with a ctxembed component",
    "config": "A config.cfg to build the pipeline from (instead of --model)",
    "batch_size": "Docs per nlp.pipe batch (>= 1); a shard's docs are batched on their own, so at most --shard-size",
    "shard_size": "Docs per shard (docbin) or per commit (npy): what --resume keeps, and what is held in memory",
    "gpu_id": "GPU to use; -1 for CPU",
    "overwrite": ("Replace a complete OUTPUT (kept until the new one is complete; with --ray, deleted when the run "
                  "starts) or discard an interrupted run"),
    "resume": "Continue an interrupted run into OUTPUT, keeping its committed shards (same input, model, format)",
    "ray": "Embed on Ray Data: a pool of actors writes Parquet shards to OUTPUT; rerunning resumes",
    "address": "--ray: a running Ray cluster ('auto', 'ray://HOST:10001'); default: start a local Ray",
    "actors": "--ray: actors in the pool, each loads the pipeline once (no more than the shards left) [default: 2]",
    "cpus_per_actor": "--ray: CPUs (torch threads) per actor [default: 1]",
    "gpus_per_actor": "--ray: GPUs per actor (0: CPU; 0.5: two actors share a GPU) [default: 0]",
    "input_format": "--ray: text, jsonl or parquet (default: from the file names)",
    "text_key": "--ray: the text field of JSONL records, or the text column of Parquet files [default: text]",
    "float16": "--ray: store the vectors as float16 (half the size)",
}


def embed(
    input_path: str = typer.Argument(..., metavar="INPUT", help=HELP["input"]),
    output: Path = typer.Option(..., "--output", "-o", help=HELP["output"]),
    output_format: Optional[str] = typer.Option(None, "--format", "-f", help=HELP["format"]),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=HELP["model"]),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help=HELP["config"]),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help=HELP["batch_size"]),
    shard_size: int = typer.Option(1000, "--shard-size", "-s", help=HELP["shard_size"]),
    gpu_id: int = typer.Option(-1, "--gpu-id", "-g", help=HELP["gpu_id"]),
    overwrite: bool = typer.Option(False, "--overwrite", help=HELP["overwrite"]),
    resume: bool = typer.Option(False, "--resume", help=HELP["resume"]),
    ray: bool = typer.Option(False, "--ray", help=HELP["ray"]),
    address: Optional[str] = typer.Option(None, "--address", help=HELP["address"]),
    # Defaults of the --ray options are None, so that giving one without --ray is caught.
    actors: Optional[int] = typer.Option(None, "--actors", help=HELP["actors"]),
    cpus_per_actor: Optional[float] = typer.Option(None, "--cpus-per-actor", help=HELP["cpus_per_actor"]),
    gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor", help=HELP["gpus_per_actor"]),
    input_format: Optional[str] = typer.Option(None, "--input-format", help=HELP["input_format"]),
    text_key: Optional[str] = typer.Option(None, "--text-key", help=HELP["text_key"]),
    float16: Optional[bool] = typer.Option(None, "--float16", help=HELP["float16"]),
) -> None:
    """Embed a corpus: every token gets a contextual vector."""
    if ray:
        if output_format is not None:
            raise UsageError(f"--format {output_format}: --ray always writes Parquet shards")
        if gpu_id != -1:
            raise UsageError(f"--gpu-id {gpu_id}: with --ray, use --gpus-per-actor")
        _check_settings(output, "docbin", model, config, batch_size, shard_size, gpu_id, overwrite, resume)
        _embed_ray(input_path, output, model, _read_config(config), batch_size, shard_size, overwrite, address,
                   2 if actors is None else actors, 1.0 if cpus_per_actor is None else cpus_per_actor,
                   0.0 if gpus_per_actor is None else gpus_per_actor, input_format,
                   "text" if text_key is None else text_key,
                   bool(float16))
        return
    ray_only = {"--address": address, "--actors": actors, "--cpus-per-actor": cpus_per_actor,
                "--gpus-per-actor": gpus_per_actor, "--input-format": input_format, "--text-key": text_key,
                "--float16": float16}
    given = [name for name, value in ray_only.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only with --ray")
    output_format = output_format or "docbin"
    # Everything that can be checked without the model is checked first.
    _check_settings(output, output_format, model, config, batch_size, shard_size, gpu_id, overwrite, resume)
    loaded_config = _read_config(config)
    inp = open_input(input_path)
    try:
        identity = _identity(inp, output_format, model, config, loaded_config)
        try:
            run = Run.plan(output, identity, overwrite=overwrite, resume=resume)
        except AlreadyComplete as done:
            typer.echo(f"nothing to do: {output} is already complete ({_totals(done.manifest)})", err=True)
            return
        # (a run interrupted after its manifest was written kept every doc: only the rename was left)
        kept = run.committed.docs if not run.finished else int((read_manifest(run.dir) or {}).get("docs", 0))
        if run.committed.shards and not run.finished:
            try:
                inp.check_kept(run.committed.shards[-1], f"the {kept} docs kept in {run.dir}")
            except UsageError:
                run.abandon()  # (unlocked, kept as it is: --overwrite starts over)
                raise
        manifest = _run(run, inp, output_format, model, loaded_config, batch_size, shard_size, gpu_id)
    finally:
        inp.close()
    note = f"resumed: {kept} docs kept from the interrupted run; " if run.resumed else ""
    typer.echo(f"{note}wrote {_totals(manifest)} to {output}", err=True)


def _embed_ray(
    input_path: str, output: Path, model: Optional[str], config, batch_size: int, shard_size: int,
    overwrite: bool, address: Optional[str], actors: int, cpus_per_actor: float, gpus_per_actor: float,
    input_format: Optional[str], text_key: str, float16: bool,
) -> None:
    from ..distributed import embed_corpus  # (Ray and pyarrow are imported by the run: MissingExtra, below)
    if input_path == "-":
        raise UsageError("INPUT -: --ray does not read stdin (its actors read the input files themselves, each "
                         "its own rows); write it to a .txt file and give that")
    if actors < 1:
        raise UsageError(f"--actors {actors}: expected a positive number of actors")
    # click parses "nan" and "inf" as floats; NaN passes any `x < 0` check, and Ray fails on both later.
    if not (math.isfinite(cpus_per_actor) and cpus_per_actor > 0):
        raise UsageError(f"--cpus-per-actor {cpus_per_actor}: expected a positive number")
    if not (math.isfinite(gpus_per_actor) and gpus_per_actor >= 0):
        raise UsageError(f"--gpus-per-actor {gpus_per_actor}: expected 0 (CPU) or a positive number")
    if model is not None and not Path(model).exists() and not spacy.util.is_package(model):
        raise UsageError(f"--model {model}: no such directory or installed pipeline package")
    if not text_key:
        raise UsageError("--text-key '': expected the name of the JSONL field or Parquet column of the text")
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; embed writes a directory (see docs/scaling.md)")
    if input_format is not None:
        from ..distributed.sources import KINDS

        if input_format not in KINDS:
            raise UsageError(f"--input-format {input_format}: expected one of {', '.join(KINDS)}")
    try:
        manifest = embed_corpus(
            input_path, output, model=model, config=config, input_format=input_format, text_key=text_key,
            shard_size=shard_size, batch_size=batch_size, actors=actors, cpus_per_actor=cpus_per_actor,
            gpus_per_actor=gpus_per_actor, dtype="float16" if float16 else "float32", address=address,
            overwrite=overwrite,
        )
    except Exception as e:  # noqa: B902 - on the driver or in an actor: see _ray_failure
        reported = _ray_failure(e)
        if reported is e:
            raise
        raise reported from e
    if manifest.get("already_complete"):
        typer.echo(f"nothing to do: {output} is already complete ({manifest['docs']} docs, "
                   f"{manifest['rejected']} rows rejected)", err=True)
        return
    kept = manifest.get("resumed_shards", 0)
    note = f"resumed: {counted(kept, 'shard')} kept; " if kept else ""
    typer.echo(
        f"{note}wrote {counted(manifest['docs'], 'doc')} in {counted(len(manifest['shards']), 'Parquet shard')} to "
        f"{output / 'shards'}; {counted(manifest['rejected'], 'row')} rejected (see {output / 'rejected.jsonl'})",
        err=True,
    )


def _ray_failure(exc: Exception) -> Exception:
    """What the CLI reports for an error of a --ray run: a usage error for a bad input,
    setting or output (found on the driver or by an actor), else the actor's own error."""
    from ..distributed import (
        DifferentRun,
        Float16Overflow,
        InputError,
        ModelChanged,
        NoGPUs,
        NoRayAt,
        OutputInUse,
        OutputNotWritable,
        ShardsFailed,
    )
    from ..distributed.run import ray_actor_error
    from ..pipeline.build import NoContextualEmbedder

    actor_error = ray_actor_error(exc)
    cause = exc if actor_error is None else actor_error
    if isinstance(cause, NoGPUs):
        return UsageError(f"--gpus-per-actor {cause.gpus:g}: the local Ray found {cause.found:g} GPUs, and its "
                          "actors would wait for one forever; use 0 (CPU), or --address of a cluster with GPUs")
    if isinstance(cause, NoRayAt):
        return UsageError(f"--address {cause.address}: no Ray cluster answers there ({cause.reason}); start one "
                          "(ray start --head) and give the address it prints, or leave --address out for a local Ray")
    if isinstance(cause, DifferentRun):
        shown = "; ".join(f"{_RUN_OPTIONS.get(key, key)}: {change}" for key, change in cause.changes.items())
        return UsageError(f"--output {cause.out} holds a run of other inputs or settings ({shown}); use another "
                          "--output, or --overwrite")
    if isinstance(cause, ModelChanged):
        return _model_changed(cause.model)
    if isinstance(cause, OutputNotWritable):  # (as without --ray)
        return UsageError(f"--output {cause.out}: cannot write in it: {cause.why}")
    if isinstance(cause, ShardsFailed):
        return CliError(str(cause).replace("embed_corpus: ", "", 1))
    if isinstance(cause, (InputError, Float16Overflow, OutputInUse, FileExistsError, NoContextualEmbedder)):
        # Ray appends lines about its retries to the message: the first line is the original's.
        return UsageError(str(cause).strip().split("\n", 1)[0])
    if actor_error is not None:
        return CliError(f"a Ray actor failed: {short_message(actor_error)}")
    if isinstance(exc, ImportError):  # on the driver: `import ray` (an actor's is an actor failure)
        return _needs_ray(exc)
    return exc


#: The options of `embed --ray` that set each field of a run's identity (`DifferentRun`).
_RUN_OPTIONS = {"inputs": "INPUT", "text_key": "--text-key", "shard_size": "--shard-size", "dtype": "--float16",
                "model": "the model", "config_sha256": "--config"}


def _needs_ray(exc: ImportError) -> UsageError:
    if isinstance(exc, MissingExtra):  # (its message names the library call)
        return UsageError(f"--ray needs {exc.package}, which is not installed: {install_extra(exc.extra)}")
    return UsageError(f"--ray needs Ray Data: {install_extra('ray')} ({exc})")


def _check_settings(
    output: Path,
    output_format: str,
    model: Optional[str],
    config: Optional[Path],
    batch_size: int,
    shard_size: int,
    gpu_id: int,
    overwrite: bool,
    resume: bool,
) -> None:
    if output_format not in FORMATS:
        raise UsageError(f"--format {output_format!r}: expected one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: expected a positive number of docs")
    if shard_size < 1:
        raise UsageError(f"--shard-size {shard_size}: expected a positive number of docs")
    if gpu_id < -1:
        raise UsageError(f"--gpu-id {gpu_id}: expected a GPU number, or -1 for CPU")
    if model is not None and config is not None:
        raise UsageError("give either --model or --config, not both")
    refuse_folder_without_pipeline(
        model, "; to embed with a model's directory, pass a --config whose ctxembed component names it")
    if overwrite and resume:
        raise UsageError("--overwrite and --resume exclude each other")
    if str(output) in ("-", ""):
        raise UsageError("--output: expected a directory path (embed does not write to stdout)")


def _read_config(config: Optional[Path]):
    if config is None:
        return None
    if not config.is_file():
        what = "is a directory" if config.is_dir() else "no such file"
        raise UsageError(f"--config {config}: {what}")
    try:
        return load_config(config)
    except Exception as e:  # configparser / confection: a config that does not parse
        raise UsageError(f"--config {config}: {short_message(e)}") from e


def _identity(inp: Input, output_format: str, model: Optional[str], config: Optional[Path],
              loaded_config: Optional[Config] = None) -> Dict[str, Any]:
    """What makes two runs the same run (for --resume), and what the manifest records.

    The model is checksummed, as --ray does: the same --model path may hold
    another pipeline on --resume, and the output would mix two models' vectors.
    So are the model files a --config names (`fileio.config_files`).
    """
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    return {
        "format": output_format,
        "input": inp.label if inp.path is None else str(inp.path),
        "input_kind": inp.kind,
        "input_sha256": inp.sha256,
        "input_lines": inp.n_records,
        "model": model,
        "pipeline": model_identity(model, loaded_config),
        "config": None if config is None else str(config.resolve()),
        "config_sha256": None if config is None else hashlib.sha256(config.read_bytes()).hexdigest(),
    }


def _check_line_lengths(inp: Input, nlp: Language) -> None:
    """Refuse, before anything is embedded, lines the pipeline's tokenizer would
    refuse (spaCy's E088) when the run reached them, and again on every --resume."""
    if inp.longest <= nlp.max_length:
        return
    over = [(number, len(text)) for text, number in inp.records(nlp.vocab) if len(text) > nlp.max_length]
    (number, chars), more = over[0], len(over) - 1
    others = "" if not more else ", as does 1 more line" if more == 1 else f", as do {more:,} more lines"
    raise UsageError(
        f"INPUT {inp.label}: line {number} has {chars:,} characters, more than the pipeline's nlp.max_length "
        f"({nlp.max_length:,}){others}; split {'them' if more else 'it'} into shorter lines"
    )


def _run(
    run: Run,
    inp: Input,
    output_format: str,
    model: Optional[str],
    config,
    batch_size: int,
    shard_size: int,
    gpu_id: int,
) -> Dict[str, Any]:
    writer: Optional[ShardWriter] = None
    try:
        if run.finished:  # interrupted after the manifest was written: only the rename is left
            return run.finish({})
        nlp = build_pipeline(model=model, config=config, gpu_id=gpu_id)
        # The files just loaded must be those the run recorded when it started (as
        # each Ray actor checks): a model folder replaced between the checksum and
        # the load (`spacy train` saving model-best there) gave another model's
        # vectors under this one's checksum, and a resumed run two models' vectors.
        if model_identity(model, config) != run.identity["pipeline"]:
            raise _model_changed(model)
        _check_line_lengths(inp, nlp)
        writer = WRITERS[output_format](run, inp.read_so_far)
        records = inp.records(nlp.vocab, after=run.committed.last_line)
        progress = tqdm(total=inp.n_docs, initial=run.committed.docs, unit="doc", desc="embedding", file=sys.stderr)
        with progress:
            # A shard's docs are piped on their own, so that its batches start with it: a
            # resumed run (which starts at a shard) makes the same batches as an uninterrupted
            # one, and so the same bytes (a doc's vectors may differ in the last float digits
            # with the docs batched beside it).
            for shard in minibatch(records, shard_size):
                for doc, line in nlp.pipe(shard, as_tuples=True, batch_size=batch_size):
                    writer.add(doc, line)
                    progress.update(1)
                writer.commit()
        if run.committed.docs != inp.n_docs:
            raise RuntimeError(f"wrote {run.committed.docs} docs, expected {inp.n_docs}")
        manifest = {
            "format": output_format,
            "input": {"path": run.identity["input"], "kind": inp.kind, "lines": inp.n_records, "sha256": inp.sha256},
            "model": run.identity["model"],
            "config": run.identity["config"],
            "blank_lines": inp.n_blank,
            **writer.manifest(),
        }
        writer.close()
        return run.finish(manifest)
    except BaseException as exc:
        if writer is not None:
            # A write that failed (a full disk) fails again as the writer
            # flushes: that must not hide the error, nor skip the abandon and
            # the note below. What counts is the ledger; the rest is discarded.
            with contextlib.suppress(Exception):
                writer.close()
        run.abandon()  # (which says what the ledger keeps)
        if run.committed.shards:
            # (--resume holds to the input's hash: after a change it is refused until the input is put back.)
            then = ("--resume continues them only with the input as it was, and only if they were all read before "
                    "it changed (it checks); else rerun with --overwrite to start over"
                    if isinstance(exc, InputChanged)
                    else "rerun with --resume to continue, or --overwrite to start over")
            typer.echo(f"note: {run.committed.docs} docs (input lines 1-{run.committed.last_line}) are kept in "
                       f"{run.dir}; {then}", err=True)
        raise


def _model_changed(model: Optional[str]) -> CliError:
    """The error for a model whose files changed after the run recorded their checksum."""
    what = f"--model {model}" if model else "the pipeline's model"
    return CliError(f"{what}: {MODEL_CHANGED} (a model changed on purpose makes another run: --overwrite)")


def _totals(manifest: Dict[str, Any]) -> str:
    shards = f", {counted(len(manifest['shards']), 'shard')}" if "shards" in manifest else ""
    return (
        f"{counted(manifest.get('docs', 0), 'doc')}, {counted(manifest.get('tokens', 0), 'token')}, "
        f"{counted(manifest.get('blank_lines', 0), 'blank line')} skipped ({manifest.get('format')}{shards})"
    )
