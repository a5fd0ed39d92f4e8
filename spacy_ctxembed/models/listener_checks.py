"""What a listening component was trained on, held against the upstream it reads now.

A head's weights fit the features they were trained on; another upstream's
(other layers, width, pooling, model or weights) may fit their shapes and be
read silently. The listener node records what its head trained on
(`TRAINED_ON`, `TRAINED_WITH`); these checks, run at each forward pass of a
head (`listener._delegate`) and where `nlp.replace_listeners` copies its
upstream (`heads.listener_copy`), compare that with what the upstream gives now, and build
the messages that say what to do. (The node's own check of the docs' outputs,
by their signatures, is the node's: `listener`.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from thinc.api import Model
from thinc.layers.concatenate import forward as concatenate_forward

from ..errors import bad_setting
from ..layers import built_as
from ..settings import config_value
from .torch_bridge import selected_layers
from .trf_pooler import MODEL_NAME as TRF_ENCODER

if TYPE_CHECKING:
    from .listener import ContextualListenerNode

#: The listener attr that records the upstream's layers its head was initialised
#: for: the same number of other layers fits the weights' shapes, but not what
#: they were trained on.
TRAINED_ON = "upstream_layers"
#: The listener attr that records what else its head was trained on
#: (`upstream_record`): what shapes the upstream's outputs besides its layers
#: (`ContextualEmbedder.listener_features`), a fingerprint of the weights the
#: head reads through (the encoder's; and the combiner's for a head on the
#: vectors), None once they may move under it in training, which weights
#: they are (their lineage), and what the upstream's outputs' signature says
#: of them (`signed`: all of its weights; `signed_encoder`: the encoder's alone).
TRAINED_WITH = "upstream_record"
#: The fields of those features a head is held to: not the tokenizer's and
#: config.json's digests, which change with the versions of tokenizers and
#: transformers (the weights' fingerprint tells another model), nor int8,
#: which runs the same weights faster.
HELD = ("encoder", "pooling", "options")


def check_saved_combiners(head: Model) -> None:
    """A copied embedder's combiner (`ContextualTok2Vec`, in a pipeline saved
    after `replace_listeners`) must be the one its weights were saved from.

    The component checks its own combiner when it loads; a copy loads with
    the component that holds it, through thinc alone, which renames each node
    to its saved name and loads the saved weights into whatever the edited
    config.cfg built there: a trained ScalarMix would run as MeanLayers,
    silently, or ConcatLayers fail in blis. (A few nodes: cheap per batch.)"""
    for node in head.walk():
        built = built_as(node)
        if built is not None and node.name != built:
            raise bad_setting("ContextualTok2Vec", "embedder.combiner", built,
                              f"the copied embedder's combiner was saved as {node.name}, and its weights are "
                              "that one's: put back the combiner it was saved with in the saved pipeline's "
                              "config.cfg, or train this component again")
        if node.name == TRF_ENCODER:
            _check_saved_trf_settings(node)


def _check_saved_trf_settings(encoder: Model) -> None:
    """A copied `TrfEncoder`'s layers and pooling must be those it was saved
    with: this component's weights were trained on its vectors. (A BERT or
    ELMo copy's shim records and checks its own; a TrfEncoder has no shim,
    and its settings are the config's, `FromConfig`, with the saved ones beside.)"""
    setting = encoder.attrs.get("settings")
    saved, current = getattr(setting, "saved", None), config_value(setting)
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return
    for key in ("layers", "pooling"):
        if key in saved and saved[key] != current.get(key):
            raise bad_setting("ContextualTok2Vec", f"embedder.encoder.{key}", current.get(key),
                              f"the copied encoder was saved with {key} = {saved[key]!r}, and this component's "
                              f"weights were trained on its vectors: put back {key} = {saved[key]!r} in the "
                              "saved pipeline's config.cfg, or train this component again")


def check_trained_dims(parts: Tuple[ContextualListenerNode, Optional[Model], Model, List[Model]],
                        upstream: Any) -> None:
    """A listener's head whose weights were trained on other layers than its
    upstream now gives says so, rather than fail in numpy ("shape-mismatch
    for sum") or blis. The upstream sets the listener's dims to what it gives
    (`_size_listener`, when it loads or a listening component is added next
    to it): a sourced component, or an upstream replaced or reloaded with
    other `layers` or another model, can give more or fewer layers, or
    another width, than the scalar mix and the projection were trained on,
    or other layers of the same count. `parts`: the head's (`listener._listener_parts`);
    `upstream`: the component it reads now (`ContextualListenerNode.upstream`)."""
    node, mix, linear, embeds = parts
    if node.has_dim("nL") is not True or node.has_dim("nO") is not True:
        return  # not sized yet: the node says what is missing
    n_layers, width = node.get_dim("nL"), node.get_dim("nO")
    if mix is not None and mix.has_param("s") is True:
        trained = mix.get_param("s").shape[0]
        if trained != n_layers:
            raise _dims_error(node, layers_text(trained), layers_text(n_layers))
    if linear.has_dim("nI") is True:
        try:
            trained = linear.get_dim("nI") - sum(output_width(embed) for embed in embeds)
        except ValueError:
            trained = width  # an embed of unknown width: the projection's own check stands
        if trained != width:
            what = "layers" if node.mix_layers else "vectors"
            raise _dims_error(node, f"{what} of width {trained}", f"{what} of width {width}")
    check_trained_layers(node, upstream)


def _dims_error(node: ContextualListenerNode, trained: str, now: str) -> ValueError:
    """The error of a head whose weights do not fit the dims its listener was
    sized to. Where "*" matches several upstreams, the last one linked sized
    it, and the head's trained shapes are not the cause: that error (the
    node's own, `source_name`) is raised instead, which the forward pass
    after this check never reached."""
    node.source_name()
    return ValueError(_trained_on_error(node, trained, now))


def check_trained_layers(node: ContextualListenerNode, upstream: Any) -> None:
    """As many layers of the same width, but others ([1, 2] for [2, 1]): the
    shapes fit, the features are not what the weights were trained on.
    (Heads saved before the layers were recorded say nothing.)"""
    trained_on, now = node.attrs.get(TRAINED_ON), None if upstream is None else selected_layers(upstream.encoder)
    if trained_on is not None and now is not None and list(trained_on) != list(now):
        raise ValueError(_trained_on_error(node, f"layers {list(trained_on)}", f"layers {now}", upstream))


def check_trained_upstream(node: ContextualListenerNode, component: Any) -> None:
    """A listener's head that would predict on what another upstream makes than
    it was trained on says so: another pooling or model kind (ELMo's
    options), another combiner under a head on the vectors, or other
    weights. Where the shapes fit (`check_trained_dims`), the features were
    silently another model's: a component sourced without its upstream, or
    an upstream replaced, initialized again or loaded from another pipeline.
    Weights that moved while the head trained on them are those of their
    lineage, as they are now (its upstream, also saved and loaded, or
    pickled); weights it trained on as they were (frozen) must be those
    weights, in any upstream (one made again from the same model is the
    same). (Heads saved before the record was kept say nothing.) In
    training the head learns what the upstream makes now: see `listener._delegate`.
    `component`: the upstream it reads now (`ContextualListenerNode.upstream`)."""
    record = node.attrs.get(TRAINED_WITH)
    if component is None:
        return
    features = component.listener_features()
    if not isinstance(record, dict) or features is None:
        return
    held = (*HELD, *(() if node.mix_layers else ("combiner",)))
    trained = record.get("features")
    was: Dict[str, Any] = trained if isinstance(trained, dict) else {}
    changed = [key for key in held if key in was and key in features and was[key] != features[key]]
    if changed:
        raise ValueError(_trained_on_error(node, _fields(was, changed), _fields(features, changed), component))
    if record.get("from_docs"):
        # (Trained on docs embedded once, with no upstream in the pipeline: held
        # to the weights their outputs' signature names: encoder and combiner,
        # or for a head that mixes the layers the encoder's alone where both
        # signatures name them, as the docs are: `signed_held`.)
        trained, signed = node.signed_held(record, component)
        if signed is not None and trained not in (None, signed):
            raise ValueError(_weights_error(node, trained, signed, own=False, component=component))
        return
    own = record.get("lineage") == component.lineage
    if (own and record.get("weights") is None) or record.get("untrained"):
        return  # (weights that moved in training, of this lineage: as they are now; or a head not trained)
    if not own and getattr(component, "unvouched", False):
        raise ValueError(_unvouched_error(node, component))
    now = node.held_weights(component)
    if record.get("weights") != now:
        raise ValueError(_weights_error(node, record.get("weights"), now, own=own, component=component))


def _fields(fields: Dict[str, Any], keys: List[str]) -> str:
    return ", ".join(f"{'ELMo options' if key == 'options' else key} {fields[key]}" for key in keys)


def _weights_error(node: ContextualListenerNode, trained: Optional[str], now: str, *, own: bool,
                   component: Any) -> str:
    upstream = upstream_named(node, component)
    if own:
        return (f"{node.described()}: this component was trained on other weights of {upstream!r} (on the outputs "
                f"of weights {trained} as they were; those of {upstream!r} have moved since, to {now}: trained by "
                f"another component, or this one kept as it was while they trained). Train it again on "
                f"{upstream!r} as it is, or give it a copy of its own (nlp.replace_listeners) before "
                f"{upstream!r} trains on")
    how = (f"the weights moved while it was trained on them, and {upstream!r} has other weights now" if trained is None
           else f"trained on the outputs of weights {trained}, {upstream!r} has weights {now} now")
    return (
        f"{node.described()}: this component was trained on the outputs of another {upstream!r} ({how}): a component "
        f"sourced or kept without the {upstream!r} it was trained with, or {upstream!r} replaced, initialized again "
        f"or loaded from another pipeline. Use it with the {upstream!r} it was trained with (source both from its "
        f"pipeline, or call nlp.replace_listeners there first to give it a copy of its own), or train it again on "
        f"this one"
    )


def _unvouched_error(node: ContextualListenerNode, component: Any) -> str:
    upstream = upstream_named(node, component)
    return (
        f"{node.described()}: this component was trained on the outputs of another {upstream!r}: {upstream!r} was "
        f"loaded from a model folder kept on purpose (its cfg's records of the model it was saved with removed), "
        f"which this component was not trained on. Train it again on {upstream!r} as it is, or put back the "
        f"model folder and the cfg {upstream!r} was saved with"
    )


def layers_text(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def upstream_named(node: ContextualListenerNode, component: Any = None) -> str:
    """The upstream as errors name it: `component`, the one held against the
    head, where known (a copy that replace_listeners makes of one of the
    several that "*" matches is of that one); else the one named, or the
    one "*" matched."""
    if component is not None:
        return component.name
    try:
        return node.source_name() or node.upstream_name
    except ValueError:  # "*" matches several: that is its own error, not this one
        return node.upstream_name


def _trained_on_error(node: ContextualListenerNode, trained: str, now: str, component: Any = None) -> str:
    upstream = upstream_named(node, component)
    return (
        f"{node.described()}: its weights were trained on {trained}, and its upstream {upstream!r} now gives "
        f"{now}. Give {upstream!r} the settings this component was trained "
        f"with (its model's encoder `name`, `layers` and `pooling`, and its combiner), or train a new one on what "
        f"{upstream!r} now gives (spacy train, or a component made from its config)"
    )


def output_width(model: Model) -> int:
    """The output width of `model` before `init` sets it where it can be told: its own
    `nO`; a concatenate's, its parts' added; else its last layer's, stepping back only
    past layers that keep their input's width (those that declare no `nO`, such as
    `ragged2list`). A chain such as MultiHashEmbed sets its own `nO` only in `init`."""
    if model.has_dim("nO") is True:
        return model.get_dim("nO")
    if model._func is concatenate_forward:  # (thinc's own test for a concatenate node)
        return sum(output_width(layer) for layer in model.layers)
    for layer in reversed(model.layers):
        if layer.has_dim("nO") is False and not layer.layers:
            continue
        # A layer whose width is not known yet (Maxout without nO) ends the search: the
        # layers before it do not give the width it will have.
        return output_width(layer)
    raise ValueError(f"cannot tell the output width of {model.name!r}: give it an nO")
