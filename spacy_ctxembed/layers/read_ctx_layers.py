"""Read the per-layer outputs an upstream ctxembed component stored on each doc.

This is the input of `spacy-ctxembed.ContextualListener.v1` (released). A doc
without `doc._.ctx_layers` gets zeros only where spaCy expects that: the
sample docs it initialises the listening component on. Anywhere else zeros
would be features from nothing (the upstream disabled, excluded, or not
storing its layers), so the read says so instead.
"""
import weakref
from typing import Any, Callable, Dict, List, Tuple

from spacy.tokens import Doc
from thinc.api import Model

from ..outputs import get_outputs
from ..types import DocLayers

ADVICE = (
    "the upstream ctxembed component must run with store_layers = true, before this component (in training: "
    "list it in [training] frozen_components and annotating_components)"
)
MISSING = f"doc._.ctx_layers is missing: {ADVICE}"
ARCHITECTURE = "ContextualListener.v1"


class SampleDocsModel(Model):
    """A layer that knows which docs its component was initialised on.

    spaCy initialises a listening component on sample docs that no upstream
    has annotated (e.g. `Tagger.initialize` runs `model.initialize(X=docs)`,
    and thinc's chain init predicts on those docs to size the layers after
    this one): these are the only docs that may get zeros for the upstream's
    outputs. The docs are held weakly, and do not travel with a pickled or
    copied layer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Model.__init__(self, *args, **kwargs)
        # The docs this layer was initialised on: id -> the doc (weakly).
        self._samples: Dict[int, Any] = {}

    def remember_samples(self, docs: List[Doc]) -> None:
        self._samples = {id(doc): weakref.ref(doc) for doc in docs if isinstance(doc, Doc)}

    def forget_samples(self) -> None:
        """Its component is initialised: the sample docs are the caller's (the
        examples' `eg.predicted`), and run through the pipeline later without
        the upstream they are docs like any other, not ones to give zeros."""
        self._samples = {}

    def is_sample(self, doc: Doc) -> bool:
        # An id alone could be a new doc's at a freed one's address: the weak
        # reference says whether it is the same doc.
        ref = self._samples.get(id(doc))
        return ref is not None and ref() is doc

    def __getstate__(self) -> Any:
        # Weak references cannot be pickled, and a copy predicts on docs of its
        # own. (Model keeps most of its state in slots: object's own state is
        # (dict, slots).)
        own = {**self.__dict__, "_samples": {}}
        slots = {name: getattr(self, name) for name in Model.__slots__ if hasattr(self, name)}
        return own, slots


def read_ctx_layers(n_layers: int, width: int) -> Model[List[Doc], List[DocLayers]]:
    # No init: the dims come from the config, and the listener's head
    # (`_init_v1`) has this layer remember the docs it is initialised on.
    return SampleDocsModel("read_ctx_layers", forward, dims={"nL": n_layers, "nO": width})


def forward(model: Model, docs: List[Doc], is_train: bool) -> Tuple[List[DocLayers], Callable]:
    n_layers, width = model.get_dim("nL"), model.get_dim("nO")
    # (No ctxembed component created in this process: no extension, no layers.)
    registered = Doc.has_extension("ctx_layers")
    layers = []
    for doc in docs:
        x = doc._.ctx_layers if registered else None
        if x is None:
            if is_train:
                raise ValueError(f"{ARCHITECTURE}: {MISSING}")
            if not (isinstance(model, SampleDocsModel) and model.is_sample(doc)):
                raise ValueError(_missing_error(doc))
            # A doc spaCy initialises this component on: zeros, as spaCy's own
            # Tok2VecListener gives there.
            x = model.ops.alloc3f(n_layers, len(doc), width)
        elif tuple(x.shape) != (n_layers, len(doc), width):
            # The weights after this layer (the scalar mix, the projection) are
            # for n_layers layers of this width: anything else would fail in
            # numpy with no word of why, or be mixed wrongly.
            raise ValueError(_shape_error(tuple(x.shape), n_layers, len(doc), width))
        layers.append(model.ops.asarray3f(x))
    # Frozen upstream: the gradient stops here.
    return layers, lambda d_layers: []


def _missing_error(doc: Doc) -> str:
    outputs = get_outputs(doc) if Doc.has_extension("ctx_outputs") else {}
    without = sorted(name for name, output in outputs.items() if output.get("layers") is None)
    if len(without) == 1:
        return (
            f"{ARCHITECTURE}: doc._.ctx_layers is missing: the upstream ctxembed component {without[0]!r} ran on "
            f"this doc but stores no layers (store_layers = false): set store_layers = true in "
            f"[components.{without[0]}], as this component was trained with; {ADVICE}"
        )
    if without:
        # Which one this component was trained on is not recorded (v1 reads
        # whichever stored layers): naming one could send the user to set it
        # on the wrong model, whose layers would then be read silently.
        return (
            f"{ARCHITECTURE}: doc._.ctx_layers is missing: the upstream ctxembed components "
            f"{', '.join(map(repr, without))} ran on this doc but store no layers (store_layers = false): set "
            "store_layers = true in the one this component was trained on (the one that stored them when it was "
            f"trained), and only in that one; {ADVICE}"
        )
    return (
        f"{ARCHITECTURE}: doc._.ctx_layers is missing: no upstream ctxembed component ran on this doc. It is "
        "disabled (spacy.load(..., disable=[...]), nlp.select_pipes, nlp.disable_pipe; nlp.enable_pipe(name) "
        "enables it), excluded (spacy.load(..., exclude=[...])) or not before this component, or the doc did not "
        f"go through the pipeline (run nlp(text), not this component alone); {ADVICE}"
    )


def _shape_error(shape: Tuple[int, ...], n_layers: int, n_tokens: int, width: int) -> str:
    expected = f"(n_layers, tokens, upstream_width) = ({n_layers}, {n_tokens}, {width})"
    if len(shape) == 3 and shape[1] == n_tokens:
        return (
            f"{ARCHITECTURE}: doc._.ctx_layers has {shape[0]} layers of width {shape[2]}, but this component has "
            f"n_layers = {n_layers} and upstream_width = {width}, and its weights are for those: give the upstream "
            "ctxembed component the settings this component was trained with (as many `layers`, a model of that "
            "width), or set n_layers and upstream_width to what the upstream stores and train this component again"
        )
    return (
        f"{ARCHITECTURE}: doc._.ctx_layers has shape {shape}, not {expected}: the layers are not this doc's "
        "(was the doc retokenized after the upstream ctxembed component ran? run that component after any "
        "component that changes the tokens)"
    )
