"""Building the pipeline that a corpus job runs (the `embed` and `demo` CLIs, each
Ray actor), and the helpers the analysis commands build theirs with."""
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import spacy
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.util import get_sourced_components, load_config, load_model_from_config
from thinc.api import Config

from .component import ContextualEmbedder
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
        leave_out_untrained(nlp, untrained_components(nlp, loaded), stacklevel=2)
        warn_fine_tuned(fine_tuned_components(nlp, loaded), stacklevel=2)
        initialize_built(nlp, loaded)
    else:
        nlp = spacy.blank("en")
        nlp.add_pipe("ctxembed_bert")
        nlp.initialize()
    check_writes_vectors({name: (nlp.get_pipe_meta(name).factory, _primary(nlp, name)) for name in nlp.pipe_names},
                         disabled=[name for name in nlp.disabled
                                   if nlp.get_pipe_meta(name).factory in CONTEXTUAL_FACTORIES])
    return nlp


#: What `is_folder_without_pipeline` refuses, as each caller's own error says it.
NOT_A_PIPELINE = "not a saved spaCy pipeline (no config.cfg)"


def is_folder_without_pipeline(model: str) -> bool:
    """Whether `model` (a `--model`) is a folder that holds no saved pipeline (no
    config.cfg): a Hugging Face model's directory, say, for which spaCy's error
    names meta.json. An installed package of its name is not refused: spacy.load
    takes it before the folder (a package's source folder, run from inside it)."""
    path = Path(model)
    return path.exists() and not (path / "config.cfg").is_file() and not spacy.util.is_package(model)


def primary_component(nlp: Language) -> str:
    """The component whose vectors `doc._.ctx_vectors` holds: the last primary
    ctxembed one (a pipeline `load_pipeline` gave has one: `check_writes_vectors`)."""
    names = [name for name in nlp.pipe_names
             if nlp.get_pipe_meta(name).factory in CONTEXTUAL_FACTORIES and _primary(nlp, name) is not False]
    if not names:
        raise NoContextualEmbedder(f"the pipeline has no primary contextual embedder; its components are: "
                                   f"{nlp.pipe_names}")
    return names[-1]


def _primary(nlp: Language, name: str) -> Optional[bool]:
    """A ctxembed component's `primary` setting; None for other components."""
    if nlp.get_pipe_meta(name).factory not in CONTEXTUAL_FACTORIES:
        return None
    cfg = getattr(nlp.get_pipe(name), "cfg", None)
    return cfg.get("primary") if isinstance(cfg, dict) else None


def check_writes_vectors(components: Dict[str, Tuple[Optional[str], Any]], *, disabled: Sequence[str] = ()) -> None:
    """A corpus job writes `doc._.ctx_vectors`: the primary ctxembed component's.
    Refuse a pipeline where none would set them, before any doc runs.

    components: the enabled components' factories and `primary` settings, by
        name, in order; a factory of None is not known (a component that a
        config sources shows what it is when it loads), and the pipeline is
        then not refused; only a `primary` of False counts as not primary.
    disabled: the disabled ctxembed components, for the message.
    """
    factories = [factory for factory, _ in components.values()]
    if None in factories:
        return
    embedders = [name for name, (factory, _) in components.items() if factory in CONTEXTUAL_FACTORIES]
    enable = (f"; {', '.join(map(repr, disabled))} {'is' if len(disabled) == 1 else 'are'} disabled: enable it"
              if disabled else "")
    if not embedders:
        raise NoContextualEmbedder(
            f"the pipeline has no contextual embedder ({', '.join(CONTEXTUAL_FACTORIES)}); "
            f"its components are: {list(components)}{enable}"
        )
    if all(components[name][1] is False for name in embedders):
        settings = ", ".join(f"[{name}] primary = false" for name in embedders)
        raise NoContextualEmbedder(
            f"{settings}: no component of the pipeline sets doc._.ctx_vectors, which a corpus job writes (a "
            f"component that is not primary keeps its outputs in doc._.ctx_outputs[{embedders[0]!r}] only); set "
            f"primary = true on one ctxembed component{enable}"
        )


def untrained_components(nlp: Language, config: Config) -> List[str]:
    """The components that `config` builds untrained and a corpus job leaves out:
    its trainable components (a tagger, parser or NER of a training config),
    except those it sources, the contextual embedders (their models are
    pretrained) and spacy-transformers' `transformer` (pretrained too, and what
    `ctxembed_from_trf` reads). They cannot be initialized without training
    examples (a tagger without labels: spaCy's E143), and any that could would
    annotate the docs from random weights."""
    sourced = set(get_sourced_components(config))
    pretrained = set(CONTEXTUAL_FACTORIES) | {"transformer"}
    return [name for name, component in nlp.pipeline
            if isinstance(component, TrainablePipe) and name not in sourced
            and nlp.get_pipe_meta(name).factory not in pretrained]


def fine_tuned_components(nlp: Language, config: Config) -> List[str]:
    """The contextual embedders that `config` fine-tunes and does not source:
    a training config (its `[training]`) that leaves them out of
    `frozen_components`, with weights that an update moves (`weights_train`: a
    trainable encoder, or a combiner with weights that a listener of the
    vectors trains). Built from the config, they have the weights it names
    (the base model's, a fresh combiner), not those its training gave them
    (which a pipeline trained with it saved): other vectors, with nothing to
    tell them apart."""
    training = config.get("training") or {}
    if not training:
        return []
    frozen = set(training.get("frozen_components") or [])
    sourced = set(get_sourced_components(config))
    return [name for name, component in nlp.pipeline
            if name not in frozen and name not in sourced and isinstance(component, ContextualEmbedder)
            and component.weights_train(combiner=True)]


def warn_fine_tuned(names: Sequence[str], *, where: str = "", instead: str = "", stacklevel: int = 1) -> None:
    """Warn that `names` (`fine_tuned_components`) run with their base model's weights."""
    if names:
        them = "it" if len(names) == 1 else "them"
        warnings.warn(f"{where and where + ': '}{', '.join(map(repr, names))}: fine-tuned by the config (a training "
                      f"config that leaves {them} out of [training] frozen_components, with a trainable encoder or "
                      f"combiner); built from the config, {them} {'runs' if len(names) == 1 else 'run'} on the "
                      f"weights the config names (the base model, a combiner as initialized), not on those the "
                      f"training gave: for the fine-tuned vectors, give the trained pipeline{instead} instead",
                      stacklevel=stacklevel + 1)


def leave_out_untrained(nlp: Language, names: Sequence[str], *, where: str = "", instead: str = "",
                        warn: bool = True, stacklevel: int = 1) -> None:
    """Disable `names`, components a config built untrained (`untrained_components`),
    and warn naming them: the docs get no annotation from them, where spaCy would
    have given them one from random weights (or refused to initialize them).

    where: what the warning starts with (the config's option, say); instead:
        how to give the trained pipeline ("give the trained pipeline" + it);
        warn: False to disable them without a word (told before);
        stacklevel: as warnings.warn's, counted from the caller."""
    for name in names:
        nlp.disable_pipe(name)
    if names and warn:
        them = "it" if len(names) == 1 else "them"
        warnings.warn(f"{where and where + ': '}{', '.join(map(repr, names))}: built untrained from the config (a "
                      f"training config: only a `source`d component keeps trained weights), so left out: the docs "
                      f"carry no annotation from {them}; to run {them}, give the trained pipeline{instead} instead",
                      stacklevel=stacklevel + 1)


def initialize_built(nlp: Language, config: Config, enable: Optional[Iterable[str]] = None) -> None:
    """`nlp.initialize()` for a pipeline just built from `config`, as `spacy
    train` does it: components the config sources (`source = ...`) keep the
    weights they were loaded with. (Initializing starts a component from its
    config: a sourced, fine-tuned embedder would get its base model's weights.)

    enable: initialize only these (and not the sourced among them); None: the
        enabled components.
    """
    sourced = set(get_sourced_components(config))
    names = [name for name in (nlp.pipe_names if enable is None else enable) if name not in sourced]
    with nlp.select_pipes(enable=names):
        nlp.initialize()
