"""The `[ray]` extra: checked where the library is called, before anything starts.

Ray and pyarrow are imported only when a run starts or its output is read,
so a missing one would otherwise surface as a bare ModuleNotFoundError, and
a missing pyarrow only after a local Ray had started.
"""
import importlib
from typing import Sequence

from ..errors import MissingExtra, install_extra

RAY_EXTRA = install_extra("ray")


def require_ray_extra(caller: str, modules: Sequence[str] = ("pyarrow.parquet", "ray.data")) -> None:
    """Raise `MissingExtra` naming the extra, and the package that is missing, if
    one of `modules` cannot be imported. (pyarrow first: Ray Data needs it.)"""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            package = (getattr(e, "name", None) or module).split(".")[0]  # (ray.data without pyarrow: pyarrow)
            raise MissingExtra(f"{caller} needs {package}, which is not installed ({e}): {RAY_EXTRA}",
                               package, "ray") from None
