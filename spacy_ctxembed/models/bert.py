"""`spacy-ctxembed.BertEncoder.v2`: a Hugging Face encoder as a Thinc layer.

docs -> per doc, the selected hidden states pooled to spaCy tokens:
(n_layers, n_tokens, width). The PyTorch side (tokenization, windows,
batching, pooling) is in `bert_runner.py`; this module is the Thinc layer:
its constructor, `forward` and `init`, and the shim that holds the runner
(`BertShim`: the weights saved and loaded as a Hugging Face directory,
safetensors and no pickles, and optimizer updates), as `elmo.py` is ELMo's.

Trained when its component is trained (not frozen), `trainable = true`, its
`encoder_lr_scale` is not 0 and a listener sends it a gradient
(`ContextualEmbedder._encoder_trains`): the gradient flows back through
pooling into the encoder under torch autograd. Otherwise it runs under
`torch.inference_mode`.
"""
import contextlib
import copy
import json
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import PyTorchGradScaler, get_torch_default_device

from ..settings import layer_count, layers_as_given
from ..types import DocLayers, EncoderModel
from .bert_runner import COMPONENT, BertRunner, check_precision_device, check_settings, config_positions, training_copy
from .hf_loading import HFEncoder, load_encoder, resolve_model_dir
from .hf_probe import probe_record
from .torch_bridge import (
    EncoderNode,
    EncoderShim,
    averaged_weights,
    loading_weights,
    named_as_loaded,
    run_encoder,
    scaled_optimizer,
    set_loaded_dims,
    swaps_weights,
    trains_weights,
)


@registry.architectures("spacy-ctxembed.BertEncoder.v2")
def BertEncoder(
    *,
    name: Optional[str] = None,
    layers: Sequence[int] = (-1,),
    pooling: str = "mean",
    window: Optional[int] = None,
    stride: Optional[int] = None,
    max_batch_items: Optional[int] = None,
    precision: str = "fp32",
    trainable: bool = True,
) -> EncoderModel:
    """The selected hidden states of a Hugging Face encoder, pooled to tokens.

    name: a local model directory or a hub name already in the local cache;
        None for the embedded all-MiniLM-L6-v2.
    layers: hidden-state indices: 0 = embedding output, 1..N = transformer
        layers, negative = from the top.
    pooling: how a token's wordpieces become one vector per layer.
    window: wordpieces per window, special tokens excluded; None for the most
        the model takes.
    stride: pieces between window starts; None for 3/4 of the window.
    max_batch_items: padded wordpieces per forward batch; None: 4096 on CPU,
        and on GPU as many as a quarter of the free device memory holds
        (bounded to 4096..65536).
    precision: "fp32" (exact); "tf32": fp32 with CUDA matmuls on TF32 tensor
        cores (exact fp32 on CPU); "fp16"/"bf16": autocast (mixed precision,
        for GPU; "fp16" on CPU is several times slower than "fp32", and warned
        of); "int8": dynamic quantization of the linear layers (CPU only).
    trainable: fine-tune the encoder when its component is trained.
    """
    settings = {
        "name": name,
        "layers": layers_as_given(layers),
        "pooling": pooling,
        "window": window,
        "stride": stride,
        "max_batch_items": max_batch_items,
        "precision": precision,
        "trainable": trainable,
    }
    return EncoderNode(
        "ctxembed-bert-encoder",
        forward,
        init=init,
        dims={"nO": None, "nL": layer_count(settings["layers"])},
        # The settings live in the shim only, so that bytes saved by another
        # version of the config can never override the config in use.
        shims=[BertShim(settings)],
    )


def forward(model: EncoderModel, docs: List[Doc], is_train: bool) -> Tuple[List[DocLayers], Callable]:
    shim = get_shim(model)
    runner = shim.get_runner()
    return run_encoder(model, shim, lambda d, grad: runner.embed(d, grad=grad), docs,
                       train_weights=trains_weights(shim.settings, is_train))


def init(model: EncoderModel, X: Optional[List[Doc]] = None, Y=None) -> None:
    """Load the pretrained weights `name` names, whatever the shim holds.

    Initializing starts from the config, as it does for spaCy's own
    components: on a loaded or fine-tuned pipeline it replaces the weights
    (and its combiner starts afresh beside them). A pipeline's own weights
    are read by `from_disk`/`from_bytes`, which set the dims without this.
    """
    shim = get_shim(model)
    with named_as_loaded(shim.settings), loading_weights():
        check_settings(shim.settings)
        name = shim.settings["name"]
        shim.load(load_encoder(resolve_model_dir(name, component=COMPONENT), component=COMPONENT))
    set_loaded_dims(model)


class BertShim(EncoderShim):
    """Holds a `BertRunner` for Thinc: weights in and out, optimizer updates.

    It exists before any weights are loaded (Thinc deserializes into the
    shims a model already has), and loads them in `initialize`, `from_bytes`
    or `load_dir`, never from a remembered path.
    """

    component = COMPONENT
    FILES_KEY = "hf_files"

    def __init__(self, settings: Dict[str, Any]) -> None:
        super().__init__(settings, grad_scaler=PyTorchGradScaler(enabled=False))
        self.runner: Optional[BertRunner] = None

    def check_settings(self) -> None:
        check_settings(self.settings)

    @property
    def device(self):
        return self.runner.device if self.runner is not None else get_torch_default_device()

    @property
    def loaded(self) -> bool:
        return self.runner is not None

    @property
    def layers(self) -> List[int]:
        """The selected hidden states, as indices into the loaded model's (empty until loaded)."""
        return list(self.runner.layers) if self.runner is not None else []

    @property
    def features(self) -> Dict[str, Any]:
        """The settings besides the layers that shape the vectors, resolved ({} until loaded)."""
        runner = self.runner
        return {} if runner is None else {"pooling": runner.pooling, "window": runner.window, "stride": runner.stride}

    def dims(self) -> Dict[str, int]:
        """The thinc model's dims the loaded weights give (`set_loaded_dims`)."""
        runner = self.get_runner()
        return {"nO": runner.width, "nL": len(runner.layers)}

    @property
    def n_states(self) -> int:
        """How many hidden states the loaded model has (embeddings included): what `layers` index."""
        return self.get_runner().encoder.n_hidden_states

    def load(self, encoder: HFEncoder) -> None:
        encoder.module.to(get_torch_default_device())
        runner = BertRunner(encoder, self.settings)
        self._model = encoder.module
        self.runner = runner
        self._scale_losses()
        self.weights_loaded()

    def to_device(self, device_type: str, device_id: int) -> None:
        if self._model is None:  # not loaded yet: it loads onto the current device (`load`)
            return
        runner = self.get_runner()  # (`load` sets it with the model)
        # Before anything moves: an int8 encoder moved to a GPU failed in torch.
        check_precision_device(runner.precision, device_type)
        super().to_device(device_type, device_id)
        # `.cuda()` moves each parameter in place but puts new buffer tensors in
        # its module's own table: the training copy, whose modules are other
        # objects, would keep the old ones (position ids on the old device);
        # the int8 copy is made again from the moved weights.
        runner.train_runner = training_copy(runner.runner)
        runner.weights_changed()
        if not self.settings["max_batch_items"]:  # the default budget is the device's (free memory on a GPU)
            runner.max_batch_items = runner.default_budget()
        self._scale_losses()

    def _scale_losses(self) -> None:
        """Loss scaling for fp16 training where the weights are on a GPU; bf16 and
        fp32 need none, and thinc's scaler takes CUDA tensors only. So it is
        decided by where the weights are, not by whether the machine has a GPU
        (an fp16 pipeline kept on the CPU of a GPU machine failed its first update)."""
        on_gpu = self._model is not None and next(self._model.parameters()).device.type == "cuda"
        self._grad_scaler = PyTorchGradScaler(enabled=self.settings["precision"] == "fp16" and on_gpu)
        if on_gpu:
            self._grad_scaler.to_(next(self._model.parameters()).device)

    def get_runner(self) -> BertRunner:
        if self.runner is None:
            raise ValueError(f"[{COMPONENT}] the encoder has no weights yet: call nlp.initialize() first")
        return self.runner

    def save_dir(self, directory: Path) -> None:
        """Write the encoder as a Hugging Face directory (safetensors weights)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.get_runner().encoder.save(directory)

    def load_saved(self, directory: Path, name: str, setting: str) -> None:
        with loading_weights():
            self.load(load_encoder(directory, component=name, setting=setting))

    def saved_files_problem(self, files: Any) -> str:
        return "" if isinstance(files, dict) and files else "the serialized encoder holds no model files"

    def finish_update(self, optimizer) -> None:
        super().finish_update(scaled_optimizer(optimizer, self.settings))
        if self.runner is not None:
            self.runner.weights_changed()

    @contextlib.contextmanager
    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        """As thinc's, with the averages under the keys its finish_update writes
        (see `averaged_weights`), and where the weights are swapped (and put
        back) the int8 copy is made again from the weights in force."""
        swapped = self.runner is not None and swaps_weights(self, params)
        try:
            with averaged_weights(self, params):
                if swapped:
                    self.get_runner().weights_changed()
                yield
        finally:
            if swapped:
                self.get_runner().weights_changed()

    def cache_identity(self) -> str:
        """What the output depends on besides the settings and the weights (the
        feature cache's key): the windows, layers, tokenizer and model config resolved at load."""
        runner = self.get_runner()
        return json.dumps([runner.window, runner.stride, list(runner.layers), runner.tokenizer_digest,
                           runner.config_digest])

    def after_fork(self) -> None:
        if self.runner is not None:  # (the int8 copy is made under a lock, on first use)
            self.runner._int8_lock = threading.Lock()

    def probe_record(self) -> Dict[str, Any]:
        """What the loaded model folder computes (`hf_probe.probe_record`), for a saved
        pipeline's cfg to tell its own config.json and tokenizer from edited ones."""
        encoder = self.get_runner().encoder
        return probe_record(encoder, max_length=config_positions(encoder) or 512)

    def identity_fields(self) -> Dict[str, str]:
        """What the outputs' signature (`pipeline.signature`) takes from the encoder
        besides its weights: its tokenizer and its config.json, by content (not
        the config's `name`: one model named two ways is one model; another
        activation or number of heads is another model), and whether it runs quantized
        (int8 vectors of the same weights are not fp32's: cosine 0.88 for the
        same token on MiniLM; fp16, bf16 and tf32 ones are the same model's,
        to their precision)."""
        runner = self.get_runner()
        return {"tokenizer": runner.tokenizer_digest, "config": runner.config_digest,
                "quantization": "int8" if runner.precision == "int8" else "none"}

    def __deepcopy__(self, memo: Dict[int, Any]) -> "BertShim":
        # Model.copy() (spaCy's replace_listeners) deep-copies shims. The int8
        # lock cannot be copied; the runner is rebuilt around the copied encoder.
        copied = BertShim(self.settings)
        if self.runner is not None:
            encoder = self.runner.encoder
            with loading_weights():
                copied.load(HFEncoder(module=copy.deepcopy(encoder.module, memo), tokenizer=encoder.tokenizer,
                                      config=encoder.config))
        return copied


def get_shim(model: EncoderModel) -> BertShim:
    return cast(BertShim, model.shims[0])


def get_runner(model: EncoderModel) -> BertRunner:
    return get_shim(model).get_runner()


