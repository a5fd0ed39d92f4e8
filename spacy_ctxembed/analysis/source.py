"""The pipelines an analysis runs, and how to load them with every layer stored.

A pipeline comes from a saved pipeline (``--model``), a config (``--config``)
or, with neither, the embedded all-MiniLM-L6-v2 (blank English plus
``ctxembed_bert``, exactly what ``embed`` runs). To see every layer, the
analysed component is rebuilt from its config with its encoder's ``layers``
set to all of them, ``store_layers = true`` and, because a combiner with
weights (``ScalarMix``) is shaped by the number of layers, a plain
``MeanLayers`` combiner (the combined vectors are not used). A saved
pipeline's weights still come from disk: everything but that combiner. A
pipeline built from a config initializes only the analysed component and
what it needs upstream (a tagger or parser in the config stays
uninitialized: it would need training examples, and the analysis never runs it;
a senter it builds untrained is left out, with a warning).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, cast

import spacy
from spacy.language import Language
from spacy.util import load_config, load_model_from_config
from thinc.api import Config

from ..errors import first_line
from ..models.legacy import V1_DEFAULTS
from ..models.torch_bridge import EncoderShim, encoder_shim
from ..pipeline.build import (
    NOT_A_PIPELINE,
    fine_tuned_components,
    initialize_built,
    is_folder_without_pipeline,
    leave_out_untrained,
    untrained_components,
    warn_fine_tuned,
)
from ..pipeline.factories import CONTEXTUAL_FACTORIES
from .errors import AnalysisInputError

#: Components that must run before the analysed one: the transformer that
#: ctxembed_from_trf pools, and the components that set sentence boundaries
#: (ELMo embeds each sentence on its own; intra-sentence similarity needs them).
UPSTREAM_FACTORIES = ("transformer", "sentencizer", "senter")
MEAN_COMBINER = {"@layers": "spacy-ctxembed.MeanLayers.v1"}
#: The model family (`legacy.V1_DEFAULTS`) of each contextual factory, for v1 configs.
_V1_FAMILIES = {"ctxembed_bert": "bert", "ctxembed_elmo": "elmo", "ctxembed_from_trf": "trf"}

#: One change to a pipeline's config: (component, path inside its block, new value).
Edit = Tuple[str, Tuple[str, ...], Any]


@dataclass
class PipelineSource:
    """Where a pipeline comes from: `model` (saved), `config`, or neither (the
    default), given by the option that errors name (`option`); `component`: its
    contextual component to analyse (None: the `AnalysisSettings.component`,
    else the pipeline's only one), set by the option `component_option`."""

    model: Optional[str] = None
    config: Optional[Config] = None
    config_path: Optional[Path] = None
    component: Optional[str] = None
    component_option: str = "--component"
    option: str = "--model"
    _saved_dir: Optional[Path] = field(default=None, init=False, repr=False)
    #: Whether the components its config builds untrained were told (`load` runs more than once).
    _left_out_told: bool = field(default=False, init=False, repr=False)
    #: Whether the analysed embedder its config fine-tunes was told (it runs on its base weights).
    _fine_tuned_told: bool = field(default=False, init=False, repr=False)

    @classmethod
    def from_argument(cls, value: str, option: str = "--compare") -> "PipelineSource":
        """A saved pipeline (directory or package name) or a ``.cfg`` file."""
        path = Path(value)
        if path.suffix == ".cfg" or path.is_file():
            return cls.from_config_file(path, option)
        return cls(model=value, option=option)

    @classmethod
    def from_config_file(cls, path: Path, option: str = "--config") -> "PipelineSource":
        if not path.is_file():
            raise AnalysisInputError(f"{option} {path}: no such config file")
        try:
            return cls(config=load_config(path), config_path=path, option=option)
        except Exception as e:  # confection: a config that does not parse
            raise AnalysisInputError(f"{option} {path}: not a readable config ({_config_reason(e)})") from None

    @property
    def label(self) -> str:
        if self.model is not None:
            return str(self.model)
        if self.config_path is not None:
            return str(self.config_path)
        if self.config is not None:  # (a loaded Config was labelled as the embedded default)
            return "a config given in Python"
        return "all-MiniLM-L6-v2 (embedded default)"

    def describe(self) -> dict:
        return {"label": self.label, "model": self.model,
                "config": None if self.config_path is None else str(self.config_path),
                "component": self.component}  # (as asked for: None for the pipeline's only one)

    def load(self, edits: Sequence[Edit] = (), new_combiner: Optional[str] = None,
             component: Optional[str] = None) -> Language:
        """The pipeline, with `edits` made to its config before it is built.

        new_combiner: the component whose combiner the edits replaced; a saved
            pipeline's weights for it are not read (they fit the old combiner).
        component: the contextual component analysed (None: the pipeline's only
            one). A pipeline built from a config initializes only that component
            and what it needs upstream (`needed_components`): the analysis runs
            nothing else, and a tagger, parser or NER could not be initialized
            without training examples. The other components stay uninitialized.
            A senter it needs that the config builds untrained is disabled, with
            a warning: it would set the sentences from random weights.
        """
        if self.model is not None:
            if not edits:
                nlp = self._load_saved()
                self._saved_dir = Path(nlp.path) if nlp.path is not None else None
                return nlp
            return self._load_saved_edited(edits, new_combiner)
        config = self.config if self.config is not None else default_config()
        built = edited_config(config, edits, self.option)
        nlp = load_model_from_config(built, auto_fill=True)
        name = choose_component(nlp, component, self.label, self.component_option)
        # A senter the config builds untrained would set the sentences from random weights.
        built_untrained = untrained_components(nlp, built)
        untrained = [n for n in needed_components(nlp, name) if n in built_untrained]
        leave_out_untrained(nlp, untrained, where=f"{self.option} {self.label}", warn=not self._left_out_told,
                            instead=f" with {'--model' if self.option == '--config' else self.option}", stacklevel=2)
        self._left_out_told = self._left_out_told or bool(untrained)
        fine_tuned = [] if self._fine_tuned_told else [n for n in fine_tuned_components(nlp, built) if n == name]
        warn_fine_tuned(fine_tuned, where=f"{self.option} {self.label}", stacklevel=2,
                        instead=f" with {'--model' if self.option == '--config' else self.option}")
        self._fine_tuned_told = self._fine_tuned_told or bool(fine_tuned)
        initialize_built(nlp, built, needed_components(nlp, name))
        return nlp

    def _load_saved(self) -> Language:
        if is_folder_without_pipeline(cast(str, self.model)):
            instead = "--config" if self.option == "--model" else self.option
            raise AnalysisInputError(f"{self.option} {self.model}: {NOT_A_PIPELINE}; to "
                                     f"analyse a model's directory, give {instead} a config whose ctxembed "
                                     "component names it")
        try:
            return spacy.load(cast(str, self.model))
        except OSError as e:  # E050, no such package or directory: spaCy's message names no option
            raise AnalysisInputError(f"{self.option} {self.model}: {first_line(e, typed=False)}") from None

    def _load_saved_edited(self, edits: Sequence[Edit], new_combiner: Optional[str]) -> Language:
        if self._saved_dir is None:
            self.load()  # finds where the pipeline lives
        if self._saved_dir is None:
            raise AnalysisInputError(f"{self.option} {self.model}: the loaded pipeline does not say where it was "
                                     "read from")
        path = self._saved_dir
        nlp = load_model_from_config(edited_config(load_config(path / "config.cfg"), edits, self.option))
        skipped = [] if new_combiner is None else [new_combiner]
        nlp.from_disk(path, exclude=skipped)
        for name in skipped:
            # Its weights only: the edits replace the combiner, and change on purpose the
            # layers and pooling that its cfg records (and that a load would hold to).
            cast(Any, nlp.get_pipe(name)).from_disk(path / name, exclude=["combiner", "cfg"])
        return nlp


def _config_reason(error: Exception) -> str:
    """Why a config does not parse, on one line. confection's ConfigValidationError opens with a
    title and advice ("Config validation error"), which said nothing of the problem or its line:
    its reason is the last paragraph of its `desc`."""
    desc = getattr(error, "desc", None)
    if isinstance(desc, str) and desc.strip():
        return " ".join(line.strip() for line in desc.strip().split("\n\n")[-1].splitlines() if line.strip())
    return first_line(error, typed=False)


def default_config() -> Config:
    """The config of the embedded default: blank English plus ``ctxembed_bert``."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert")  # the model loads on initialize, not here
    return nlp.config


def edited_config(config: Config, edits: Sequence[Edit], option: str = "--config") -> Config:
    """A copy of `config` with each edit's value put at its place (replacing a whole block if need be);
    `option`: where the config came from, for the error."""
    edited = config.copy()
    for component, section, value in edits:
        block = edited["components"][component]
        if "source" in block:
            # spaCy takes a sourced component as it was saved: settings written
            # beside `source` are not read, and there are none to edit.
            raise AnalysisInputError(
                f"{option}: [components.{component}] is sourced (source = {block['source']!r}), so the analysis "
                "cannot change its settings (to read every layer): analyse that pipeline itself, with "
                f"--model {block['source']} --component {block.get('component', component)}")
        for key in section[:-1]:
            block = block[key]
        block[section[-1]] = value
    return edited


def contextual_components(nlp: Language) -> List[str]:
    return [name for name in nlp.pipe_names if nlp.get_pipe_meta(name).factory in CONTEXTUAL_FACTORIES]


def choose_component(nlp: Language, component: Optional[str], label: str, option: str = "--component") -> str:
    """The component to analyse: `component` (given by `option`), or the pipeline's only contextual one."""
    found = contextual_components(nlp)
    if component is not None:
        if component not in found:
            raise AnalysisInputError(f"{option} {component!r}: the pipeline {label} has no such contextual "
                                     f"embedder; its contextual embedders are: {found}")
        return component
    if not found:
        raise AnalysisInputError(f"the pipeline {label} has no contextual embedder "
                                 f"({', '.join(CONTEXTUAL_FACTORIES)}); its components are: {nlp.pipe_names}")
    if len(found) > 1:
        raise AnalysisInputError(f"the pipeline {label} has several contextual embedders {found}: "
                                 f"choose one with {option}")
    return found[0]


def factory_of(nlp: Language, name: str) -> str:
    return str(nlp.get_pipe_meta(name).factory)


def needed_components(nlp: Language, name: str) -> List[str]:
    """The analysed component and the upstream components it needs, in pipeline order.

    Those are the `UPSTREAM_FACTORIES` before it and whatever they listen to
    (a `tok2vec` or `transformer` shared with a `senter`): a listener whose
    upstream did not run gives zero features, not an error, and the senter
    would set its boundaries from nothing.
    """
    upstream = nlp.pipe_names[: nlp.pipe_names.index(name)]
    needed = {n for n in upstream if factory_of(nlp, n) in UPSTREAM_FACTORIES}
    for n in reversed(upstream):  # (a component only listens to one before it)
        if needed.intersection(_listening_components(nlp.get_pipe(n))):
            needed.add(n)
    return [n for n in upstream if n in needed] + [name]


def _listening_components(component: Any) -> List[str]:
    """The components that listen to `component` (spaCy's tok2vec and
    transformer say so); none where it does not say (another library's)."""
    try:
        return list(getattr(component, "listening_components", None) or ())
    except Exception:  # noqa: BLE001 - a third-party property; it only adds components to run
        return []


def _is_v2(nlp: Language, name: str) -> bool:
    model = nlp.config["components"][name].get("model", {})
    return isinstance(model, dict) and "encoder" in model


def encoder_settings(nlp: Language, name: str) -> dict:
    """The encoder settings as configured (v2: the encoder block; v1: the component's own).

    A v1 config that leaves `layers` or `pooling` out has them filled in as
    null, which the v1 component reads as v1's default (`legacy.upgrade`):
    they are given here as that default.
    """
    block = nlp.config["components"][name]
    if _is_v2(nlp, name):
        return dict(block["model"]["encoder"])
    defaults = V1_DEFAULTS[_V1_FAMILIES[factory_of(nlp, name)]]
    return {key: defaults[key] if value is None and key in defaults else value for key, value in block.items()}


def all_layer_edits(nlp: Language, name: str, layers: List[int], pooling: Optional[str] = None) -> List[Edit]:
    """Edits that make `name` store `layers` (pooled by `pooling`, if given) under a plain mean."""
    if _is_v2(nlp, name):
        encoder: Tuple[str, ...] = ("model", "encoder")
        edits: List[Edit] = [(name, ("model", "combiner"), dict(MEAN_COMBINER))]
    else:  # v1 layout: the settings are the component's own
        encoder = ()
        edits = [(name, ("combine",), "mean")]
    edits += [(name, ("store_layers",), True), (name, encoder + ("layers",), list(layers))]
    if pooling is not None:
        edits.append((name, encoder + ("pooling",), pooling))
    return edits + upstream_edits(nlp, name)


def component_shim(nlp: Language, name: str) -> Optional[EncoderShim]:
    """The encoder shim of contextual component `name`: BERT's or ELMo's; None for
    an encoder that pools an upstream transformer (ctxembed_from_trf, TrfEncoder.v2)."""
    return encoder_shim(cast(Any, nlp.get_pipe(name)).encoder)


def upstream_edits(nlp: Language, name: str) -> List[Edit]:
    """A component that pools an upstream transformer's output (ctxembed_from_trf, or a TrfEncoder.v2 in
    ctxembed_bert: an encoder without a model of its own): make the upstream spacy-transformers component
    output every hidden state (``output_hidden_states`` in its ``transformer_config``, where its
    architecture has one)."""
    edits: List[Edit] = []
    if component_shim(nlp, name) is None:
        for upstream in needed_components(nlp, name)[:-1]:
            model = nlp.config["components"][upstream].get("model", {})
            if factory_of(nlp, upstream) == "transformer" and "transformer_config" in model:
                edits.append((upstream, ("model", "transformer_config", "output_hidden_states"), True))
    return edits


def n_available_layers(nlp: Language, name: str) -> Optional[int]:
    """How many layers the component's model has; None when only the last is available.

    BERT: the hidden states (embeddings + one per transformer layer); ELMo:
    the token layer + the biLSTM layers; from_trf: the hidden states the
    upstream transformer outputs, seen on a probe doc.
    """
    shim = component_shim(nlp, name)
    if shim is not None:  # BERT, ELMo
        return shim.n_states
    doc = nlp.make_doc("probe")
    for upstream in needed_components(nlp, name)[:-1]:
        doc = nlp.get_pipe(upstream)(doc)
    trf_data = doc._.trf_data if doc.has_extension("trf_data") else None
    output = getattr(trf_data, "model_output", None)
    hidden = output.get("hidden_states") if output is not None and hasattr(output, "get") else None
    return len(hidden) if hidden else None


def pooling_modes(nlp: Language, name: str, wanted: Optional[Sequence[str]]) -> List[Optional[str]]:
    """The pooling modes to try on WiC: the configured one first. ELMo has none: [None]."""
    from ..types import POOLING_MODES

    if factory_of(nlp, name) == "ctxembed_elmo":
        return [None]
    configured = str(encoder_settings(nlp, name).get("pooling", "mean"))
    modes = list(POOLING_MODES) if wanted is None else list(wanted)
    return list(dict.fromkeys([configured, *modes]))  # each once (--pooling first --pooling first: one fit)
