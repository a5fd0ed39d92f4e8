"""Run a PyTorch encoder inside a Thinc forward pass, with or without autograd.

Shared by the BERT and ELMo encoders: the outputs go to the current ops'
arrays without a host copy (numpy shares CPU memory, cupy takes CUDA memory
through DLPack), and in training the backward pass hands the gradients back to
torch's autograd, with the shim's loss scaling for fp16.

`EncoderShim` is what the component and its helpers may ask of an encoder's
shim (BERT's, ELMo's); `encoder_shim` finds it in a model. Beside them: the
encoder's learning-rate scale (`at_lr_scale`), an optimizer's averages swapped
into its weights (`averaged_weights`), and what the component reads of an
encoder (`selected_layers`, `encoder_features`, `set_loaded_dims`).
"""
import contextlib
import copy
import os
import tempfile
from abc import ABCMeta, abstractmethod
from functools import partial
from pathlib import Path
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    cast,
)

import numpy
import srsly
import torch
from spacy.tokens import Doc
from thinc.api import Model, PyTorchShim, Shim, torch2xp, xp2torch

from ..errors import SettingError, bad_setting, is_int, named_errors
from ..fileio import unpacked
from ..settings import check_saved_features, config_value
from ..types import DocLayers

#: Runs the encoder over docs; `grad` says whether to record autograd.
EmbedFn = Callable[[Sequence[Doc], bool], List[torch.Tensor]]
#: The shim setting that scales an encoder's learning rate on its own (see `scaled_optimizer`).
LR_SCALE = "lr_scale"
#: The key of an encoder shim's bytes that records the layers it selected (resolved) when saved.
SAVED_LAYERS = "layers"
#: The key of an encoder shim's bytes that records its pooling and windows (`encoder_features`).
SAVED_FEATURES = "features"


def scaled_optimizer(optimizer: Any, settings: Dict[str, Any]) -> Any:
    """The optimizer for an encoder's own weights.

    A component scales its encoder's learning rate itself (`encoder_lr_scale`,
    in its `finish_update`). A copy of the encoder that replaced a listener
    (`nlp.replace_listeners`) is stepped by the downstream component's model,
    which knows nothing of it: there the scale travels in the shim's settings.
    """
    return at_lr_scale(optimizer, settings.get(LR_SCALE, 1.0))


def at_lr_scale(optimizer: Any, scale: float) -> Any:
    """`optimizer`, stepping at `scale` times its learning rate: thinc's
    per-call `lr_scale`, but for thinc's RAdam (`RAdam.v1`), whose step reads
    only its own `learn_rate` (the argument scales its weight decay alone).
    There a shallow copy at the scaled rate steps instead: it shares the
    optimizer's state (moments, update counts, averages), and the optimizer
    itself is left as it is."""
    if scale == 1.0:
        return optimizer
    if getattr(optimizer, "use_radam", False):
        scaled = copy.copy(optimizer)
        scaled.learn_rate = optimizer.learn_rate * scale
        return scaled
    return partial(optimizer, lr_scale=scale)


def is_copy(settings: Dict[str, Any]) -> bool:
    """Whether a shim with these settings is a copy of an encoder that replaced a
    listener (`grad_scale.with_lr_scale` gives every copy its scale): it lives under
    the head of the component that listened, trained on its vectors."""
    return LR_SCALE in settings


#: How load checks name a copy (`is_copy`): the listening component that holds
#: it is spaCy's, and loads it without a word to the shim of its own name.
COPY_NAME, COPY_BLOCK = "ContextualTok2Vec", "embedder.encoder."


def checked_as(component: str, settings: Dict[str, Any]) -> Tuple[str, str]:
    """(the name, the setting prefix) a shim's load checks speak for: its
    component's, or for a copy in a listening component, the copy's own
    block (`ContextualTok2Vec`'s `embedder.encoder`), as its other checks do."""
    return (COPY_NAME, COPY_BLOCK) if is_copy(settings) else (component, "")


def saved_as(component: str, settings: Dict[str, Any]) -> Tuple[str, str]:
    """(the name, the setting) that errors in a shim's saved bytes (`from_bytes`)
    speak of: a component's `model`, or for a copy (`is_copy`) the copy's block
    itself (`[ContextualTok2Vec] embedder.encoder`), which is what the listening
    component saved."""
    return (COPY_NAME, COPY_BLOCK.rstrip(".")) if is_copy(settings) else (component, "model")


def named_as_loaded(settings: Dict[str, Any]) -> contextlib.AbstractContextManager[None]:
    """Errors of loading an encoder (`init`, `from_bytes`) named as `checked_as`
    says: a copy's went out under its component's factory name (`[ctxembed_bert]
    window = 0`), which the listening component that initializes or loads it
    (a tagger) does not rename, naming a component that may not be there. A
    component's own encoder: its `named_errors` names them (and its warnings).
    (Errors in the saved bytes are named where they are made, by `saved_as`.)"""
    return named_errors(COPY_NAME, COPY_BLOCK) if is_copy(settings) else contextlib.nullcontext()


def swaps_weights(shim: Shim, params: Dict[Any, Any]) -> bool:
    """Whether `use_params(params)` swaps `shim`'s weights (see `averaged_weights`)."""
    return bool(_weights_in(shim, params))


def _weights_in(shim: Shim, params: Dict[Any, Any]) -> Dict[str, Any]:
    """The values `params` holds for `shim`'s weights, by state-dict name.

    The encoders' step (`EncoderShim.finish_update`, as thinc's
    PyTorchShim.finish_update) steps each weight under the key
    `(shim.id, name)`, so an optimizer's averages hold it there; thinc's own
    `use_params` reads only "pytorch_{shim.id}_{name}", which nothing fills,
    so it kept a fine-tuned encoder's raw weights in `nlp.use_params(averages)`.
    Both are read. Only the weights the optimizer has stepped are there (never
    one without a gradient, such as BERT's unused pooler).
    """
    module = shim._model
    if module is None or not params:
        return {}
    prefix = f"pytorch_{shim.id}_"
    found = {}
    for name in module.state_dict(keep_vars=True):
        for key in ((shim.id, name), prefix + name):
            if key in params:
                found[name] = params[key]
                break
    return found


@contextlib.contextmanager
def averaged_weights(shim: Shim, params: Dict[Any, Any]) -> Iterator[None]:
    """A PyTorch shim's `use_params`: its weights are the values `params` holds
    for them inside the block, and exactly the ones before it after it.

    The values are copied into the weights in place (never a partial
    `load_state_dict`, which would refuse the weights the optimizer has not
    stepped), so that a training copy of the module that shares the weights
    sees them too, and the arrays in `params` are never written to.
    """
    values = _weights_in(shim, params)
    if not values:
        yield
        return
    weights = cast(torch.nn.Module, shim._model).state_dict()
    for name, value in values.items():
        if tuple(value.shape) != tuple(weights[name].shape):
            raise ValueError(f"[{type(shim).__name__}] use_params: the value for weight {name!r} has shape "
                             f"{tuple(value.shape)}, the weight {tuple(weights[name].shape)}")
    backup = {name: weights[name].clone() for name in values}
    try:
        with torch.no_grad():
            for name, value in values.items():
                weights[name].copy_(xp2torch(value, device=weights[name].device))
        yield
    finally:
        with torch.no_grad():
            for name, saved in backup.items():
                weights[name].copy_(saved)


@contextlib.contextmanager
def autograd_on() -> Iterator[None]:
    """What an encoder's training passes (forward and backward) run under:
    autograd on, whatever the caller's `torch.no_grad()`,
    `torch.set_grad_enabled(False)` or `torch.inference_mode()` around
    `nlp.update`, since the forward pass is run for its backward pass. Under
    theirs it recorded no graph, the backward pass found no output that needs
    a gradient, and a trainable encoder silently stayed as it was while the
    heads above it trained (BERT's under all three, ELMo's under inference
    mode); and the backward pass's `.grad`s were inference tensors."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def loading_weights() -> contextlib.AbstractContextManager[None]:
    """What an encoder's weights are made or copied under (a load, `initialize`,
    a `replace_listeners` copy): outside inference mode. Made under the caller's
    `torch.inference_mode()` (a first `nlp(text)` inside it loads the weights)
    they were inference tensors, which can never take part in training: a later
    `nlp.update` failed in torch ("Inference tensors cannot be saved for
    backward"), naming neither the component nor the cause."""
    return autograd_on()


@contextlib.contextmanager
def callers_autocast_off(device_type: str) -> Iterator[None]:
    """What a forward pass in the encoder's own precision runs under: without
    the caller's `torch.autocast`, which would otherwise run `precision =
    "fp32"` (and ELMo, which is float32 only) in bf16 or fp16 (vectors off by
    up to 0.012 on MiniLM, 0.024 on ELMo) under an fp32 output signature, with
    those vectors kept in `cache_mb`'s cache past the caller's block, and only
    on CPU: autocast is per thread, and run-ahead predicts in another. The
    `precision` setting is the one switch; a caller who wants bf16 sets it."""
    if _autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def _autocast_enabled(device_type: str) -> bool:
    """Whether the calling thread is under a `torch.autocast` for `device_type`."""
    if hasattr(torch.amp, "is_autocast_available"):  # torch >= 2.4: asked by device type
        return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    # torch 2.1-2.3 (`setup.cfg` allows them) has neither call above: every
    # forward pass failed there. It asks CUDA's (no argument) and the CPU's
    # apart, and autocasts no other device type an encoder runs on.
    if device_type == "cuda":
        return torch.is_autocast_enabled()
    return device_type == "cpu" and torch.is_autocast_cpu_enabled()


def trains_weights(settings: Dict[str, Any], is_train: bool) -> bool:
    """Whether a forward pass runs the encoder for training (graph, dropout):
    in training, where its weights can move. Not where it is not `trainable`,
    nor at a learning-rate scale of 0: a copy that replaced a listener of a
    component with `encoder_lr_scale = 0` would otherwise train its heads on
    dropout-noised features and pay for a backward pass that moves nothing,
    where the component itself runs its encoder frozen."""
    return is_train and bool(settings["trainable"]) and settings.get(LR_SCALE, 1.0) != 0


def run_encoder(
    model: Model, shim: PyTorchShim, embed: EmbedFn, docs: List[Doc], *, train_weights: bool
) -> Tuple[List[DocLayers], Callable[[List[DocLayers]], List[Doc]]]:
    """Outputs per doc, and a backprop that updates the encoder's gradients.

    train_weights: False for a frozen encoder (inference only; the gradient
        stops here).
    """
    if isinstance(shim, EncoderShim):
        shim.in_this_process()
    if not train_weights:
        outputs = embed(docs, False)
        return [cast(DocLayers, torch2xp(t, ops=model.ops)) for t in outputs], _no_gradient

    tensors = embed(docs, True)
    Y = [cast(DocLayers, torch2xp(t.detach(), ops=model.ops)) for t in tensors]

    def backprop(dY: List[DocLayers]) -> List[Doc]:
        pairs = [(t, xp2torch(dy, device=t.device)) for t, dy in zip(tensors, dY) if t.requires_grad]
        if not pairs:
            return []
        # The backward pass runs in the caller's thread state: under its
        # autocast, the gradients' matmuls would run in bf16 or fp16; under its
        # inference mode, the `.grad`s made were inference tensors, and the
        # next update outside it failed in torch, adding to them.
        with autograd_on(), callers_autocast_off(pairs[0][0].device.type):
            _backward(shim, pairs)
        return []

    return Y, backprop


def _backward(shim: PyTorchShim, pairs: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Backpropagate each (output, its gradient) pair into the encoder's `.grad`s."""
    scaler = shim._grad_scaler
    if not scaler._enabled:  # (thinc has no public switch; disabled: no loss scaling, off GPU)
        torch.autograd.backward([t for t, _ in pairs], grad_tensors=[g for _, g in pairs])
        return
    # Loss scaling (fp16 on GPU): this batch's gradients are unscaled on
    # their own before they join `.grad`. Unscaling `.grad` itself would
    # divide the gradients that earlier batches left there (gradient
    # accumulation) by the scale once more. On overflow finish_update skips
    # the step and clears them all.
    params = [p for p in shim._model.parameters() if p.requires_grad]
    grads = torch.autograd.grad([t for t, _ in pairs], params,
                                grad_outputs=scaler.scale([g for _, g in pairs], inplace=False), allow_unused=True)
    found = [(p, g) for p, g in zip(params, grads) if g is not None]
    if not scaler.unscale([g for _, g in found]):
        for param, grad in found:
            param.grad = grad if param.grad is None else param.grad.add_(grad)


def _no_gradient(dY: List[DocLayers]) -> List[Doc]:
    return []


class EncoderShim(PyTorchShim, metaclass=ABCMeta):
    """What the component and its helpers ask of an encoder's shim (`BertShim`, `ElmoShim`).

    It holds the encoder's settings (the config's; never its saved bytes') and,
    once loaded (`initialize`, `from_bytes`, `load_dir`), its weights. It exists
    before any weights are loaded, and whatever needs them raises until then,
    except `loaded`, `layers` and `features`. Pickled as its settings and its
    `to_bytes` (`unpickle_shim`); each shim deep-copies itself in memory.
    """

    #: The factory of the component the encoder is made for, as its errors name it.
    component: str = ""
    #: The key of the shim's bytes (`to_bytes`) that holds its model files.
    FILES_KEY: ClassVar[str]
    #: How many times weights were loaded into it (`weights_loaded`): its
    #: component's own loads, and loads past it (thinc's `Model.from_bytes` on
    #: the component's model, as spaCy's `[initialize] init_tok2vec` loads what
    #: `spacy pretrain` wrote), which the component tells by this count.
    loads: int = 0

    def __init__(self, settings: Dict[str, Any], **kwargs: Any) -> None:
        super().__init__(None, **kwargs)
        #: The encoder's settings, as the config gives them (`grad_scale.with_lr_scale`
        #: adds a copy's `LR_SCALE`).
        self.settings = settings
        #: The process the shim was made in (unpickled, copied) or last ran in (`in_this_process`).
        self._pid = os.getpid()

    def __reduce__(self) -> Tuple[Any, ...]:
        return unpickle_shim, (type(self), self.settings, self.to_bytes() if self.loaded else None)

    def to_device(self, device_type: str, device_id: int) -> None:
        # Outside the caller's inference mode: moved inside it (`to_gpu()`
        # under `torch.inference_mode()`), the weights would be made anew as
        # inference tensors, which can never train (`loading_weights`).
        with loading_weights():
            super().to_device(device_type, device_id)

    def finish_update(self, optimizer: Any) -> None:
        """thinc's step (`PyTorchShim.finish_update`), with each weight written
        back in place.

        thinc's sets `weight.data = xp2torch(stepped)`, where `stepped` is the
        array the optimizer updated in place: a view of the weight's own
        memory (numpy over its CPU tensor, cupy over DLPack). The new tensor
        then holds that array, which holds the tensor before it, and so on: a
        chain that grows by a tensor and an array per weight per step (no
        data, about 840 bytes; for BERT-base's 199 weights 165 KB a step, 3.3
        GB over `spacy train`'s 20,000) and is never freed while the model
        lives. The optimizer updates the weight's memory itself where it is
        given a view of it; what it returns otherwise (a copy: thinc copies
        from a device that is neither the CPU nor CUDA, such as MPS) is
        copied in."""
        scaler = self._grad_scaler
        for name, weight in cast(torch.nn.Module, self._model).named_parameters():
            if weight.grad is None:
                continue
            if not scaler.found_inf:  # (an overflowed fp16 step is skipped)
                stepped, _ = optimizer((self.id, name), torch2xp(weight.data), torch2xp(weight.grad))
                if not _is_memory_of(stepped, weight):
                    with torch.no_grad():
                        weight.data.copy_(xp2torch(stepped, device=weight.device))
            weight.grad.zero_()
        scaler.update()

    @abstractmethod
    def check_settings(self) -> None:
        """Raise for a setting that is wrong whatever the weights (a `SettingError`
        naming the encoder's component, which `named_errors` renames)."""

    @property
    @abstractmethod
    def loaded(self) -> bool:
        """Whether weights are loaded."""

    @property
    @abstractmethod
    def layers(self) -> Sequence[int]:
        """The selected layers, as indices into the loaded model's (empty until loaded)."""

    @property
    @abstractmethod
    def n_states(self) -> int:
        """How many layers the loaded model gives (its token layer included): what `layers` index."""

    @property
    def features(self) -> Dict[str, Any]:
        """The settings besides the layers that shape the vectors, resolved (`encoder_features`);
        {} until loaded, and for an encoder that has none."""
        return {}

    @abstractmethod
    def dims(self) -> Dict[str, int]:
        """The thinc model's dims the loaded weights give (`set_loaded_dims`)."""

    @abstractmethod
    def save_dir(self, directory: Path) -> None:
        """Write the loaded model's files into `directory` (a saved pipeline's model folder)."""

    @abstractmethod
    def load_saved(self, directory: Path, name: str, setting: str) -> None:
        """Load the model files `save_dir` wrote, with errors in them naming
        `[name] setting` (`saved_as`)."""

    def weights_loaded(self) -> None:
        """Count a load of weights (`loads`): each shim calls it once it holds them."""
        self.loads += 1

    @abstractmethod
    def saved_files_problem(self, files: Any) -> str:
        """What is wrong with the model files found in saved bytes (`FILES_KEY`),
        "" where nothing is: the first check of `from_bytes`, before they are unpacked."""

    def load_dir(self, directory: Path) -> None:
        """Load the model files `save_dir` wrote: a saved pipeline's model folder,
        whose config's file or model name is not read (a copy's folder is only
        ever its saved bytes, unpacked)."""
        self.load_saved(Path(directory), *saved_as(self.component, self.settings))

    def to_bytes(self) -> bytes:
        """The files `save_dir` writes, with the layers and features they are saved
        for (checked on load: `check_saved_layers`, `check_saved_features`)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_dir(Path(tmp))
            files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
        return srsly.msgpack_dumps({self.FILES_KEY: files, SAVED_LAYERS: list(self.layers),
                                    SAVED_FEATURES: self.features})

    def from_bytes(self, bytes_data: bytes) -> "EncoderShim":
        # thinc's `Model.from_bytes` comes here past any component (a listening
        # component's copy of the encoder, loaded with its pipeline's bytes): in
        # a forked process, the checks of the loaded weights run torch too.
        self.in_this_process()
        msg = srsly.msgpack_loads(bytes_data)
        name, setting = saved_as(self.component, self.settings)
        with named_as_loaded(self.settings):
            files = msg.get(self.FILES_KEY) if isinstance(msg, dict) else None
            problem = self.saved_files_problem(files)
            if problem:
                raise SettingError(f"[{name}] {setting}: {problem}")
            checked = cast(Dict[str, bytes], files)
            with unpacked(checked, name, setting=setting, copy=is_copy(self.settings)) as directory:
                self.load_saved(directory, name, setting)
        check_saved_layers(self.component, self.settings, msg.get(SAVED_LAYERS), self.layers)
        if is_copy(self.settings):  # (a component checks its own, where something reads them)
            check_saved_features(COPY_NAME, msg.get(SAVED_FEATURES), self.features, setting_prefix=COPY_BLOCK,
                                 trained="the component that nlp.replace_listeners gave this copy of the encoder")
        return self

    @abstractmethod
    def cache_identity(self) -> str:
        """What the output depends on besides the settings and the weights (the feature cache's key)."""

    @abstractmethod
    def identity_fields(self) -> Dict[str, str]:
        """What the outputs' signature (`pipeline.signature`) takes from the loaded model besides its weights."""

    def in_this_process(self) -> None:
        """Before the encoder runs: in a process forked since the shim was made
        or last ran (`nlp.pipe(n_process=...)`), one torch thread, and the
        shim's own locks made anew (`after_fork`), as the component does
        (`ContextualEmbedder._after_fork`). Here too for the copy of the
        encoder that `nlp.replace_listeners` put in a listening component,
        which no component runs before: in a pipeline without the embedder,
        its forward pass was torch's first in the worker, and there, with the
        parent's thread pool started, the worker hung for ever. (Unpickled,
        in a spawned worker, the shim is made there: threads left alone.)"""
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            torch.set_num_threads(1)
            self.after_fork()

    def after_fork(self) -> None:
        """In a forked process: make the shim's own locks anew (a fork copies
        them as other threads of the parent held them)."""

    def options_digest(self) -> Optional[str]:
        """What else the loaded model folder holds that shapes every vector, by
        content (ELMo's options file), for a saved pipeline's cfg
        (`pipeline.signature.saved_options_digest`); None where the encoder has none."""
        return None

    def probe_record(self) -> Optional[Dict[str, Any]]:
        """What the loaded model folder computes, for a saved pipeline's cfg
        (`pipeline.saved.check_saved_probe`); None where the encoder records none."""
        return None


def encoder_shim(model: Model) -> Optional[EncoderShim]:
    """The first encoder shim of `model`'s nodes; None for an encoder without
    one (`TrfEncoder` pools another component's outputs)."""
    for node in model.walk():
        for shim in node.shims:
            if isinstance(shim, EncoderShim):
                return shim
    return None


def drop_gradients(model: Model) -> None:
    """Forget the gradients accumulated in `model`: thinc's of every node
    (zeroed: thinc has no way to remove one, and keeps a zeroed gradient after
    each step) and those of the torch weights of its encoder shims (a load
    gives a new module, without any; one that keeps the module, `from_disk`
    excluding its model folder, drops them too, as it drops the combiner's)."""
    for node in model.walk():
        for name in node.grad_names:
            grad = node.get_grad(name)
            node.set_grad(name, node.ops.alloc(grad.shape, dtype=grad.dtype))
        for shim in node.shims:
            if isinstance(shim, EncoderShim) and shim._model is not None:
                for weight in shim._model.parameters():
                    weight.grad = None


def selected_layers(encoder: Model) -> Optional[List[int]]:
    """The encoder layers the component combines; None where that is not known
    (weights not loaded). BERT and ELMo give non-negative indices, resolved
    against the loaded model. An upstream transformer's depth is known only
    from its outputs, so `ctxembed_from_trf` gives its setting as written:
    `[-1]` and `[12]` then count as different layers (a load is refused
    where they would be the same), but `[-1]` edited to `[-2]` is never
    taken for it."""
    shim = encoder_shim(encoder)
    if shim is not None:  # (BERT, ELMo: resolved against the loaded model)
        resolved = shim.layers
        return [int(i) for i in resolved] if resolved else None
    settings = config_value(encoder.attrs.get("settings"))
    layers = settings.get("layers") if isinstance(settings, dict) else None
    if isinstance(layers, list) and layers and all(is_int(i) for i in layers):
        return list(layers)
    return None


def encoder_features(encoder: Model) -> Dict[str, Any]:
    """The settings besides the layers that shape the vectors, as the loaded
    encoder resolves them: BERT's pooling and windows (`window = null` is the
    model's limit), `ctxembed_from_trf`'s pooling (its windows are its
    upstream's). {} for ELMo, which has none, and for weights not loaded."""
    shim = encoder_shim(encoder)
    if shim is not None:
        return dict(shim.features)
    settings = config_value(encoder.attrs.get("settings"))
    if isinstance(settings, dict) and isinstance(settings.get("pooling"), str):
        return {"pooling": settings["pooling"]}
    return {}


class EncoderNode(Model):
    """An encoder's thinc node (BERT's, ELMo's). A saved model's bytes set its
    layer count (`nL`) before its shim loads and checks the layers they were
    saved for (`check_saved_layers`): a count changed in the config since (a
    copy's `embedder.encoder.layers` in a listening component) failed there as
    thinc's "Attempt to change dimension", naming neither the component nor the
    setting. (thinc's `copy` makes a plain Model, which fails as before.)"""

    def set_dim(self, name: str, value: int, *, force: bool = False) -> None:
        current, shim = self._dims.get(name), encoder_shim(self)
        if name == "nL" and not force and current is not None and value != current and shim is not None:
            raise _saved_for_other_layers(shim.component, shim.settings, f"{value} layers", current)
        super().set_dim(name, value, force=force)


ShimT = TypeVar("ShimT", bound=EncoderShim)


def unpickle_shim(cls: Type[ShimT], settings: Dict[str, Any], data: Optional[bytes]) -> ShimT:
    """Rebuild a pickled encoder shim from its settings and its `to_bytes` (None: no weights yet).

    The shims pickle as what they serialize, not as their attributes: their
    locks, compiled steps and quantized copies are rebuilt, not copied.
    """
    shim = cls(settings)
    if data is not None:
        shim.from_bytes(data)
    return shim


def set_loaded_dims(model: Model) -> None:
    """The encoder's width (`nO`) and layer count (`nL`), from the weights its
    shim holds now (after `init` or a load; an encoder without one has none to give).
    Set by force: a load may bring another model than the one first initialized.
    """
    shim = encoder_shim(model)
    if shim is not None:
        for dim, value in shim.dims().items():
            model.set_dim(dim, value, force=True)


def check_saved_layers(component: str, settings: Dict[str, Any], saved: Any, current: Sequence[int]) -> None:
    """A shim's `from_bytes`, after loading: the layers it was saved for (`SAVED_LAYERS`) must
    be the ones the config selects now, resolved against the loaded model (`-1` and the
    top layer's index are the same). A copy that replaced a listener is loaded by the
    downstream component, whose weights were trained on those layers, and which checks
    nothing of them. Bytes of earlier versions record none: not checked."""
    current = [int(i) for i in current]
    if saved is None or saved == current:
        return
    raise _saved_for_other_layers(component, settings, f"layers {saved}", current)


def _saved_for_other_layers(component: str, settings: Dict[str, Any], saved: str, current: Any) -> SettingError:
    name, block = checked_as(component, settings)
    return bad_setting(name, f"{block}layers", settings["layers"],
                       f"the encoder was saved for {saved} (the weights trained on top of this encoder are for "
                       f"those), but the config's layers select {current}: put back the layers it was saved "
                       "with, or train again")


def staged(array: numpy.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor, pinned when it is bound for a CUDA device, so
    that its `.to(device, non_blocking=True)` need not wait for the device."""
    tensor = torch.from_numpy(array)
    return tensor.pin_memory() if device.type == "cuda" else tensor


def evenly_sampled(tensor: torch.Tensor, k: int) -> numpy.ndarray:
    """`k` values evenly spaced over the flattened tensor, first and last included, as float64
    (all of them where it has fewer): what a weights fingerprint or a saved probe records."""
    flat = tensor.detach().reshape(-1)
    n = flat.numel()
    if not n:
        return numpy.zeros(0, dtype="float64")
    k = min(n, k)
    # In integers: float32 positions (torch.linspace) are not exact beyond 2**24
    # elements, and BERT-base's word embeddings have 23M.
    index = torch.arange(k, dtype=torch.int64, device=flat.device) * (n - 1) // max(k - 1, 1)
    return flat[index].double().cpu().numpy()


def _is_memory_of(array: Any, tensor: torch.Tensor) -> bool:
    """Whether `array` (numpy or cupy) is `tensor`'s own memory, element for
    element: the optimizer stepped the weight in place (`EncoderShim.finish_update`)."""
    size = tensor.element_size()
    if tuple(array.shape) != tuple(tensor.shape) or array.dtype.itemsize != size:
        return False
    if tuple(array.strides) != tuple(stride * size for stride in tensor.stride()):
        return False
    pointer = array.__array_interface__["data"][0] if isinstance(array, numpy.ndarray) else array.data.ptr
    return bool(pointer == tensor.data_ptr())
