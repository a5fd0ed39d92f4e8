"""Building the pipeline that a corpus job runs: the `embed` CLI, and each Ray actor."""
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import spacy
from spacy.language import Language
from spacy.util import get_sourced_components, load_config, load_model_from_config
from thinc.api import Config

from .factories import CONTEXTUAL_FACTORIES


class NoContextualEmbedder(ValueError):
    """The pipeline has none of the ctxembed components, so it would write no vectors."""


def load_pipeline(
    model: Optional[str] = None, config: Optional[Union[Path, str, Config]] = None, gpu_id: int = -1
) -> Language:
    """The pipeline to run: a saved one (`model`: a path or package), one built
    from `config` (a path, a config string or a loaded `Config`), or blank
    English plus `ctxembed_bert` with the embedded default model.

    `gpu_id >= 0` puts it on that GPU (spaCy's `require_gpu`).
    """
    if model is not None and config is not None:
        raise ValueError("give either a model or a config, not both")
    if gpu_id >= 0:
        spacy.require_gpu(gpu_id)
    if model is not None:
        nlp = spacy.load(model)
    elif config is not None:
        if isinstance(config, Config):
            loaded = config
        elif isinstance(config, Path):
            loaded = load_config(config)
        else:
            loaded = Config().from_str(config)
        nlp = load_model_from_config(loaded, auto_fill=True)
        initialize_built(nlp, loaded)
    else:
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert")
        nlp.initialize()
    check_writes_vectors({name: (nlp.get_pipe_meta(name).factory, getattr(nlp.get_pipe(name), "cfg", {}).get("primary"))
                          for name in nlp.pipe_names})
    return nlp


def check_writes_vectors(components: Dict[str, Tuple[Optional[str], Any]]) -> None:
    """A corpus job writes `doc._.ctx_vectors`: the primary ctxembed component's.
    Refuse a pipeline where none would set them, before any doc runs.

    components: each component's factory and `primary` setting, by name, in order.
    """
    embedders = [name for name, (factory, _) in components.items() if factory in CONTEXTUAL_FACTORIES]
    if not embedders:
        raise NoContextualEmbedder(
            f"the pipeline has no contextual embedder ({', '.join(CONTEXTUAL_FACTORIES)}); "
            f"its components are: {list(components)}"
        )
    if not any(components[name][1] is not False for name in embedders):
        raise NoContextualEmbedder(
            f"[{embedders[0]}] primary = false: no component of the pipeline sets doc._.ctx_vectors, which a "
            f"corpus job writes (a component that is not primary keeps its outputs in "
            f"doc._.ctx_outputs[{embedders[0]!r}] only); set primary = true on one ctxembed component"
        )


def initialize_built(nlp: Language, config: Config, enable: Optional[Iterable[str]] = None) -> None:
    """`nlp.initialize()` for a pipeline just built from `config`, as `spacy
    train` does it: components the config sources (`source = ...`) keep the
    weights they were loaded with. (Initializing starts a component from its
    config: a sourced, fine-tuned embedder would get its base model's weights.)

    enable: initialize only these (and not the sourced among them).
    """
    sourced = set(get_sourced_components(config))
    names = [name for name in (nlp.pipe_names if enable is None else enable) if name not in sourced]
    with nlp.select_pipes(enable=names):
        nlp.initialize()
