"""Writing files so that they are either absent or complete: a temporary name, then a rename.

And reading them back as what identifies a run: `model_identity`, the checksum
of the pipeline whose vectors a run writes (both `embed` and `embed --ray`
record it, and refuse to resume a run with other model files).
"""
import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from .about import __version__


def umask() -> int:
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


def write_json(path: Path, data: Dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf8"))


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def model_identity(model: Optional[str]) -> Dict[str, Optional[str]]:
    """What the vectors come from. A saved pipeline is hashed whole (config, vocab and
    weights), so a resumed run never mixes vectors of a pipeline edited in between;
    without a model, the default model's files are hashed; a package gives its version."""
    if model is None:
        from .models.hf_loading import default_model_dir

        return {"name": None, "sha256": tree_sha256(default_model_dir()), "ctxembed": __version__}
    path = Path(model)
    if path.exists():
        return {"name": str(path.resolve()), "sha256": tree_sha256(path), "ctxembed": __version__}
    from spacy.util import get_package_version

    return {"name": model, "package_version": get_package_version(model), "ctxembed": __version__}


def tree_sha256(path: Path) -> str:
    """The SHA-256 of a file, or of a directory's files: their relative names and bytes, in name order."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode("utf8") + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
