"""`embed_corpus`: embed a corpus on Ray Data, exactly once and resumable.

OUTDIR holds:

- ``manifest.json``: what the run is (the inputs' identities, the pipeline,
  the shard size, the dtype), its shards' row ranges, and, once complete, the
  totals. A rerun with the same OUTDIR and the same run resumes; a rerun of a
  different run is refused unless `overwrite`.
- ``shards/part-NNNNNN.parquet``: one file per shard (`shards`).
- ``rejected.jsonl``: every input row that is not in the output, with its
  doc id, source, line or row, and reason, in doc-id order.

The driver plans the shards and checks the result; Ray Data does the rest:
the actor pool, scheduling, back-pressure, and retrying the shard of an
actor that died (its actors are restarted without limit; a shard is retried
up to `MAX_TASK_RETRIES` times, then the run fails naming it). Resuming needs
nothing from Ray: a shard whose file is in ``shards/`` is done.
"""
import contextlib
import fcntl
import hashlib
import json
import math
import numbers
import os
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union, cast

from thinc.api import Config

from ..about import __version__
from ..errors import first_line
from ..fileio import (
    fsync_dir,
    model_difference,
    model_identity,
    read_json,
    same_model,
    short_value,
    write_atomic,
    write_json,
)
from ..outputs.store import merged_signature, signatures_agree
from ..pipeline.build import NOT_A_PIPELINE, check_writes_vectors
from ..pipeline.factories import CONTEXTUAL_FACTORIES
from .actor import ShardEmbedder, attempts_name
from .extra import require_ray_extra
from .shards import (
    DTYPES,
    MANIFEST,
    SHARDS,
    check_complete,
    committed,
    run_digest,
    shard_meta,
    shard_name,
)
from .sources import InputError, Shard, input_files, plan_shards

REJECTED = "rejected.jsonl"
LOCK = ".lock"
OWN_FILES = (MANIFEST, SHARDS, REJECTED, LOCK)
# A shard whose actor keeps dying (out of memory on a huge doc, a crash in the
# model) is retried this many times, then the run fails naming it.
MAX_TASK_RETRIES = 4


class OutputInUse(RuntimeError):
    """Another run holds OUTDIR."""


class OutputNotWritable(OSError):
    """OUTDIR (or its lock file) cannot be made: `out` and the operating system's reason."""

    def __init__(self, out: Path, why: str) -> None:
        super().__init__(f"{out}: cannot write there: {why}")
        self.out, self.why = out, why


#: Seconds to wait for the GCS port of an `address` to accept a connection.
ADDRESS_TIMEOUT = 10.0


class NoRayAt(ValueError):
    """No server accepts connections at a Ray cluster's `address` ("HOST:PORT")."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"embed_corpus: address = {address!r}: no Ray cluster answers there ({reason}); start one "
                         "(ray start --head) and give the address it prints, or leave address out for a local Ray")
        self.address, self.reason = address, reason


def check_address(address: Optional[str], timeout: float = ADDRESS_TIMEOUT) -> None:
    """Refuse a cluster address ("HOST:PORT") whose port accepts no connection.

    `ray.init` retries such an address without end, printing only its own
    connection warnings (a typo in a port ran for minutes and counting), so
    the port is tried once first. "auto" and "ray://" addresses are left to
    Ray, which fails on them by itself.
    """
    if address is None or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: Ray's own error names it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise NoRayAt(address, e.strerror or type(e).__name__) from None


class NoGPUs(ValueError):
    """`gpus_per_actor` asks for GPUs that the Ray this process uses (not one
    at an `address`) does not have."""

    def __init__(self, gpus: float, found: float) -> None:
        # (Also a Ray the caller connected to before: a cluster whose GPU nodes
        # join as it scales is then given by its address instead.)
        super().__init__(f"embed_corpus: gpus_per_actor = {gpus!r}, but the Ray this process uses found {found:g} "
                         "GPUs: its actors would wait for one forever; use 0 (CPU), or give the address of a cluster "
                         "with GPUs (one that adds GPU nodes as it scales too) instead of connecting to it first")
        self.gpus, self.found = gpus, found


class ShardsFailed(RuntimeError):
    """Shards whose actor died each time it took them (Ray gave up retrying)."""


class DifferentRun(FileExistsError):
    """OUTDIR holds a run of other inputs or settings; `changes`: what differs, by `embed_corpus`
    parameter ("inputs" for the input files), described."""

    def __init__(self, out: Path, changes: Dict[str, str]) -> None:
        shown = "; ".join(f"{key}: {change}" for key, change in changes.items())
        super().__init__(f"{out} holds a run of a different input or settings ({shown}); use another output "
                         "directory, or overwrite")
        self.out, self.changes = out, changes


def embed_corpus(
    inputs: Union[str, Path, Sequence[Union[str, Path]]],
    out_dir: Union[str, Path],
    *,
    model: Optional[str] = None,
    config: Optional[Union[Path, Config]] = None,
    input_format: Optional[str] = None,
    text_key: str = "text",
    shard_size: int = 1000,
    batch_size: int = 32,
    actors: int = 2,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    dtype: str = "float32",
    address: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> Dict[str, Any]:
    """Embed `inputs` into Parquet shards in `out_dir` with a pool of Ray actors.

    inputs: text files (one doc per line), JSONL files (`text_key` field), Parquet
        files (`text_key` column), or directories of them.
    model / config: the pipeline each actor loads (a saved pipeline, or a config to
        build one); neither: blank English + `ctxembed_bert` with the embedded model.
    shard_size: input rows per shard file: the unit of work, of retry and of resume.
    batch_size: docs per `nlp.pipe` batch inside an actor.
    actors, cpus_per_actor, gpus_per_actor: the actor pool (`gpus_per_actor > 0`
        puts each actor's pipeline on its GPU; fractions share a GPU). No more
        actors start than there are shards left to embed.
    dtype: "float32" or "float16" vectors.
    address: a running Ray cluster ("auto", "ray://host:10001", ...); None starts
        a local Ray (and stops it at the end). If this process has already
        called `ray.init`, that Ray is used and `address` must be None.
    on_shard: called on the driver with each finished shard's summary.

    Returns the manifest: the run's identity and totals (docs, rejected), with
    ``already_complete: True`` when `out_dir` held this run complete already.
    """
    require_ray_extra("embed_corpus")
    shard_size, batch_size, actors, cpus_per_actor, gpus_per_actor = _checked_settings(
        shard_size, batch_size, actors, cpus_per_actor, gpus_per_actor, dtype)
    if model is not None and config is not None:
        raise ValueError("give either a model or a config, not both")
    check_address(address)
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files = input_files([str(p) for p in paths], input_format)
    shards, identities = plan_shards(files, shard_size, text_key)
    config_text = None if config is None else (
        # Uninterpolated, as the CLI reads it: the same file gives the same hash either way.
        config.to_str() if isinstance(config, Config) else Config().from_disk(config, interpolate=False).to_str())
    _check_pipeline(model, config_text)
    parsed = None if config_text is None else Config().from_str(config_text, interpolate=False)
    identity = {
        "inputs": identities, "text_key": text_key, "shard_size": shard_size, "dtype": dtype,
        "model": model_identity(model, parsed),
        "config_sha256": None if config_text is None else hashlib.sha256(config_text.encode("utf8")).hexdigest(),
    }
    # Absolute paths: on a cluster, actors run elsewhere (on a file system shared at the same path).
    out = Path(out_dir).resolve()
    model = str(Path(model).resolve()) if model is not None and Path(model).exists() else model
    if out.is_dir() and not (out / LOCK).exists():
        # Not an embed run's directory yet: refused before the lock file is made in
        # it (checked again under the lock; with a lock file there, a run in
        # progress is told by the lock first).
        _recorded_run(out, identity, overwrite)
    run = run_digest(identity)
    with _locked(out):
        manifest = _prepare(out, identity, shards, overwrite)
        shard_dir = out / SHARDS
        # (Only this run's: a killed run's actors may still commit shards for a while.)
        done = committed(shard_dir, shards, run)
        if manifest.get("complete") and len(done) == len(shards):
            if _line_count(out / REJECTED) != manifest.get("rejected"):
                # Deleted or cut since: the record of every row not embedded, from the shards' metadata.
                _write_lines(out / REJECTED, check_complete(shard_dir, shards, run)[1])
            return {**manifest, "already_complete": True}
        pending = [s for s in shards if s.index not in done]
        if pending:
            _run_ray(pending, shard_dir, model, config_text, batch_size, actors, cpus_per_actor, gpus_per_actor,
                     dtype, address, progress, on_shard, cast(Dict[str, Any], identity["model"]), run=run)
            # What an actor killed mid-write left (its shard was redone by another): not in a complete output.
            _sweep_partial(shard_dir)
        n_docs, rejected = check_complete(shard_dir, shards, run)
        fsync_dir(shard_dir)  # the shards' renames are durable before the manifest says complete
        _write_lines(out / REJECTED, rejected)
        manifest.update(complete=True, docs=n_docs, rejected=len(rejected), rows=n_docs + len(rejected),
                        resumed_shards=len(done), signature=_run_signature(shard_dir, shards))
        write_json(out / MANIFEST, manifest)
        return manifest


def _run_signature(shard_dir: Path, shards: List[Shard]) -> Optional[str]:
    """What made the run's vectors (`pipeline.signature`), as its shards record
    it (one model, checked by each actor at its first shard); None where they do not
    (no docs; shards written before shards recorded it) or disagree.

    Compared field by field, as docs' outputs are (`signatures_agree`): a run
    resumed over shards of an earlier version, whose signatures lack fields
    (`ENCODER_WEIGHTS`), is still one model's, and its signature has every
    field any shard's has (`merged_signature`), so that it holds docs to all of them.
    """
    recorded = [(shard_meta(shard_dir / shard_name(shard.index)) or {}).get("signature") for shard in shards]
    made = sorted({signature for signature in recorded if isinstance(signature, str)})
    if len(made) == 1:  # (the usual run: its signature as recorded)
        return made[0]
    return merged_signature(made) if made and signatures_agree(made) else None


def _check_pipeline(model: Optional[str], config_text: Optional[str]) -> None:
    """Fail on the driver, before Ray starts, when the pipeline cannot give vectors:
    a model that is neither a directory nor an installed package, or a config
    (the model's own or the given one) without a ctxembed component."""
    if model is not None:
        path = Path(model)
        if not path.exists():
            from spacy.util import is_package

            if not is_package(model):
                raise ValueError(f"embed_corpus: model = {model!r}: no such directory or installed pipeline package")
            return
        if not (path / "config.cfg").is_file():
            raise ValueError(f"embed_corpus: model = {model!r}: {NOT_A_PIPELINE}")
        config_text = (path / "config.cfg").read_text(encoding="utf8")
    if config_text is None:
        return  # the default pipeline
    try:  # (interpolated: `primary = ${vars.primary}` is then the value it names)
        config = Config().from_str(config_text)
    except Exception as e:  # noqa: BLE001 - confection's: a variable the config does not define
        if model is None:
            # Each actor reads the config as this does, and would fail as it loads the pipeline,
            # which Ray reports as the actor's death, without the error (`ShardEmbedder`).
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise ValueError(f"embed_corpus: config: {lines[-1] if lines else type(e).__name__}") from None
        config = Config().from_str(config_text, interpolate=False)  # (a saved pipeline's: read as written)
    # spaCy builds the components [nlp] pipeline lists, and runs those not disabled.
    blocks = {name: block for name, block in config.get("components", {}).items() if isinstance(block, dict)}
    pipeline, disabled = _names_in_nlp(config, "pipeline"), _names_in_nlp(config, "disabled")
    check_writes_vectors(
        # A sourced block has no factory here (None: not known until it loads).
        {name: (blocks.get(name, {}).get("factory"), blocks.get(name, {}).get("primary")) for name in pipeline
         if name not in disabled},
        disabled=[name for name in disabled if blocks.get(name, {}).get("factory") in CONTEXTUAL_FACTORIES])


def _names_in_nlp(config: Config, key: str) -> List[str]:
    """The component names a config's [nlp] block lists under `key` (as written: nothing else)."""
    value = config.get("nlp", {}).get(key) or []
    return [name for name in value if isinstance(name, str)] if isinstance(value, list) else []


def _checked_settings(
    shard_size: int, batch_size: int, actors: int, cpus: float, gpus: float, dtype: str
) -> Tuple[int, int, int, float, float]:
    """The counts and resources as Python's int and float (numpy's are accepted:
    the manifest is JSON, and Ray takes plain numbers), or a ValueError naming
    the setting and its value."""
    # (Python's bool is an int, and a numbers.Integral: `actors=True` is no count, and no number of CPUs.)
    counts: List[int] = []
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size), ("actors", actors)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"embed_corpus: {name} = {value!r}; expected a positive integer")
        counts.append(int(value))
    if not (_is_real(cpus) and math.isfinite(cpus) and cpus > 0):  # NaN and inf are floats too; Ray fails on them
        raise ValueError(f"embed_corpus: cpus_per_actor = {cpus!r}; expected a positive number")
    if not (_is_real(gpus) and math.isfinite(gpus) and gpus >= 0):
        raise ValueError(f"embed_corpus: gpus_per_actor = {gpus!r}; expected 0 (CPU) or a positive number")
    if dtype not in DTYPES:
        raise ValueError(f"embed_corpus: dtype = {dtype!r}; expected one of {', '.join(DTYPES)}")
    return counts[0], counts[1], counts[2], float(cpus), float(gpus)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK, "a")
    except OSError as e:
        raise OutputNotWritable(out, e.strerror or str(e)) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUse(f"{out} is in use by another embed run") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recorded_run(
    out: Path, identity: Dict[str, Any], overwrite: bool
) -> Tuple[Optional[Dict[str, Any]], List[Path]]:
    """The recorded manifest where this is the same run (resume; None: a new
    run), and what killed atomic writes left; raises where `out` may not be
    written. Reads only.

    Only an embed run's own files are ever deleted (with `overwrite`): a
    directory that holds anything else is refused, and so, without
    `overwrite`, is one with an embed run's file names but no manifest (a
    user's own rejected.jsonl was emptied).
    """
    # What an atomic write killed before its rename left (`fileio.atomic_path`): the file is written again.
    stale = [p for name in (MANIFEST, REJECTED) for p in out.glob(f".{name}*.tmp")]
    recorded = read_json(out / MANIFEST)
    same_run = recorded is not None and recorded.get("identity") == identity and not overwrite
    if not same_run:
        others = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES and p not in stale)
        if others:
            raise FileExistsError(f"{out} holds files that are not an embed run's ({', '.join(others[:5])}); "
                                  "choose another output directory")
    if same_run:
        return recorded, stale
    if recorded is not None and not overwrite:
        known = recorded.get("identity")
        if not isinstance(known, dict):
            raise FileExistsError(f"{out / MANIFEST} is unreadable; use another output directory, or overwrite")
        differing = [key for key in sorted(identity) if known.get(key) != identity[key]]
        # (An empty record of the files a config names is no other model: the configs differ, and say so.)
        shown = [key for key in differing if key != "model" or not same_model(known.get(key), identity[key])]
        raise DifferentRun(out, {key: _described(key, known.get(key), identity[key]) for key in shown or differing})
    unrecorded = [name for name in (SHARDS, REJECTED) if (out / name).exists()]
    if unrecorded and recorded is None and not overwrite:
        raise FileExistsError(f"{out} holds {' and '.join(unrecorded)} but no {MANIFEST}; use another output "
                              "directory, or overwrite")
    return None, stale


def _prepare(out: Path, identity: Dict[str, Any], shards: List[Shard], overwrite: bool) -> Dict[str, Any]:
    """The run's manifest: the recorded one when this is the same run (resume), else a new one
    (see `_recorded_run` for what is refused)."""
    recorded, stale = _recorded_run(out, identity, overwrite)
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    if recorded is not None:
        return recorded
    for name in (MANIFEST, REJECTED):
        (out / name).unlink(missing_ok=True)
    if (out / SHARDS).is_dir():
        shutil.rmtree(out / SHARDS)
    (out / SHARDS).mkdir()
    manifest = {"version": __version__, "identity": identity, "complete": False,
                "shards": [s.to_dict() for s in shards]}
    write_json(out / MANIFEST, manifest)
    return manifest


def _described(key: str, was: Any, now: Any) -> str:
    """What differs in identity field `key` between the recorded run (`was`) and this one."""
    if key == "inputs":
        old = {i.get("path"): i for i in was or () if isinstance(i, dict)}
        new = {i.get("path"): i for i in now or () if isinstance(i, dict)}
        parts = [f"{what} {', '.join(sorted(map(str, paths))[:3])}" for what, paths in (
            ("changed", [p for p in new if p in old and old[p] != new[p]]),
            ("added", [p for p in new if p not in old]), ("removed", [p for p in old if p not in new])) if paths]
        return "; ".join(parts) or "the same files in another order"
    if key == "model":
        return model_difference(was, now)
    if key == "config_sha256":  # (as the single-process run's refusal shows it)
        return f"sha256 {short_value(was)} then, {short_value(now)} now"
    return f"{was!r} then, {now!r} now"


def failed_shards(shard_dir: Path, shards: Sequence[Shard]) -> List[str]:
    """The shards an actor started more than once without committing them (their
    actor died each time), described by their rows: what a run that failed after
    Ray's retries names."""
    by_index = {s.index: s for s in shards}
    failed = []
    for index, shard in by_index.items():
        path = shard_dir / attempts_name(index)
        with contextlib.suppress(OSError):
            starts = len(path.read_text(encoding="utf8").splitlines())
            if starts > 1:
                failed.append(f"shard {index} ({_rows(shard)}: started {starts} times)")
    return failed


def _rows(shard: Shard) -> str:
    """Which input rows a shard holds, for messages."""
    where = f"line {shard.first_line}" if shard.kind != "parquet" else f"row {shard.first_line}"
    return f"doc ids {shard.first_id}-{shard.first_id + shard.n_rows - 1}, {shard.path} from {where}"


def _run_ray(
    pending: List[Shard], shard_dir: Path, model: Optional[str], config: Optional[str], batch_size: int,
    actors: int, cpus: float, gpus: float, dtype: str, address: Optional[str], progress: bool,
    on_shard: Optional[Callable[[Dict[str, Any]], None]], model_id: Optional[Dict[str, Any]] = None,
    run: Optional[str] = None,
) -> None:
    import ray
    from tqdm import tqdm

    _sweep_partial(shard_dir)
    # A shard is the unit of work: an actor beyond the shards left would load the pipeline
    # (and hold its CPUs or GPU) for nothing.
    actors = min(actors, len(pending))
    started = not ray.is_initialized()
    if not started and address is not None:
        raise ValueError(f"embed_corpus: address = {address!r}, but this process is already connected to Ray; "
                         "leave address out to use that Ray")
    if started:
        # A local Ray gets the machine's CPUs, or as many as the pool asks for.
        num_cpus = None if address else max(os.cpu_count() or 1, math.ceil(actors * cpus))
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    try:
        found = ray.cluster_resources().get("GPU", 0)
        if gpus > 0 and address is None and found < gpus:  # (a cluster may add GPU nodes as it scales)
            raise NoGPUs(gpus, found)
        items = [{"shard": json.dumps(s.to_dict())} for s in pending]
        source = ray.data.from_items(items, override_num_blocks=len(items))
        source.context.enable_progress_bars = False  # this dataset's copy of the context: one bar, ours
        # By default Ray Data wraps what an actor raised in a UserCodeException whose cause
        # does not survive the trip to the driver: every failure would read "UDF failed to
        # process a data block". Raised as it is, the driver gets a RayTaskError that is
        # also the original (an InputError naming the file stays an InputError), with the
        # original in `.cause`.
        source.context.raise_original_map_exception = True
        with warnings.catch_warnings():
            # max_task_retries has no named parameter before Ray 2.64 (Ray's default
            # retries a shard whose actor keeps dying forever): it goes through
            # ray_remote_args, which Ray warns of on every run; setup.cfg keeps Ray below 2.64.
            warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
            ds = source.map_batches(
                ShardEmbedder,
                fn_constructor_kwargs={"out_dir": str(shard_dir), "model": model, "config": config,
                                       "use_gpu": gpus > 0, "batch_size": batch_size, "dtype": dtype,
                                       "threads": max(int(cpus), 1), "model_identity": model_id,
                                       "run": run},
                batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus, num_gpus=gpus or None, max_task_retries=MAX_TASK_RETRIES,
            )
        total = sum(s.n_rows for s in pending)
        bar = tqdm(total=total, unit="row", desc="embedding (ray)", disable=not progress, file=sys.stderr)
        rejected = 0
        with bar:
            try:
                for row in ds.iter_rows():
                    summary = {key: (value.item() if hasattr(value, "item") else value) for key, value in row.items()}
                    bar.update(summary["docs"] + summary["rejected"])
                    rejected += summary["rejected"]
                    bar.set_postfix(rejected=rejected, refresh=False)
                    if on_shard is not None:
                        on_shard(summary)
            except Exception as err:
                failed = failed_shards(shard_dir, pending)
                # (Only where Ray says an actor died: an error an actor raised, or the driver's own,
                # came while another shard was retried, after its actor died once, and read as its death.)
                if failed and actor_died(err):
                    raise ShardsFailed(
                        f"embed_corpus: the actors died on {'; '.join(failed[:3])}: each was retried and its actor "
                        f"died again (out of memory on a long doc, or a crash in the model: {first_line(err)})"
                    ) from err
                raise
    finally:
        if started:
            ray.shutdown()


def _sweep_partial(shard_dir: Path) -> None:
    """Remove what interrupted shard writes left (the shard is redone) and the
    starts that actors counted (`.attempts-*`)."""
    for stale in [*shard_dir.glob(".part-*.tmp"), *shard_dir.glob(".attempts-*")]:
        stale.unlink(missing_ok=True)


def actor_died(exc: BaseException) -> bool:
    """Whether `exc` is Ray saying that an actor died or is gone (killed, out of
    memory, its node lost), not an error that an actor's code raised
    (`ray_actor_error`: the original), nor the driver's own."""
    try:
        from ray.exceptions import RayError, RayTaskError
    except ImportError:
        return False
    cause = ray_actor_error(exc)
    return isinstance(cause, RayError) and not isinstance(cause, RayTaskError)


def ray_actor_error(exc: BaseException) -> Optional[BaseException]:
    """The error an actor raised, when `exc` is Ray handing it over; None for the driver's own.

    An actor's error reaches the driver as a RayTaskError with the original in
    `.cause` (`embed_corpus` has Ray Data raise the original, not a
    UserCodeException whose own cause would be lost on the way); nested remote
    calls nest RayTaskErrors.
    """
    try:
        from ray.exceptions import RayError
    except ImportError:
        return None
    if not isinstance(exc, RayError):
        return None
    seen = {id(exc)}
    inner = getattr(exc, "cause", None)
    while isinstance(inner, BaseException) and id(inner) not in seen:
        seen.add(id(inner))
        exc, inner = inner, getattr(inner, "cause", None)
    return exc


def _line_count(path: Path) -> Optional[int]:
    """How many lines `path` holds; None where it is not a readable file."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return None


def _write_lines(path: Path, records: List[Dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf8"))


__all__ = ["DifferentRun", "InputError", "NoGPUs", "OutputInUse", "ShardsFailed", "embed_corpus"]
