"""Building the pipeline a CLI command runs."""
from pathlib import Path
from typing import Optional, Union

import spacy
from spacy.language import Language
from spacy.util import load_config, load_model_from_config
from thinc.api import Config

from ..pipeline.factories import CONTEXTUAL_FACTORIES
from .errors import UsageError


def build_pipeline(
    model: Optional[str] = None, config: Optional[Union[Path, Config]] = None, gpu_id: int = -1
) -> Language:
    """The pipeline to run: a saved one (`model`), one built from `config` (a path
    or a loaded `Config`), or blank English plus `ctxembed_bert` with the
    embedded default model."""
    if model is not None and config is not None:
        raise UsageError("give either --model or --config, not both")
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    if model is not None:
        nlp = spacy.load(model)
    elif config is not None:
        loaded = config if isinstance(config, Config) else load_config(config)
        nlp = load_model_from_config(loaded, auto_fill=True)
        nlp.initialize()
    else:
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert")
        nlp.initialize()
    if not any(nlp.get_pipe_meta(name).factory in CONTEXTUAL_FACTORIES for name in nlp.pipe_names):
        raise UsageError(
            f"the pipeline has no contextual embedder ({', '.join(CONTEXTUAL_FACTORIES)}); "
            f"its components are: {nlp.pipe_names}"
        )
    return nlp
