"""`embed`'s output directory: written as it goes, complete only when it appears.

OUTPUT is always a directory (its layout, and the readers: `spacy_ctxembed.embedded`).
While a run works, everything goes into a hidden sibling, ``.<name>.partial/``
next to OUTPUT; when the last doc is written, a ``manifest.json`` is added and
the directory is renamed to OUTPUT (`os.replace`). So OUTPUT exists only when
complete, and a directory with a ``manifest.json`` is a finished run.

While running, the partial directory also holds ``run.json`` (what the run is:
input checksum, model, format) and ``ledger.jsonl`` (one line per committed
shard: the input lines it covers). A shard is committed when its file is
complete under its final name (written to a temporary name, then renamed) and
its ledger line is written; `--resume` keeps the committed shards and carries
on after the last committed input line.
"""
import contextlib
import datetime
import hashlib
import itertools
import json
import os
import re
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Optional

import numpy
from spacy.tokens import Doc, DocBin

from ..embedded import (
    DOCS,
    LAYOUT,
    LAYOUT_VERSION,
    LINE_KEY,
    MANIFEST,
    SHARD,
    VECTORS,
    read_manifest,
    sha256_difference,
    shard_size_difference,
)
from ..fileio import (
    file_sha256,
    fsync_dir,
    model_difference,
    read_json,
    same_model,
    short_value,
    umask,
    write_atomic,
    write_json,
)
from ..outputs import name_stores_by_content
from .errors import CliError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked against each other
    fcntl = None  # type: ignore[assignment]

RUN = "run.json"
LEDGER = "ledger.jsonl"
LOCK = ".lock"
#: The random part of a name that tempfile.mkdtemp makes.
MKDTEMP_PART = re.compile(r"[a-z0-9_]{8}")
#: A run's new partial directory is renamed into place microseconds after mkdtemp
#: made it; one older than this was left by a run killed in between (with a margin
#: for a run paused there: Ctrl-Z, a suspended machine, a slow network disk).
ABANDONED_NEW_AFTER_S = 600.0
NPY_HEADER_SIZE = 128  # a fixed-size .npy v1.0 header, rewritten in place when the shape is known


def npy_size(rows: int, width: int) -> int:
    """The bytes of the vectors.npy this writes for float32 (rows, width): its header, then the rows."""
    return NPY_HEADER_SIZE + rows * width * 4


# ---------------------------------------------------------------------------
# Moving arrays to the host


def to_host(value: Any) -> Any:
    """`value` with every GPU array in it (in dicts, lists, tuples, nested) copied to numpy.

    Containers are rebuilt, not changed in place (another doc may share them);
    other values, numpy arrays included, are returned as they are. An array on
    the GPU is anything with a ``__cuda_array_interface__`` (cupy: ``.get()``;
    torch: ``.cpu()``). No key names are assumed.
    """
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_host(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_host(v) for v in value)
    if isinstance(value, numpy.ndarray) or not hasattr(value, "__cuda_array_interface__"):
        return value
    if callable(getattr(value, "get", None)):  # cupy
        return value.get()
    if callable(getattr(value, "cpu", None)):  # torch
        return value.detach().cpu().numpy()
    import cupy

    return cupy.asnumpy(value)


def doc_to_host(doc: Doc) -> None:
    """Make `doc` serializable with numpy only: its user data (vectors included) and tensor.

    The one place where `embed` moves arrays to the host.
    """
    for key in list(doc.user_data):
        doc.user_data[key] = to_host(doc.user_data[key])
    tensor = doc.tensor
    if tensor is not None and hasattr(tensor, "__cuda_array_interface__"):
        doc.tensor = to_host(tensor)


def npy_header(rows: int, width: int) -> bytes:
    """A .npy (v1.0) header for float32 (rows, width), padded to `NPY_HEADER_SIZE` bytes."""
    text = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {width}), }}"
    size = NPY_HEADER_SIZE - 10  # magic (6) + version (2) + header length (2)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size) + (text.ljust(size - 1) + "\n").encode("latin1")


# ---------------------------------------------------------------------------
# Where a run writes, and what is in the way


def absolute_output(output: Path) -> Path:
    """OUTPUT as an absolute path whose last part is its own name.

    The partial directory, the lock and the final rename are named after that
    part: "." or ".." would give a partial directory *inside* OUTPUT (``..partial``)
    and a rename onto a path that the run itself filled. `os.path.abspath`
    rather than `Path.resolve`: a symbolic link as OUTPUT stays one, to be refused.
    """
    return Path(os.path.abspath(output))


def partial_path(output: Path) -> Path:
    output = absolute_output(output)
    return output.parent / f".{output.name}.partial"


def _old_prefix(output: Path) -> str:
    return f".{output.name}.old-"


def _new_prefix(output: Path) -> str:
    return f".{output.name}.new-"


def _mkdtemp_folders(output: Path, prefix: str) -> List[Path]:
    """Folders named by mkdtemp after `prefix`, and only those (".a.old-b.old-12345678"
    holds output "a.old-b"'s)."""
    return [path for path in output.parent.iterdir()
            if path.name.startswith(prefix) and MKDTEMP_PART.fullmatch(path.name[len(prefix):])
            and path.is_dir() and not path.is_symlink()]


def _old_outputs(output: Path) -> List[Path]:
    """The folders `finish` moves an old OUTPUT into."""
    return _mkdtemp_folders(output, _old_prefix(output))


def _abandoned_new(output: Path) -> List[Path]:
    """What runs killed while making their partial directory left (`_create`: a run
    record and an empty ledger, no shards): not one another run is making now,
    which is locked, or younger than `ABANDONED_NEW_AFTER_S`."""
    now = time.time()
    return [path for path in _mkdtemp_folders(output, _new_prefix(output))
            if now - _mtime(path, now) > ABANDONED_NEW_AFTER_S and not _held(path / LOCK)]


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # (renamed into place by its run since it was listed)
        return default


def _held(lock: Path) -> bool:
    """Whether a run holds `lock` now (False where there is none, or no flock)."""
    if fcntl is None:
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:  # (killed before it took its lock)
        return False
    except OSError:  # (another user's, say: not known to be free)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@dataclass
class Committed:
    """What the ledger says is done."""

    shards: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def last_line(self) -> int:
        return self.shards[-1]["last_line"] if self.shards else 0

    @property
    def docs(self) -> int:
        return sum(s["docs"] for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards)

    @property
    def width(self) -> Optional[int]:
        return self.shards[-1]["width"] if self.shards else None


class Run:
    """The partial directory of one run: locked, ledgered, renamed to OUTPUT when finished."""

    def __init__(self, output: Path, identity: Dict[str, Any], resumed: bool):
        self.output = absolute_output(output)
        self.dir = partial_path(output)
        self.identity = identity
        self.resumed = resumed
        self.committed = Committed()
        self._lock: Optional[IO[str]] = None
        #: Whether `finish` may replace a complete OUTPUT: one that was there when the
        #: run was planned, or any with --overwrite (`plan`). One that another run
        #: finished after this one looked (and before its partial directory took its
        #: name) is not this run's to replace.
        self.replaces = False

    # -- life cycle ---------------------------------------------------------

    @classmethod
    def plan(cls, output: Path, identity: Dict[str, Any], overwrite: bool, resume: bool) -> "Run":
        """Check OUTPUT and its partial directory (before the model loads); lock and prepare.

        Raises `UsageError` if something is in the way, and `AlreadyComplete`
        if `resume` finds OUTPUT complete with the same identity.
        """
        if overwrite and resume:
            raise UsageError("--overwrite and --resume exclude each other")
        output = absolute_output(output)
        state = _output_state(output)
        partial = partial_path(output)
        if output.is_symlink():
            raise UsageError(f"--output {output} is a symbolic link; give the path it points to")
        if state == "file":
            raise UsageError(f"--output {output} is a file; embed writes a directory (see docs/cli.md)")
        if state == "foreign" and _manifest_not_json(output):
            # (an output whose manifest was cut or hand-edited into invalid JSON: "not an
            # output" sent its owner looking elsewhere for what is wrong)
            raise UsageError(
                f"--output {output}: its {MANIFEST} is not an embed output's (not JSON: cut, or edited); "
                "it is never replaced: put the manifest back, or remove the directory to embed into it again, "
                "or choose another path"
            )
        if state == "foreign":
            raise UsageError(
                f"--output {output} is a non-empty directory that is not a spacy-ctxembed output; "
                "choose another path (it is never replaced)"
            )
        if partial.exists() or partial.is_symlink():
            record = _partial_record(partial)
            if record is None:
                raise UsageError(f"{partial} is in the way and is not a spacy-ctxembed partial run; remove it")
            if resume:
                run = cls(output, identity, resumed=True)
                run.replaces = state == "complete"
                run._acquire()
                if _has_commits(partial):
                    run._check_identity(record, partial)
                    if not run.finished:
                        run._recover()
                    return run
                # Nothing to continue: discarded as without --resume (whatever its settings were).
                run._release()
            stale = cls(output, identity, resumed=False)
            stale._acquire()  # refuses if another run is writing it
            if not overwrite and _has_commits(partial):
                stale._release()
                raise UsageError(
                    f"an interrupted run left {partial}; pass --resume to continue it or --overwrite to start over"
                )
            shutil.rmtree(partial)  # --overwrite, or an interrupted run that had committed nothing
            stale._release()
        if state == "complete":
            manifest = read_manifest(output) or {}
            if resume:
                if _same_run(manifest.get("run", {}), identity):
                    damage = _damage(output, manifest)
                    if damage:  # (not complete any more: a reader would fail on it)
                        raise UsageError(f"--output {output} is damaged: {damage}; pass --overwrite to embed it again")
                    raise AlreadyComplete(manifest)
                raise UsageError(
                    f"--output {output} holds a complete output of a different run "
                    f"({_difference(manifest.get('run', {}), identity)}); pass --overwrite to replace it"
                )
            if not overwrite:
                raise UsageError(
                    f"--output {output} already holds a complete output ({manifest.get('docs', '?')} docs); "
                    "pass --overwrite to replace it, or choose another path"
                )
        run = cls(output, identity, resumed=False)
        run.replaces = overwrite  # (a complete OUTPUT without --overwrite was refused above)
        run._create()
        return run

    def _create(self) -> None:
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.output.parent, prefix=_new_prefix(self.output)))
        except OSError as e:
            # (mkdir under a file says "File exists": name the file.)
            blocking = next((p for p in (self.output.parent, *self.output.parent.parents)
                             if p.exists() and not p.is_dir()), None)
            why = f"{blocking} is a file, not a directory" if blocking is not None else e.strerror
            raise UsageError(f"--output {self.output}: cannot write in {self.output.parent}: {why}") from None
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700; give what mkdir would
            write_json(tmp / RUN, {"layout": LAYOUT, "layout_version": LAYOUT_VERSION, "run": self.identity})
            (tmp / LEDGER).touch()
            self._acquire(tmp)  # locked before it has its name: no other run can take it
            try:
                os.rename(tmp, self.dir)
            except OSError:
                raise UsageError(f"another embed run has just created {self.dir}") from None
        except BaseException:
            self._release()
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _acquire(self, directory: Optional[Path] = None) -> None:
        path = (directory or self.dir) / LOCK
        try:
            f = path.open("a")
        except FileNotFoundError:  # another run has just removed the directory
            raise UsageError(f"another embed run is writing {self.dir}") from None
        if fcntl is None:
            self._lock = f
            return
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Between our open and our flock, the run that held the lock may
            # have removed this directory (a stale partial it discarded) and
            # made a new one: then we hold the lock of a deleted file, and the
            # path names another run's. Only the lock file the path names counts.
            if not os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                raise FileNotFoundError(path)
        except OSError:
            f.close()
            raise UsageError(f"another embed run is writing {self.dir}") from None
        self._lock = f

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _check_identity(self, run_json: Dict[str, Any], partial: Path) -> None:
        recorded = run_json.get("run", {})
        if run_json.get("layout_version") != LAYOUT_VERSION or not _same_run(recorded, self.identity):
            self._release()
            raise UsageError(
                f"the interrupted run in {partial} was started with other settings "
                f"({_difference(recorded, self.identity)}); pass --overwrite to start over"
            )

    def _ledger(self) -> List[Dict[str, Any]]:
        """The shards the ledger lists, in order (a torn last line is not one)."""
        shards: List[Dict[str, Any]] = []
        with contextlib.suppress(OSError), (self.dir / LEDGER).open(encoding="utf8") as f:
            for line in f:
                try:
                    shards.append(json.loads(line))
                except ValueError:
                    break  # a torn last line: not committed
        return shards

    def _recover(self) -> None:
        """Keep the shards the ledger lists (and whose files are intact); drop the rest."""
        fmt = self.identity["format"]
        shards = list(itertools.takewhile(lambda shard: _intact(self.dir, fmt, shard), self._ledger()))
        self.committed = Committed(shards)
        write_atomic(self.dir / LEDGER, "".join(json.dumps(s) + "\n" for s in shards).encode("utf8"))
        keep = {RUN, LEDGER, LOCK, MANIFEST} | {s["file"] for s in shards if "file" in s}
        if fmt == "npy":
            keep |= {VECTORS, DOCS}
        for child in self.dir.iterdir():
            if child.name not in keep:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    @property
    def finished(self) -> bool:
        """Finished but not yet renamed into place (interrupted at the very end)."""
        return read_manifest(self.dir) is not None

    def commit(self, shard: Dict[str, Any]) -> None:
        """Record a shard whose files are complete: from now on --resume keeps it."""
        with (self.dir / LEDGER).open("a", encoding="utf8") as f:
            f.write(json.dumps(shard) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.committed.shards.append(shard)

    def finish(self, manifest: Dict[str, Any]) -> Dict[str, Any]:
        """Write the manifest and move the directory to OUTPUT (replacing an old output)."""
        if not self.finished:
            manifest = {
                "layout": LAYOUT,
                "layout_version": LAYOUT_VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **manifest,
                "run": self.identity,
            }
            write_json(self.dir / MANIFEST, manifest)
        manifest = read_manifest(self.dir) or manifest
        for name in (RUN, LEDGER):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / name).unlink()
        fsync_dir(self.dir)
        old: Optional[Path] = None
        state = _output_state(self.output)
        if state == "complete" and not self.replaces:
            raise CliError(f"--output {self.output} was completed by another embed run after this one started "
                           f"(and this run has no --overwrite); it is left as it is, and this run's result is left "
                           f"in {self.dir}: --resume puts it in place of that output")
        if state == "complete":
            old = Path(tempfile.mkdtemp(dir=self.output.parent, prefix=_old_prefix(self.output)))
            os.replace(self.output, old)
        elif state == "empty":
            self.output.rmdir()
        elif state != "absent":
            raise CliError(f"--output {self.output} appeared during the run; the result is left in {self.dir}")
        try:
            os.rename(self.dir, self.output)
        except BaseException:
            if old is not None:  # (interrupted, or refused): the old output goes back, as it was
                os.replace(old, self.output)
            raise
        (self.output / LOCK).unlink()
        self._release()
        fsync_dir(self.output.parent)
        # This run's old output, and any that a run killed between its two renames left
        # (listed now: a later run that replaces this output moves it into a folder of its own),
        # and what runs killed while they made their partial directory left.
        for stale in _old_outputs(self.output) + _abandoned_new(self.output):
            shutil.rmtree(stale, ignore_errors=True)
        return manifest

    def abandon(self) -> None:
        """After a failure: keep the partial directory if its ledger lists committed
        shards (then `committed` says which), else remove it.

        The ledger, not what this run counted: an interruption (Ctrl-C) that
        ends `commit` after its line is durable, before the count, must not
        cost that shard or the ones before it."""
        if self.dir.is_dir() and not self.finished:
            self.committed = Committed(self._ledger())
            if not self.committed.shards:
                shutil.rmtree(self.dir, ignore_errors=True)
        self._release()


def _damage(output: Path, manifest: Dict[str, Any]) -> Optional[str]:
    """What makes a complete output unreadable since it was written, if anything:
    files its manifest names that are gone, a shard of another size than it was
    written with, or a vectors.npy of another size than its rows take (cut or
    padded; `load_npy` refuses it)."""
    names = [s["file"] for s in manifest.get("shards", ()) if "file" in s] if "shards" in manifest else [VECTORS, DOCS]
    missing = [name for name in names if not (output / name).is_file()]
    if missing:
        return f"{missing[0]} is missing{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
    for shard in manifest.get("shards", ()):
        # The checksum too: a shard of the same size with other bytes (another
        # run's, copied in) was reported complete, and then failed its readers.
        wrong = "file" in shard and (
            shard_size_difference(shard, (output / shard["file"]).stat().st_size)
            or _sha256_difference(output, shard["file"], shard.get("sha256"))
        )
        if wrong:
            return wrong
    rows, width = manifest.get("rows"), manifest.get("width")
    if "shards" not in manifest and isinstance(rows, int) and isinstance(width, int):
        size, expected = (output / VECTORS).stat().st_size, npy_size(rows, width)
        if size != expected:
            return f"{VECTORS} holds {size:,} bytes, where its {rows:,} rows of {width} take {expected:,}"
    docs_bytes = manifest.get("docs_bytes")  # (not recorded by earlier versions)
    if "shards" not in manifest and isinstance(docs_bytes, int):
        size = (output / DOCS).stat().st_size
        if size != docs_bytes:
            return f"{DOCS} holds {size:,} bytes, where its manifest says {docs_bytes:,}"
    if "shards" not in manifest:
        return _sha256_difference(output, DOCS, manifest.get("docs_sha256"))
    return None


def _sha256_difference(directory: Path, name: str, written: Any) -> Optional[str]:
    return sha256_difference(name, lambda: file_sha256(directory / name), written)


class AlreadyComplete(Exception):
    """--resume found OUTPUT already complete, from the same run."""

    def __init__(self, manifest: Dict[str, Any]):
        super().__init__("already complete")
        self.manifest = manifest


def _output_state(output: Path) -> str:
    if output.is_symlink() and not output.exists():
        return "file"  # a dangling link: not ours to replace
    if not output.exists():
        return "absent"
    if not output.is_dir():
        return "file"
    if read_manifest(output) is not None:
        return "complete"
    if not any(output.iterdir()):
        return "empty"
    return "foreign"


def _manifest_not_json(output: Path) -> bool:
    """Whether OUTPUT holds a manifest.json that does not parse: an embed output's,
    cut or edited. (Valid JSON of another layout is another tool's, in a folder
    that is not an output: its owner is not told to remove it.)"""
    try:
        json.loads((output / MANIFEST).read_bytes())
    except OSError:
        return False
    except ValueError:
        return True
    return False


def _partial_record(partial: Path) -> Optional[Dict[str, Any]]:
    """What a partial directory says about its run: run.json, or the manifest once finished."""
    if partial.is_symlink() or not partial.is_dir():
        return None
    if (partial / RUN).is_file():
        return read_json(partial / RUN) or {}
    manifest = read_manifest(partial)
    if manifest is not None:
        return {"layout_version": manifest.get("layout_version"), "run": manifest.get("run", {})}
    return None


def _has_commits(partial: Path) -> bool:
    """Whether a partial run holds work: a committed shard in its ledger, or a manifest (finished)."""
    if read_manifest(partial) is not None:
        return True
    try:
        with (partial / LEDGER).open(encoding="utf8") as f:
            first = f.readline()
        return isinstance(json.loads(first), dict)
    except (OSError, ValueError):
        return False


#: "pipeline": the model's checksum (`fileio.model_identity`). A run recorded before it was
#: checksummed lacks it, and is never the same run: its model cannot be compared.
IDENTITY_KEYS = ("format", "input_sha256", "input_lines", "model", "pipeline", "config_sha256")
MODEL_KEYS = {"model", "pipeline"}


def _same_run(recorded: Dict[str, Any], identity: Dict[str, Any]) -> bool:
    return all(recorded.get(k) == identity.get(k) for k in IDENTITY_KEYS)


def _difference(recorded: Dict[str, Any], identity: Dict[str, Any]) -> str:
    """What differs between a recorded run and this one, each with its values then and now."""
    def differs(*keys: str) -> bool:
        return any(recorded.get(k) != identity.get(k) for k in keys)

    parts = []
    if differs("config_sha256"):
        parts.append(f"different config: sha256 {short_value(recorded.get('config_sha256'))} then, "
                     f"{short_value(identity.get('config_sha256'))} now")
    if differs("format"):
        parts.append(f"different format: {recorded.get('format')!r} then, {identity.get('format')!r} now")
    if differs("input_sha256", "input_lines"):
        parts.append(f"different input: {_input_described(recorded)} then, {_input_described(identity)} now")
    if not all(same_model(recorded.get(k), identity.get(k)) for k in MODEL_KEYS):
        parts.append(_model_difference(recorded, identity))
    return "; ".join(parts) if parts else "unreadable run record"


def _input_described(run: Dict[str, Any]) -> str:
    n = run.get("input_lines")
    records = "records not counted" if n is None else counted(n, "record")
    return f"{records}, sha256 {short_value(run.get('input_sha256'))}"


def counted(n: int, noun: str) -> str:
    """"1 doc", "2 docs": a count and its noun, for messages."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _model_difference(recorded: Dict[str, Any], identity: Dict[str, Any]) -> str:
    old, new = recorded.get("pipeline"), identity.get("pipeline") or {}
    if not isinstance(old, dict):
        return "model not checksummed: started by an older spacy-ctxembed"
    if recorded.get("model") != identity.get("model"):
        return f"different model: {_model_named(recorded.get('model'))} then, {_model_named(identity.get('model'))} now"
    if old.get("ctxembed") != new.get("ctxembed"):
        return f"different spacy-ctxembed version ({old.get('ctxembed')}, now {new.get('ctxembed')})"
    return f"different model: same name, other files ({model_difference(old, new)})"


def _model_named(model: Optional[str]) -> str:
    return "no --model (the embedded default, or --config's)" if model is None else repr(model)


def _intact(directory: Path, fmt: str, shard: Dict[str, Any]) -> bool:
    try:
        if fmt == "docbin":
            # (the checksum too: a file of the same size with other bytes, another run's
            # shard say, was kept, and the finished output failed its readers' check)
            size = (directory / shard["file"]).stat().st_size
            return size == shard["bytes"] and not _sha256_difference(directory, shard["file"], shard.get("sha256"))
        width = shard["width"]
        vectors_size = (directory / VECTORS).stat().st_size
        docs_size = (directory / DOCS).stat().st_size
        return vectors_size >= npy_size(shard["rows_end"], width) and docs_size >= shard["docs_end"]
    except (OSError, KeyError, TypeError):
        return False


# ---------------------------------------------------------------------------
# Writers: add docs, commit a shard, finish


class ShardWriter:
    """Common bookkeeping: the docs added since the last commit."""

    def __init__(self, run: Run, source: Callable[[], Dict[str, Any]] = dict):
        """source: what the input read so far is (`Input.read_so_far`), for each shard's record."""
        self.run = run
        self.source = source
        self.pending_docs = 0
        self.pending_tokens = 0
        self.first_line = run.committed.last_line + 1
        self.last_line = run.committed.last_line
        self.width: Optional[int] = run.committed.width

    def add(self, doc: Doc, line: int) -> None:
        vectors = doc._.get("ctx_vectors")
        if vectors is None:
            raise CliError(f"line {line}: the pipeline set no doc._.ctx_vectors")
        width = int(vectors.shape[1])
        if self.width is None:
            self.width = width
        elif width != self.width:
            raise CliError(f"line {line}: vectors are {width} wide, earlier ones {self.width}")
        self.pending_docs += 1
        self.pending_tokens += len(doc)
        self.last_line = line

    def commit(self) -> None:
        raise NotImplementedError

    def _shard_record(self, **extra: Any) -> Dict[str, Any]:
        record = {
            "shard": len(self.run.committed.shards),
            "first_line": self.first_line,
            "last_line": self.last_line,
            "docs": self.pending_docs,
            "tokens": self.pending_tokens,
            "width": self.width,
            **self.source(),
            **extra,
        }
        self.first_line = self.last_line + 1
        self.pending_docs = self.pending_tokens = 0
        return record

    def manifest(self) -> Dict[str, Any]:
        committed = self.run.committed
        return {"docs": committed.docs, "tokens": committed.tokens, "width": self.width}

    def close(self) -> None:
        return None


class DocBinWriter(ShardWriter):
    """One DocBin per shard; vectors (numpy) in user data, the line number in user_data["line"]."""

    def __init__(self, run: Run, source: Callable[[], Dict[str, Any]] = dict):
        super().__init__(run, source)
        self.doc_bin = DocBin(store_user_data=True)

    def add(self, doc: Doc, line: int) -> None:
        doc_to_host(doc)
        name_stores_by_content(doc)  # (the same input, the same shard bytes)
        super().add(doc, line)
        doc.user_data[LINE_KEY] = line
        self.doc_bin.add(doc)

    def commit(self) -> None:
        if not self.pending_docs:
            return
        name = SHARD.format(len(self.run.committed.shards))
        data = self.doc_bin.to_bytes()
        write_atomic(self.run.dir / name, data)
        # (sha256: a shard of another run, of an input edited since or another model, can
        # have the same size and input lines; `iter_docs` holds each shard to its checksum.)
        self.run.commit(self._shard_record(file=name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
        self.doc_bin = DocBin(store_user_data=True)

    def manifest(self) -> Dict[str, Any]:
        shards = [
            {k: s[k] for k in ("file", "first_line", "last_line", "docs", "tokens", "bytes", "sha256") if k in s}
            for s in self.run.committed.shards
        ]
        return {**super().manifest(), "shards": shards}


class NpyWriter(ShardWriter):
    """Rows appended to vectors.npy (behind a fixed-size header), one JSON line per doc in docs.jsonl."""

    def __init__(self, run: Run, source: Callable[[], Dict[str, Any]] = dict):
        super().__init__(run, source)
        last = run.committed.shards[-1] if run.committed.shards else {"rows_end": 0, "docs_end": 0}
        self.rows = last["rows_end"]
        vectors_path, docs_path = run.dir / VECTORS, run.dir / DOCS
        if not vectors_path.exists():
            vectors_path.write_bytes(npy_header(0, 0))
        docs_path.touch()
        self.vectors = vectors_path.open("r+b")
        self.docs = docs_path.open("r+b")
        # Drop whatever an interrupted run wrote after its last commit.
        self.vectors.truncate(npy_size(self.rows, self.width or 0))
        self.docs.truncate(last["docs_end"])
        self.vectors.seek(0, os.SEEK_END)
        self.docs.seek(0, os.SEEK_END)

    def add(self, doc: Doc, line: int) -> None:
        super().add(doc, line)
        vectors = numpy.ascontiguousarray(to_host(doc._.get("ctx_vectors")), dtype="float32")
        self.vectors.write(vectors.tobytes())
        record = {"line": line, "text": doc.text, "tokens": [t.text for t in doc], "start": self.rows}
        self.rows += len(vectors)
        record["end"] = self.rows
        self.docs.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf8"))

    def commit(self) -> None:
        if not self.pending_docs:
            return
        for f in (self.vectors, self.docs):
            f.flush()
            os.fsync(f.fileno())
        self.run.commit(self._shard_record(rows_end=self.rows, docs_end=self.docs.tell()))

    def manifest(self) -> Dict[str, Any]:
        """Called when all docs are committed: the header gets the final shape."""
        self.vectors.seek(0)
        self.vectors.write(npy_header(self.rows, self.width or 0))
        self.vectors.flush()
        os.fsync(self.vectors.fileno())
        self.docs.flush()
        # (docs_sha256: another run's docs.jsonl, of an input edited since, can have the same
        # size and rows; `load_npy` holds it to its checksum.)
        return {**super().manifest(), "rows": self.rows, "docs_bytes": self.docs.tell(),
                "docs_sha256": file_sha256(self.run.dir / DOCS), "files": {"vectors": VECTORS, "docs": DOCS}}

    def close(self) -> None:
        self.vectors.close()
        self.docs.close()


WRITERS = {"docbin": DocBinWriter, "npy": NpyWriter}
