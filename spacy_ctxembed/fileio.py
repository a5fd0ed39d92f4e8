"""Writing files so that they are either absent or complete: a temporary name, then a rename.

And reading them back as what identifies a run: `model_identity`, the checksum
of the pipeline whose vectors a run writes (both `embed` and `embed --ray`
record it, and refuse to resume a run with other model files). And a
serialized encoder's files, unpacked into a temporary directory to load from
(`unpacked`).
"""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .about import __version__
from .errors import SettingError


def umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it is read the only
    portable way, by setting it and back, which for that moment changes it for
    every thread of the process (a file another thread creates then gets 022's mode)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A hidden temporary path next to `path` to write to; renamed to `path` if the block succeeds.

    The temporary name starts with "." and ends with ".tmp": readers of the
    directory (pyarrow datasets, globs of the final names) never see it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600; give what open() would
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A JSON object file: None if it is missing, {} if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf8"))


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: What errors call a shim's unpacked files: their temporary directory is gone when read.
SERIALIZED = "<serialized encoder>"


@contextlib.contextmanager
def unpacked(files: Dict[str, bytes], component: str, *, setting: str = "model", copy: bool = False) -> Iterator[Path]:
    """A serialized encoder's files in a temporary directory, to load from.

    A loading error names `SERIALIZED` instead of the temporary path, and says
    where such bytes come from: a ctxembed component's `model`, or the model
    of a component that `replace_listeners` gave its own copy of the encoder
    (a tagger's, say), whose loading spaCy does not name; the latter alone
    where the encoder is known to be such a `copy`. `component`, `setting`:
    who and what its own errors name (`torch_bridge.saved_as`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            if Path(name).name != name or name in (".", ".."):
                raise SettingError(f"[{component}] {setting}: refusing to unpack {name!r}")
            (Path(tmp) / name).write_bytes(data)
        try:
            yield Path(tmp)
        except ValueError as err:
            message = str(err).replace(tmp, SERIALIZED)
            listening = "the model of a component whose listener replace_listeners replaced with its own copy"
            where = listening if copy else f"a {component} component's model, or in {listening}"
            raise type(err)(f"{message} (the encoder saved in {where})").with_traceback(err.__traceback__) from None


#: Why a run stops where its model's files changed under it (`model_identity`
#: differs from the one the run recorded), for messages that name the model
#: their own way: the `embed` CLI's and each Ray actor's.
MODEL_CHANGED = ("its files changed after this run started (their checksum differs from the one the run "
                 "recorded), so its shards would mix two models' vectors; rerun once it stays put")


def model_identity(model: Optional[str], config: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """What the vectors come from. A saved pipeline is hashed whole (config, vocab and
    weights), so a resumed run never mixes vectors of a pipeline edited in between;
    without a model, the default model's files are hashed, and with a pipeline
    `config` the files it builds from too (`config_files`); a package gives its version.
    Embed runs' directories inside a hashed folder are not the model's (`_model_files`)."""
    if model is None:
        from .models.hf_loading import default_model_dir

        identity: Dict[str, Any] = {"name": None, "sha256": tree_sha256(default_model_dir()), "ctxembed": __version__}
        if config is not None:
            identity["files"] = {str(path): tree_sha256(path) for path in config_files(config)}
        return identity
    path = Path(model)
    if path.exists():
        return {"name": str(path.resolve()), "sha256": tree_sha256(path), "ctxembed": __version__}
    from spacy.util import get_package_version

    return {"name": model, "package_version": get_package_version(model), "ctxembed": __version__}


def same_model(was: Any, now: Any) -> bool:
    """Whether two model identities (`model_identity`) are of the same model. A run
    with a config records the files the config names, none for most configs: an
    empty record is no other model than no record (the configs differ, and say so)."""
    return _without_empty_files(was) == _without_empty_files(now)


def _without_empty_files(model: Any) -> Any:
    if isinstance(model, dict) and model.get("files") == {}:
        return {key: value for key, value in model.items() if key != "files"}
    return model


def model_difference(was: Any, now: Any) -> str:
    """What differs between two model identities (`model_identity`), in a few words
    (for the messages of `embed` runs that cannot be resumed)."""
    if not isinstance(was, dict) or not isinstance(now, dict):
        return "not recorded then"
    labels = {"name": "name", "sha256": "files", "package_version": "package version",
              "ctxembed": "spacy-ctxembed version"}
    parts = [f"{label} {short_value(was.get(key))} then, {short_value(now.get(key))} now"
             for key, label in labels.items() if was.get(key) != now.get(key)]
    old_files, new_files = was.get("files") or {}, now.get("files") or {}
    changed = sorted(p for p in set(old_files) | set(new_files) if old_files.get(p) != new_files.get(p))
    if changed:
        parts.append(f"the files its config names ({', '.join(changed[:3])})")
    return "; ".join(parts) or "other model files"


def short_value(value: Any) -> str:
    """A value for a message: a checksum's first 12 characters, None as "none"."""
    if value is None:
        return "none"
    text = str(value)
    return text[:12] if len(text) == 64 else text


#: Settings whose value, in a component's block, may name a file or directory it is
#: built from: an encoder's `name` (a model directory), ELMo's `options_file` and
#: `weight_file`, a sourced component's `source` (a pipeline directory).
FILE_SETTINGS = frozenset({"name", "options_file", "weight_file", "source"})


def config_files(config: Mapping[str, Any]) -> List[Path]:
    """The existing files and directories that a pipeline config's components name
    in `FILE_SETTINGS`, at any depth of their blocks, resolved (relative paths are
    relative to the working directory, as spaCy reads them), and for a `name` that
    is a Hugging Face hub name, the snapshot of it in the local cache that loading
    reads now (its folder is named by the revision: another revision cached since
    is another model). The config is interpolated first where it can be
    (``${paths.model}``)."""
    from confection import Config

    with contextlib.suppress(Exception):  # a variable it cannot fill: read it as it is
        config = Config(dict(config)).interpolate()
    found = set()

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if key == "name" and isinstance(value, str) and value:
                    # What the encoder loads (`resolve_model_dir`): a bare name is a hub
                    # name even where a file in the working directory has it.
                    loaded = _model_dir(value)
                    if loaded is not None:
                        found.add(loaded)
                    elif Path(value).exists():  # (another library's `name`, or a file: as it is)
                        found.add(Path(value).resolve())
                elif key in FILE_SETTINGS and isinstance(value, str) and value and Path(value).exists():
                    found.add(Path(value).resolve())
                else:
                    walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(config.get("components", {}))
    return sorted(found)


def _model_dir(name: str) -> Optional[Path]:
    """The directory an encoder's `name` loads from (`resolve_model_dir`): a
    local directory, or a hub name's snapshot folder in the local Hugging Face
    cache; None where it is neither."""
    from .errors import SettingError
    from .models.hf_loading import resolve_model_dir

    try:
        return resolve_model_dir(name, component="").resolve()
    except SettingError:
        return None


#: `layout` in the run.json and manifest.json of an `embed` run (`embedded`, `cli.output`).
EMBED_LAYOUT = "spacy-ctxembed/embed"
#: The files that mark a directory as an embed run's (its partial directory, its
#: OUTPUT, an `--ray` OUTDIR).
_RUN_MARKERS = ("run.json", "manifest.json")


def _is_run_dir(directory: Path) -> bool:
    """Whether `directory` holds an embed run: a `run.json` or `manifest.json` of
    the command line's layout, or an `--ray` manifest (its identity and shards)."""
    for name in _RUN_MARKERS:
        marker = directory / name
        if not marker.is_file():
            continue
        try:
            data = json.loads(marker.read_text(encoding="utf8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (data.get("layout") == EMBED_LAYOUT
                                       or {"identity", "shards"} <= set(data)):
            return True
    return False


def _model_files(root: Path) -> List[Path]:
    """The files below `root`, in name order, without those of the directories
    below it (not `root` itself) that hold an embed run (`_is_run_dir`): OUTPUT
    inside a model's folder (`embed -m . -o vectors`), its partial directory,
    another run's. What a run writes there would read as a change of the model:
    every run stopped once the model was hashed again after loading, and a
    --resume was refused. (One walk of the tree.)"""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    runs = {p.parent for p in files if p.name in _RUN_MARKERS and p.parent != root and _is_run_dir(p.parent)}
    return [p for p in files if not runs.intersection(p.parents)] if runs else files


def tree_sha256(path: Path) -> str:
    """The SHA-256 of a file, or of a directory's files: their relative names and bytes,
    in name order, those of embed runs' directories below it left out (`_model_files`)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else _model_files(path)
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode("utf8") + b"\0")
        _hash_bytes(digest, file)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    _hash_bytes(digest, path)
    return digest.hexdigest()


def _hash_bytes(digest: Any, path: Path) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
