"""`spacy-ctxembed.Embedder.v2`: a component's whole model, chain(encoder, combiner).

docs -> encoder -> per-doc layer stacks (n_layers, n_tokens, width)
     -> combiner -> per-doc vectors (n_tokens, width'), width' = width except
        for concatenation.

`init` passes the encoder's dims on to the combiner, so neither repeats the
other's settings. The attrs `replace_listener` and `replace_listener_cfg` are
spaCy's hooks for `nlp.replace_listeners`: a listener is replaced by a copy
of the encoder (a listener that mixes layers) or of the whole chain (one that
reads the vectors).
"""
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Collection, Dict, Iterator, List, NamedTuple, Optional, Tuple

from spacy.tokens import Doc
from spacy.util import dot_to_object, registry
from thinc.api import Model
from thinc.layers.chain import forward as chain_forward

from ..errors import bad_setting, check_int, first_line, shortened
from ..layers import built_as
from ..settings import config_value
from ..types import CombinerModel, EmbedderModel, EncoderModel
from .legacy import V1_ARCHITECTURES, upgrade_cfg
from .torch_bridge import encoder_shim
from .trf_pooler import COMPONENT as TRF_COMPONENT
from .trf_pooler import MODEL_NAME as TRF_ENCODER
from .trf_pooler import check_settings as check_trf_settings


@registry.architectures("spacy-ctxembed.Embedder.v2")
def Embedder(*, encoder: EncoderModel, combiner: CombinerModel) -> EmbedderModel:
    """chain(encoder, combiner), with the encoder's dims passed to the combiner."""
    model: EmbedderModel = Model(
        ">>",
        chain_forward,
        init=init,
        dims={"nO": None},
        layers=[encoder, combiner],
        refs={"encoder": encoder, "combiner": combiner},
        attrs={"replace_listener": replace_listener, "replace_listener_cfg": replace_listener_cfg},
    )
    if encoder.has_dim("nL") and combiner.has_dim("nL") is None:
        combiner.set_dim("nL", encoder.get_dim("nL"))
    # (A combiner's own n_layers that contradicts the layers is refused by
    # `check_combiner_layers`, which whatever holds the embedder calls with
    # its own name: here the component's is not known yet.)
    return model


def check_embedder(owner: str, setting: str, model: Model) -> None:
    """`model` must be an `Embedder.v2`: an encoder (a model with a layer
    count, `nL`, as this package's encoders have) chained to a combiner.
    Another model there (a spaCy tok2vec, an encoder or a combiner alone, a
    listener) failed later as thinc's unpacking or reference errors, naming
    neither `owner` nor `setting`."""
    if model.attrs.get("replace_listener") is not replace_listener or len(model.layers) != 2:
        raise bad_setting(owner, setting, _shown(model),
                          "expected a spacy-ctxembed.Embedder.v2 block (an encoder and a combiner), as in the "
                          "factory's default config")
    encoder = model.layers[0]
    if encoder.has_dim("nL") is False:
        raise bad_setting(owner, f"{setting}.encoder", _shown(encoder),
                          "expected a spacy-ctxembed encoder (BertEncoder.v2, ElmoEncoder.v3 or TrfEncoder.v2)")


def _shown(model: Model) -> str:
    """A model's name, cut short (a chain's name lists all its layers)."""
    return shortened(model.name, 60)


def check_combiner_layers(owner: str, model: EmbedderModel, *, block: str = "") -> None:
    """ScalarMix's `n_layers`, where given, must be the count the encoder's
    layers select: `init` would size the mix by the encoder anyway, and the
    saved pipeline would then not load. `owner`: who the error names (the
    component, or the architecture that holds the embedder, with the
    embedder's `block` in it)."""
    encoder, combiner = model.layers
    setting = f"{block}combiner.n_layers"
    if combiner.has_dim("nL"):
        # (Config text: `n_layers = "3"` was refused as a count other than the layers' 3.)
        check_int(owner, setting, combiner.get_dim("nL"), unit="an integer number of layers")
    if encoder.has_dim("nL") and combiner.has_dim("nL") and combiner.get_dim("nL") != encoder.get_dim("nL"):
        raise bad_setting(
            owner, setting, combiner.get_dim("nL"),
            f"the encoder's layers select {encoder.get_dim('nL')} layer(s); leave n_layers out (it comes from "
            "the layers)",
        )


_COMBINER_EXPECTED = ("expected a combiner that maps each doc's layers (n_layers, n_tokens, width) to its vectors, "
                      "one row per token, as spacy-ctxembed.MeanLayers.v1, ScalarMix.v1 and ConcatLayers.v1 do")


def check_combiner_output(owner: str, model: EmbedderModel) -> None:
    """A combiner that is not one of this package's (a user's own layer, or a
    thinc layer such as `reduce_mean.v1` or `Linear.v1` put there by mistake)
    must map each doc's layer stack (n_layers, n_tokens, width) to its vectors
    (n_tokens, width'): tried on one stack of zeros once the encoder's dims are
    known. A layer of another signature otherwise failed at the first doc, deep
    in thinc ("'list' object has no attribute 'data'"), naming neither the
    component nor the setting."""
    encoder, combiner = model.layers
    if built_as(combiner) is not None or encoder.has_dim("nO") is not True:
        return
    n_layers, width = encoder.get_dim("nL"), encoder.get_dim("nO")
    try:
        Y = combiner.predict([combiner.ops.alloc3f(n_layers, 2, width)])
    except Exception as err:  # noqa: BLE001 - any failure of the layer is the setting's
        raise bad_setting(owner, "model.combiner", _shown(combiner),
                          f"{_COMBINER_EXPECTED} ({first_line(err)})") from None
    if not (isinstance(Y, list) and len(Y) == 1 and getattr(Y[0], "ndim", None) == 2 and Y[0].shape[0] == 2):
        got = type(Y).__name__ if not isinstance(Y, list) else [getattr(y, "shape", type(y).__name__) for y in Y]
        raise bad_setting(owner, "model.combiner", _shown(combiner),
                          f"{_COMBINER_EXPECTED}; given the layers of one doc of 2 tokens it returned {got}")


def init(model: EmbedderModel, X: Optional[List[Doc]] = None, Y=None) -> None:
    # The layers, not the refs: thinc's Model.copy() (spaCy's replace_listeners
    # copies the embedder) keeps the layers but not the refs.
    encoder, combiner = model.layers
    encoder.initialize()
    pass_dims(model)
    if built_as(combiner) is not None or encoder.has_dim("nO") is True:
        combiner.initialize()
        return
    # ctxembed_from_trf not initialized with its upstream (added to a loaded
    # pipeline): the width comes with the first doc. A layer that needs it to
    # initialize (thinc's `Linear.v1`) failed here, deep in thinc ("Cannot get
    # dimension 'nI' for model 'linear'"), naming neither component nor setting.
    try:
        combiner.initialize()
    except Exception as err:  # noqa: BLE001 - any failure of the layer is the setting's
        raise bad_setting(TRF_COMPONENT, "model.combiner", _shown(combiner),
                          f"{_COMBINER_EXPECTED}, and that initializes before the upstream transformer's width is "
                          f"known (at the first doc) ({first_line(err)})") from None


def pass_dims(model: EmbedderModel) -> None:
    """Give the combiner the encoder's layer count and width (after loading)."""
    encoder, combiner = model.layers
    if encoder.has_dim("nO") is not True:  # ctxembed_from_trf before it has seen its upstream
        if combiner.has_dim("nL") is not False:  # (a combiner of the user's may have no such dim)
            combiner.set_dim("nL", encoder.get_dim("nL"), force=True)
        return
    n_layers, width = encoder.get_dim("nL"), encoder.get_dim("nO")
    for dim, value in (("nL", n_layers), ("nI", width), ("nO", combined_width(combiner, n_layers, width))):
        if combiner.has_dim(dim) is not False:
            combiner.set_dim(dim, value, force=True)
    model.set_dim("nO", combined_width(combiner, n_layers, width), force=True)


def combined_width(combiner: CombinerModel, n_layers: int, width: int) -> int:
    """Concatenation is n_layers times as wide; every mix keeps the width."""
    return n_layers * width if built_as(combiner) == "concat_layers" else width


def replace_listener(model: EmbedderModel, listener: Model, component: Any) -> Model:
    """What replaces `listener` in `nlp.replace_listeners`: a copy of what it
    listens to, whose encoder keeps the component's `encoder_lr_scale`
    (`heads.listener_copy`)."""
    from .heads import listener_copy

    return listener_copy(model, listener, component)


def replace_listener_cfg(
    embedder_cfg: Dict[str, Any], listener_cfg: Dict[str, Any], *, encoder_lr_scale: float = 1.0,
    upstream: str = "*", v1_settings: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """The config of the replacement: `ContextualTok2Vec.v3` around a copy of the
    embedder. (The component binds its `encoder_lr_scale`, its name and, for a
    v1 model, its v1 settings to this hook.)

    spaCy hands the hook the listening component's `model.tok2vec` block, not
    the path it replaces (`model.tok2vec.embed` in a `spacy.Tok2Vec.v2`, a
    listener inside `concatenate.v1`, another block of a model of one's own):
    the paths are read from `Language.replace_listeners`' frame, checked at the
    first, and each gets the settings of the listener at it. Called some other
    way, the hook looks for the listener of `upstream` in the block it is given.
    """
    call = _replace_listeners_call()
    if call is not None:
        if call.current == call.asked[0]:  # (at the first path: nothing is written yet)
            own = [path for path, cfg in _listener_cfgs(call.pipe_cfg["model"], "model") if _listens_to(cfg, upstream)]
            _check_replaced_paths(call, own, upstream)
        listeners = [dot_to_object(call.pipe_cfg, call.current)]
    else:
        listeners = [cfg for _, cfg in _listener_cfgs(listener_cfg, "model.tok2vec") if _listens_to(cfg, upstream)]
    if not listeners:
        kind = listener_cfg.get("@architectures") or listener_cfg.get("@layers")
        raise ValueError(f"replace_listeners: the listening component's model.tok2vec block ({kind!r}) holds no "
                         f"spacy-ctxembed ContextualListener.v2 of {upstream!r}")
    settings = [{k: v for k, v in cfg.items() if k not in ("@architectures", "upstream")} for cfg in listeners]
    if any(other != settings[0] for other in settings[1:]):
        raise ValueError(
            f"replace_listeners: the listening component has {len(listeners)} ContextualListeners of {upstream!r} "
            "with different settings, and this hook, called outside nlp.replace_listeners, is not told which one a "
            "path replaces; give them the same settings, or have the component listen once"
        )
    if embedder_cfg.get("@architectures") in V1_ARCHITECTURES:
        if v1_settings is None:
            raise ValueError(f"replace_listeners: {upstream!r} has a v1 model ({embedder_cfg['@architectures']}) "
                             "but not the settings it was upgraded with; write its config as v2 first")
        # The v1 block builds only a placeholder, which its component upgrades with
        # its own settings: the copy, on its own, needs the v2 block.
        embedder_cfg = upgrade_cfg(embedder_cfg, v1_settings)
    result: Dict[str, Any] = {"@architectures": "spacy-ctxembed.ContextualTok2Vec.v3", "embedder": embedder_cfg,
                              **settings[0], "encoder_lr_scale": encoder_lr_scale}
    return result


def _listener_cfgs(cfg: Any, path: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """The spacy-ctxembed ContextualListener.v2 blocks in config block `cfg` (at
    `path`), at any depth, each with its path (v1 listeners read the docs, and
    are never linked or replaced)."""
    if isinstance(cfg, dict):
        if cfg.get("@architectures") == "spacy-ctxembed.ContextualListener.v2":
            yield path, cfg
            return
        for key, value in cfg.items():
            yield from _listener_cfgs(value, f"{path}.{key}")


def _listens_to(cfg: Dict[str, Any], upstream: str) -> bool:
    return cfg.get("upstream", "*") in ("*", upstream)


class _ReplaceCall(NamedTuple):
    """What a running `Language.replace_listeners` call holds: the listening
    component, the paths asked for, the one being replaced, its config."""

    pipe_name: str
    asked: List[str]
    current: str
    pipe_cfg: Any  # (spaCy's Config of the component)
    #: Where the call comes from a sourced component's `replace_listeners`
    #: setting (`Language.from_config`): its name in the new pipeline and its source.
    sourced: Optional[Tuple[str, str]] = None


def _replace_listeners_call() -> Optional[_ReplaceCall]:
    """The `Language.replace_listeners` call this hook runs in, or None where it
    is called otherwise. spaCy hands the hook no path (only the `model.tok2vec`
    block), so they are read from its frame, which holds them all. (Should
    spaCy rename these locals, the hook checks nothing, as before; the tests
    of `replace_listeners` pin them.)"""
    from spacy.language import Language

    code = Language.replace_listeners.__code__
    frame: Optional[FrameType] = sys._getframe(1)  # (replace_listener_cfg's; replace_listeners' is next)
    try:
        for _ in range(3):  # (a wrapper of the hook, someone's, may add a frame or two)
            if frame is None or frame.f_code is code:
                break
            frame = frame.f_back
        if frame is None or frame.f_code is not code:
            return None
        named = frame.f_locals
        found = (named.get("pipe_name"), named.get("listeners"), named.get("listener_path"), named.get("pipe_cfg"))
        sourced = _sourcing(frame.f_back)
    finally:
        del frame
    pipe_name, asked, current, pipe_cfg = found
    # (An iterator would be used up here: spaCy's own loop over it gets nothing.)
    if not (isinstance(pipe_name, str) and isinstance(asked, Collection) and not isinstance(asked, (str, Iterator))
            and asked and isinstance(current, str) and all(isinstance(path, str) for path in asked)
            and isinstance(pipe_cfg, dict)
            and isinstance(pipe_cfg.get("model"), dict)):
        return None
    return _ReplaceCall(pipe_name, list(asked), current, pipe_cfg, sourced)


def _sourcing(frame: Optional[FrameType]) -> Optional[Tuple[str, str]]:
    """(name, source) of the component whose `replace_listeners` setting made
    `Language.from_config` (`frame`, the caller's) run this call; else None. The
    user wrote that setting, not the call: the errors name it."""
    from spacy.language import Language

    if frame is None or frame.f_code is not Language.from_config.__code__:
        return None
    name, source = frame.f_locals.get("pipe_name"), frame.f_locals.get("model")
    if isinstance(name, str) and isinstance(source, (str, Path)):
        return name, str(source)
    return None


def _check_replaced_paths(call: _ReplaceCall, paths: List[str], upstream: str) -> None:
    """Refuse a `replace_listeners` path that is not one of the listeners' own
    (`paths`), before spaCy writes any of them: spaCy writes the hook's block at
    the path it was given, but swaps only the listener in the model. Given
    `model.tok2vec` for a listener at `model.tok2vec.embed` (the shipped
    `ud-*`/`wnut17-*` configs), the copy's block would take the place of the
    whole `Tok2Vec.v2` in the config (its `encode` too) while the model keeps
    its encoder, and the saved pipeline would not load."""
    pipe_name, asked = call.pipe_name, call.asked
    call_text = f"[{pipe_name}] nlp.replace_listeners({upstream!r}, {pipe_name!r}, {asked!r})"
    if call.sourced is not None:
        name, source = call.sourced
        call_text = (f"[components.{name}] replace_listeners = {asked!r}, of {pipe_name!r} sourced from {source!r} "
                     f"(spaCy calls nlp.replace_listeners({upstream!r}, {pipe_name!r}, ...) there)")
    listed = ", ".join(map(repr, paths))
    wrong = [path for path in asked if path not in paths]
    if wrong:
        one = len(paths) == 1
        where = (f"which has {'it' if one else 'them'} at {listed}: pass {'that path' if one else 'those'}" if paths
                 else "which has none (edited since the pipeline was built?)")
        raise ValueError(
            f"{call_text}: {wrong[0]!r} is not the path of a ContextualListener of {upstream!r} in the config of "
            f"{pipe_name!r}, {where} "
            f"(spaCy would write the copy's block over all of {wrong[0]!r} in the config but swap only the listener "
            "in the model, and the saved pipeline would not load)"
        )
    twice = next((path for i, path in enumerate(asked) if path in asked[:i]), None)
    if twice is not None:  # (spaCy swaps every listener in the model, but would write one path's block twice)
        raise ValueError(f"{call_text}: {twice!r} is given twice; each listener needs its own path ({listed})")


def check_encoder_settings(model: Model) -> None:
    """The checks of `model`'s encoder settings that need no weights: the component
    runs them when it is created, so that a bad setting fails at `nlp.add_pipe`.
    BERT's and ELMo's settings are in their shim; `TrfEncoder`'s in its attrs."""
    shim = encoder_shim(model)
    if shim is not None:
        shim.check_settings()
    for node in model.walk():
        if node.name == TRF_ENCODER:
            check_trf_settings(config_value(node.attrs["settings"]))
