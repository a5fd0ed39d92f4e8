"""`spacy-ctxembed.BertEncoder.v2`: a Hugging Face encoder as a Thinc layer.

docs -> per doc, the selected hidden states pooled to spaCy tokens:
(n_layers, n_tokens, width). The PyTorch side (tokenization, windows,
batching, pooling) is in `bert_runner.py`; this module is the Thinc layer:
its constructor, `forward` and `init`.

Trained when its component is trained (not frozen) and `trainable = true`:
the gradient flows back through pooling into the encoder under torch
autograd. Otherwise it runs under `torch.inference_mode`.
"""
from typing import Callable, List, Optional, Sequence, Tuple, cast

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model

from ..settings import layer_count, layers_as_given
from ..types import DocLayers, EncoderModel
from .bert_runner import COMPONENT, BertRunner, BertShim, check_settings
from .hf_loading import HFEncoder, load_encoder, resolve_model_dir
from .torch_bridge import EncoderNode, named_as_loaded, run_encoder, set_loaded_dims, trains_weights


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
        for GPU); "int8": dynamic quantization of the linear layers (CPU only).
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
    with named_as_loaded(shim.settings):
        check_settings(shim.settings)
        name = shim.settings["name"]
        shim.load(load_encoder(resolve_model_dir(name, component=COMPONENT), component=COMPONENT))
    set_loaded_dims(model)


def get_shim(model: EncoderModel) -> BertShim:
    return cast(BertShim, model.shims[0])


def get_runner(model: EncoderModel) -> BertRunner:
    return get_shim(model).get_runner()


def get_encoder(model: Model) -> HFEncoder:
    """The loaded Hugging Face encoder of an embedder (or of its encoder layer)."""
    for node in model.walk():
        if node.name == "ctxembed-bert-encoder":
            return get_runner(node).encoder
    raise ValueError(f"[{COMPONENT}] no BERT encoder in model {model.name!r}")
