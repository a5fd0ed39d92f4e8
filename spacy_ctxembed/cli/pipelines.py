"""Building the pipeline a CLI command runs."""
from pathlib import Path
from typing import Optional, Union

from spacy.language import Language
from thinc.api import Config

from ..errors import first_line
from ..pipeline.build import NOT_A_PIPELINE, NoContextualEmbedder, is_folder_without_pipeline, load_pipeline
from .errors import PipelineError, UsageError, short_message


def build_pipeline(
    model: Optional[str] = None, config: Optional[Union[Path, Config]] = None, gpu_id: int = -1
) -> Language:
    """`load_pipeline`, with its errors as the CLI's (`embed` and `demo` report them alike)."""
    if model is not None and config is not None:
        raise UsageError("give either --model or --config, not both")
    require_gpu(gpu_id)
    try:
        return load_pipeline(model=model, config=config, gpu_id=gpu_id)
    except NoContextualEmbedder as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # the library's errors: bad settings, a missing pipeline, config errors
        if model is not None and isinstance(e, OSError) and "[E050]" in str(e):
            # no such package or directory: spaCy's message names no option
            raise UsageError(f"--model {model}: {first_line(e, typed=False)}") from e
        raise PipelineError(f"could not build the pipeline: {short_message(e)}") from e


def refuse_folder_without_pipeline(model: Optional[str], hint: str = "") -> None:
    """--model must name a saved pipeline: spaCy's own error for a folder or a
    file that is not one names meta.json, which a pipeline need not have."""
    if model is not None and is_folder_without_pipeline(model):
        raise UsageError(f"--model {model}: {NOT_A_PIPELINE}{hint}")


def require_gpu(gpu_id: int) -> None:
    """spaCy's `require_gpu` for `--gpu-id` >= 0, its failures (no CuPy, no
    such device, no CUDA) as the CLI's usage errors naming the option."""
    if gpu_id < 0:
        return
    import spacy

    try:
        spacy.require_gpu(gpu_id)
    except Exception as e:  # noqa: BLE001 - no CuPy, no such device, no CUDA
        raise UsageError(f"--gpu-id {gpu_id}: {short_message(e)}") from e
