"""The registered listener architectures: heads built around a listener node
or around a copy of an embedder. (The node, and `ListenerHead`, the Model a
head runs as, are in `listener`.)

`spacy-ctxembed.ContextualListener.v2` is a listener node under a head. By
default the head mixes the upstream's layers with its own scalar mix (ELMo
eq. 1: each task its own weights and gamma); with `mix_layers = false` it
takes the upstream's combined vectors instead. It then optionally
concatenates static features (`embed`, e.g. MultiHashEmbed) and projects to
`width`.

`spacy-ctxembed.ContextualTok2Vec.v3` is the same head over a private copy
of an embedder: what `nlp.replace_listeners` puts in a listener's place
(`listener_copy`). `spacy-ctxembed.ContextualTok2Vec.v2` (released) is kept
so that pipelines saved with it keep loading.

A head whose weights were trained on other layers than its upstream now
gives (a sourced component next to an embedder with other `layers`, an
upstream replaced by a model of another width) says so at its forward pass.

`spacy-ctxembed.ContextualListener.v1` (released) reads `doc._.ctx_layers`
with its widths given in the config, and never trains the upstream. It too
gives zeros only for the docs it is initialised on, and refuses layers of
another shape than its config's.

The checks of a head against what its upstream gives are in
`listener_checks`; the scaling layers of a replace_listeners copy in `grad_scale`.
"""
import math
from typing import Any, List, Optional

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Linear, Model, chain, concatenate, with_array
from thinc.types import Floats2d

from ..errors import check_bool, check_int, check_number, named_errors
from ..layers.read_ctx_layers import read_ctx_layers
from ..layers.scalar_mix import ScalarMix
from ..types import EmbedderModel
from .embedder import check_combiner_layers, check_embedder, check_encoder_settings
from .grad_scale import COPY_REFUSED, scale_gradient, with_lr_scale
from .listener import MIXES, ContextualListenerNode, ListenerHead, SavedSetting, _delegate, _init_inner, _init_v1
from .listener_checks import check_trained_layers, check_trained_upstream, output_width
from .torch_bridge import COPY_BLOCK, COPY_NAME, drop_gradients, encoder_shim


@registry.architectures("spacy-ctxembed.ContextualListener.v2")
def ContextualListener(
    *,
    width: int,
    upstream: str = "*",
    mix_layers: bool = True,
    grad_factor: float = 1.0,
    embed: Optional[Model[List[Doc], List[Floats2d]]] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """Listen to a ctxembed component: own scalar mix (+ static features) -> `width`.

    upstream: the ctxembed component's name; "*" for the only one.
    mix_layers: learn a scalar mix of the upstream's layers (true), or take
        its combined vectors (false; trains the upstream's own combiner).
    grad_factor: scales the gradient sent to the upstream (0: do not train it
        from this task).
    embed: e.g. `spacy.MultiHashEmbed.v2`, concatenated before the projection.
    """
    _check_head("ContextualListener.v2", width=width, mix_layers=mix_layers, grad_factor=grad_factor)
    node = ContextualListenerNode(upstream, mix_layers=mix_layers, grad_factor=grad_factor)
    return _head(node, width=width, mix_layers=mix_layers, embed=embed)


@registry.architectures("spacy-ctxembed.ContextualTok2Vec.v3")
def ContextualTok2Vec(
    *,
    embedder: EmbedderModel,
    width: int,
    mix_layers: bool = True,
    grad_factor: float = 1.0,
    embed: Optional[Model[List[Doc], List[Floats2d]]] = None,
    encoder_lr_scale: float = 1.0,
) -> Model[List[Doc], List[Floats2d]]:
    """The listener's head over a private embedder (what `replace_listeners` makes).

    encoder_lr_scale: the learning-rate scale of the embedder's encoder, as its
        component had it (`replace_listeners` fills it in).
    """
    _check_head("ContextualTok2Vec.v3", width=width, mix_layers=mix_layers, grad_factor=grad_factor)
    _check_copy("ContextualTok2Vec.v3", embedder)
    check_number("ContextualTok2Vec.v3", "encoder_lr_scale", encoder_lr_scale, minimum=0.0,
                 unit="a number >= 0: the encoder's learning rate as a fraction of the optimizer's")
    return _head(replacement(embedder, grad_factor=grad_factor, encoder_lr_scale=encoder_lr_scale,
                             mix_layers=mix_layers), width=width, mix_layers=mix_layers, embed=embed)


def _check_head(architecture: str, *, width: Any, mix_layers: Any, grad_factor: Any) -> None:
    """Settings every listener head shares. Config files are text: `grad_factor
    = "0"` would arrive as a string, count as non-zero and fail at the first
    update; `width = 0` would train on no features."""
    check_int(architecture, "width", width, minimum=1, unit="an integer width")
    check_bool(architecture, "mix_layers", mix_layers)
    check_number(architecture, "grad_factor", grad_factor, minimum=-math.inf,
                 unit="a number: the factor on the gradient sent to the upstream (0: none)")


def _check_copy(architecture: str, embedder: EmbedderModel) -> None:
    """A copy's embedder gets the checks its component ran when it was made (a
    saved pipeline's config.cfg may be edited: `precision = "bogus"` ran in
    fp32, `window = 0` as no window), named as the copy's other checks name it."""
    check_embedder(architecture, "embedder", embedder)
    with named_errors(COPY_NAME, COPY_BLOCK):
        check_encoder_settings(embedder)
    check_combiner_layers(architecture, embedder, block="embedder.")


def listener_copy(embedder: EmbedderModel, listener: Model, component: Any) -> Model:
    """What replaces `listener` in `nlp.replace_listeners`: a copy of what it
    listens to (`embedder`, a copy of `component`'s model). The listener's
    per-batch checks of its head's record against its upstream go with it,
    so they run here, once: a head trained on another upstream's features
    would take the copy's silently. The copy then refuses to predict, as the
    listener would, until the head trains on it (or starts afresh).

    An upstream whose encoder holds weights and has not loaded them
    (`nlp.add_pipe` then `nlp(text)` loads on first use) loads now, and is
    copied again: spaCy's copy would have none. One whose load was refused
    refuses here: it holds parts of two models. (A `ctxembed_from_trf`
    encoder holds none: it pools the transformer's outputs.) A training step
    still waiting for a backward pass (`nlp.update(sgd=...)` where some
    listener skipped the batch) is taken first, and the upstream copied
    again: spaCy's copy would lack it, which the upstream takes later.
    The copy starts with no gradient: what the upstream was sent before
    (`nlp.update(sgd=False)`) is the upstream's to step. (thinc's copy keeps
    the combiner's, which the copy's first step would apply a second time;
    the encoder's copy has none.)"""
    if component is not None and not getattr(component, "loaded", True) and encoder_shim(embedder) is not None:
        component.ensure_loaded()
        embedder = component.model.copy()
    elif component is not None and getattr(component, "take_waiting_step", lambda: False)():
        embedder = component.model.copy()
    drop_gradients(embedder)
    copy = replacement(embedder, grad_factor=getattr(listener, "grad_factor", 1.0),
                       encoder_lr_scale=getattr(component, "cfg", {}).get("encoder_lr_scale", 1.0),
                       mix_layers=getattr(listener, "mix_layers", True))
    node = listener if isinstance(listener, ContextualListenerNode) else None
    if node is not None and component is not None:
        try:
            check_trained_layers(node, component)
            check_trained_upstream(node, component)
        except ValueError as err:
            # (Where "*" matches several, each lists the listener until spaCy
            # removes it from the one copied, after this: name that one.)
            matched = node.linked_names() if node.upstream_name == "*" else []
            which = (f" (one of the ctxembed components its upstream {node.upstream_name!r} matches: "
                     f"{', '.join(map(repr, matched))})" if len(matched) > 1 else "")
            copy.attrs[COPY_REFUSED] = (
                f"{err}. (The copy that nlp.replace_listeners made of {component.name!r}{which} for this "
                "component is refused as its listener was, until the component trains on it.)")
    return copy


def replacement(embedder: EmbedderModel, *, grad_factor: float, encoder_lr_scale: float, mix_layers: bool) -> Model:
    """What stands in for a listener: what it listened to (the embedder's
    encoder, or for a listener of the vectors the whole embedder), trained as
    its component would train it: at its `encoder_lr_scale`, and run frozen
    (no dropout, no graph) where nothing would move it: `grad_factor` 0, or a
    mixing listener's encoder at scale 0."""
    source = embedder.layers[0] if mix_layers else embedder  # (a copied embedder keeps no refs)
    frozen = grad_factor == 0 or (encoder_lr_scale == 0 and mix_layers)
    return scale_gradient(with_lr_scale(source, encoder_lr_scale), grad_factor, frozen=frozen)


@registry.architectures("spacy-ctxembed.ContextualTok2Vec.v2")
def ContextualTok2VecV2(
    *,
    embedder: EmbedderModel,
    width: int,
    mix_layers: bool = True,
    grad_factor: float = 1.0,
    embed: Optional[Model[List[Doc], List[Floats2d]]] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """v2, as released: the encoder trains at the downstream component's learning
    rate, and with `grad_factor` 0 still runs in training mode."""
    _check_head("ContextualTok2Vec.v2", width=width, mix_layers=mix_layers, grad_factor=grad_factor)
    _check_copy("ContextualTok2Vec.v2", embedder)
    source = embedder.layers[0] if mix_layers else embedder
    # (Scale 1: the downstream component's learning rate, as released; set all the
    # same, as it marks the encoder a copy, whose bytes' pooling and windows its
    # load checks against those the head was trained on: `torch_bridge.is_copy`.)
    return _head(scale_gradient(with_lr_scale(source, 1.0), grad_factor), width=width, mix_layers=mix_layers,
                 embed=embed)


def _head(source: Model, *, width: int, mix_layers: bool, embed: Optional[Model]) -> Model:
    """The listening head over `source` (a listener node, or a copy of the encoder
    that replaced one), as v2 listeners and both ContextualTok2Vec versions build
    it (under one node name: a copy's head is the listener's it replaced)."""
    mixed: Model = chain(source, ScalarMix()) if mix_layers else source
    features = mixed if embed is None else concatenate(mixed, embed)
    inner: Model = chain(features, with_array(Linear(nO=width)))
    return ListenerHead("contextual_listener_v2", _delegate, init=_init_inner, layers=[inner], dims={"nO": width},
                        attrs={MIXES: SavedSetting(mix_layers)})


@registry.architectures("spacy-ctxembed.ContextualListener.v1")
def ContextualListenerV1(
    *,
    width: int,
    n_layers: int,
    upstream_width: int,
    embed: Optional[Model[List[Doc], List[Floats2d]]] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """Learned layer mix (+ optional static features) -> projection to `width` (released v1).

    n_layers: how many layers the upstream stores (len of its `layers` setting).
    upstream_width: the width of each upstream layer.
    embed: e.g. `spacy.MultiHashEmbed.v2`, concatenated to the mix.
    """
    for setting, value in (("width", width), ("n_layers", n_layers), ("upstream_width", upstream_width)):
        check_int("ContextualListener.v1", setting, value, minimum=1)
    mix: Model[List[Doc], List[Floats2d]] = chain(
        read_ctx_layers(n_layers, upstream_width), ScalarMix(n_layers=n_layers)
    )
    features = mix if embed is None else concatenate(mix, embed)
    n_in = upstream_width + (output_width(embed) if embed is not None else 0)
    inner: Model[List[Doc], List[Floats2d]] = chain(features, with_array(Linear(nO=width, nI=n_in)))
    return Model("contextual_listener", _delegate, init=_init_v1, layers=[inner], dims={"nO": width})
