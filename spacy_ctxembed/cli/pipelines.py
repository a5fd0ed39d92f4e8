"""Building the pipeline a CLI command runs."""
from pathlib import Path
from typing import Optional, Union

from spacy.language import Language
from thinc.api import Config

from ..pipeline.build import NoContextualEmbedder, load_pipeline
from .errors import UsageError


def build_pipeline(
    model: Optional[str] = None, config: Optional[Union[Path, Config]] = None, gpu_id: int = -1
) -> Language:
    """`load_pipeline`, with its usage errors as the CLI's."""
    if model is not None and config is not None:
        raise UsageError("give either --model or --config, not both")
    try:
        return load_pipeline(model=model, config=config, gpu_id=gpu_id)
    except NoContextualEmbedder as e:
        raise UsageError(str(e)) from None
