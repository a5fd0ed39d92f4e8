"""The registered listener architectures: heads built around a listener node
(`listener`) or around a copy of an embedder.

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
from typing import Any, List, Optional, Tuple

import srsly
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Linear, Model, chain, concatenate, with_array
from thinc.layers.concatenate import forward as _concatenate_forward
from thinc.model import deserialize_attr
from thinc.types import Floats2d

from ..errors import SettingError, bad_setting, check_bool, check_int, check_number, named_errors
from ..layers import built_as
from ..layers.read_ctx_layers import SampleDocsModel, read_ctx_layers
from ..layers.scalar_mix import ScalarMix
from ..settings import FromConfig
from ..types import EmbedderModel
from .embedder import check_combiner_layers, check_embedder, check_encoder_settings
from .grad_scale import COPY_REFUSED, scale_gradient, with_lr_scale
from .listener import ContextualListenerNode, _recorded_from_docs, _recorded_in_training
from .listener_checks import (
    TRAINED_ON,
    TRAINED_WITH,
    check_saved_combiners,
    check_trained_dims,
    check_trained_layers,
    check_trained_upstream,
    output_width,
    upstream_named,
)
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
            copy.attrs[COPY_REFUSED] = (
                f"{err}. (The copy that nlp.replace_listeners made of {upstream_named(node)!r} for this "
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


#: The head attr that holds its `mix_layers` (a `SavedSetting`): written with its
#: bytes, and held to the config's when they load (absent in older bytes).
MIXES = "mix_layers"


class SavedSetting(FromConfig):
    """A head's setting that its saved weights were made for: bytes saved with
    another value are refused as they load (`_refuse_other_setting`), not loaded
    into the head the edited config built."""

    __slots__ = ()


@deserialize_attr.register(SavedSetting)
def _refuse_other_setting(current: SavedSetting, saved: bytes, name: str, model: Model) -> SavedSetting:
    """thinc loads a node's attrs after its dims and before its layers: an edited
    `mix_layers` in a saved pipeline's config.cfg is refused here, before thinc
    puts the saved nodes in the places of others (a KeyError, or "Attempt to
    change dimension", naming neither the component nor the setting). (A
    listener's head of another `mix_layers` has another number of nodes, which
    thinc refuses before any node loads: "mismatched structure".)"""
    try:
        value = srsly.msgpack_loads(saved)
    except Exception:  # (bytes of another layout: nothing to compare with)
        value = None
    if isinstance(value, bool) and value != current.value and isinstance(model, ListenerHead):
        raise model.refused_edit(name, current.value, value)
    return SavedSetting(current.value, saved=value)


class ListenerHead(Model):
    """The node `_head` builds: its `width` (`nO`) and `mix_layers` are the
    config's, and weights saved with others are refused by name as they load:
    a saved pipeline's config.cfg may be edited. The head is the first node of
    its own that thinc loads (in the component's model, breadth first), so
    nothing of it is loaded when it refuses."""

    def set_dim(self, name: str, value: int, *, force: bool = False) -> None:
        current = self._dims.get(name)
        if not force and name == "nO" and current is not None and value != current:
            raise self.refused_edit("width", current, value)
        super().set_dim(name, value, force=force)

    def refused_edit(self, setting: str, current: Any, saved: Any) -> SettingError:
        """The error of a load of weights saved with `setting` = `saved` into this
        head, built with `current`: the listener, with the component it serves
        where it is linked (`described`), or the copy that replace_listeners made."""
        parts = _listener_parts(self)
        what = "put back" if setting == "width" else "set"
        fix = (f"{what} {setting} = {_cfg_text(saved)} in the saved pipeline's config.cfg, or train this component "
               "again")
        if parts is None:
            return bad_setting("ContextualTok2Vec", setting, current,
                               f"this component's weights were saved with {setting} = {_cfg_text(saved)} (the "
                               f"component that nlp.replace_listeners gave this copy of the embedder): {fix}")
        return SettingError(f"{parts[0].described()}: {setting} = {_cfg_text(current)} in the config, but this "
                            f"component's weights were saved with {setting} = {_cfg_text(saved)}: {fix}")


def _cfg_text(value: Any) -> str:
    """`value` as config.cfg writes it (`mix_layers = false`)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _delegate(model: Model, docs: List[Doc], is_train: bool):
    parts = _listener_parts(model)
    recorded: Optional[Tuple[ContextualListenerNode, Any]] = None
    if parts is not None:
        node = parts[0]
        node.ensure_dims()  # (a frozen upstream may not have loaded yet)
        upstream = node.upstream(docs)  # (found once a batch, for both checks)
        check_trained_dims(parts, upstream)
        if not is_train:
            check_trained_upstream(node, upstream)
        elif upstream is not None:
            node.drop_superseded_batch(docs)  # (first: a superseded batch does not move the weights read)
            recorded = node, _recorded_in_training(node, node.attrs.get(TRAINED_WITH), upstream)
        else:
            recorded = _recorded_from_docs(node, docs)
    check_saved_combiners(model)
    Y, backprop = model.layers[0](docs, is_train)
    if recorded is None:
        return Y, backprop

    def backward(dY):
        # In training the head learns what its upstream makes now, and records
        # it once its gradient comes back (an update may fail before that).
        node, record = recorded
        node.attrs[TRAINED_WITH] = record
        if isinstance(record, dict) and record.get("from_docs"):
            node.attrs[TRAINED_ON] = record.get("layers")
        return backprop(dY)

    return Y, backward


def _listener_parts(head: Model) -> Optional[Tuple[ContextualListenerNode, Optional[Model], Model, List[Model]]]:
    """The listener node of a head `_head` built, its scalar mix (None without
    `mix_layers`), the projection, and the `embed` layers concatenated to the
    mix; None for a head without a listener node (ContextualTok2Vec,
    ContextualListener.v1). The node is the first layer of the first layer
    ... of the head, so this looks at a few layers, not the whole model."""
    inner = head.layers[0]  # chain(features, with_array(Linear))
    parent, node = inner, inner.layers[0]
    embeds: List[Model] = []
    while not isinstance(node, ContextualListenerNode):
        if not node.layers:
            return None
        if node._func is _concatenate_forward:
            # concatenate(mixed, embed): thinc flattens a concatenated
            # concatenate, so the embed may be several layers.
            embeds = node.layers[1:]
        parent, node = node, node.layers[0]
    mix = parent.layers[1] if parent is not inner and len(parent.layers) > 1 else None
    if mix is not None and built_as(mix) != "scalar_mix":
        mix = None  # concatenate(node, embed): no mix
    return node, mix, inner.layers[-1].layers[0], embeds


def _init_inner(model: Model, X=None, Y=None) -> None:
    model.layers[0].initialize(X=X)


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


def _init_v1(model: Model, X=None, Y=None) -> None:
    # spaCy initialises downstream components on docs the upstream has not
    # annotated yet, so every dim comes from the config, not from X. Those
    # docs (and only those) get zeros from the read layer.
    if X is not None:
        for node in model.walk():
            if isinstance(node, SampleDocsModel):
                node.remember_samples(X)
    model.layers[0].initialize()
