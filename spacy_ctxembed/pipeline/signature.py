"""What makes a component's outputs: the signature stored with each of them.

Outputs of one component name made by different models must never be mixed
(`Doc.from_docs`) or compared (`.similarity()`). The signature says what made
them, as "key=value; ...": the encoder's kind, what shapes its outputs
besides its weights (BERT's tokenizer and config, by content, and whether
it runs quantized; ELMo's options, by content), the layers it selects, the
pooling, the combiner, and fingerprints of the encoder's weights and of all
the weights (the combiner's too). Not the config's `name` or file paths: they
would take a fine-tuned model for its base (both name the base in their
config), a reloaded component for the one before, and one model named two
ways (the embedded default and its folder) for two. Signatures written by
earlier versions (with those paths) are compared on the fields both have.
"""
import hashlib
import itertools
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy
import torch
from thinc.api import Model

from ..models.torch_bridge import encoder_shim, evenly_sampled, selected_layers
from ..outputs import ENCODER_WEIGHTS
from ..settings import config_value

#: Values sampled per weight tensor for the fingerprint: evenly spaced over it.
#: Training moves nearly every weight, so a sample tells trained weights from
#: their start; reading them all would cost a pass over the model at every
#: load and step (BERT-base: 440 MB).
SAMPLES_PER_TENSOR = 64


def output_signature(model: Model) -> str:
    """The signature of what the component's model (`Embedder.v2`) makes.

    Deterministic: docs from the worker processes of one pipeline
    (`nlp.pipe(n_process=2)`) and from a pipeline saved and loaded again
    match. `ctxembed_from_trf` owns no weights (its upstream transformer
    does), so its signature has its settings and its combiner's weights only.
    """
    encoder, combiner = model.get_ref("encoder"), model.get_ref("combiner")
    settings: Dict[str, Any] = {}
    fields: Dict[str, Any] = {"encoder": encoder.name}
    shim = encoder_shim(encoder)
    if shim is not None:  # BERT, ELMo
        settings.update(shim.settings)
        fields.update(shim.identity_fields())
    settings.update(config_value(encoder.attrs.get("settings")) or {})  # ctxembed_from_trf
    fields["layers"] = selected_layers(encoder) or settings.get("layers")
    if "pooling" in settings:
        fields["pooling"] = settings["pooling"]
    fields["combiner"] = combiner.name
    # The encoder's alone too: a listener that mixes the layers reads them, not
    # the combined vectors, and is held to these (`ENCODER_WEIGHTS`). Before
    # "weights", which stays last as earlier versions wrote it.
    fields[ENCODER_WEIGHTS], fields["weights"] = _fingerprints(model, encoder)
    return "; ".join(f"{key}={value}" for key, value in fields.items())


def weights_fingerprint(model: Model) -> str:
    """A digest of `model`'s weights: every thinc parameter (the combiner's
    few), and an even sample of each tensor of its PyTorch modules."""
    digest = hashlib.blake2b(digest_size=8)
    for node in model.walk():
        for chunk in _weight_chunks(node):
            digest.update(chunk)
    return digest.hexdigest()


def _fingerprints(model: Model, part: Model) -> Tuple[str, str]:
    """(A digest of the weights of `part`, a node of `model`; `weights_fingerprint(model)`),
    in one pass: each weight is sampled once (a copy off the GPU each)."""
    within = {id(node) for node in part.walk()}
    of_part, whole = hashlib.blake2b(digest_size=8), hashlib.blake2b(digest_size=8)
    for node in model.walk():
        for chunk in _weight_chunks(node):
            whole.update(chunk)
            if id(node) in within:
                of_part.update(chunk)
    return of_part.hexdigest(), whole.hexdigest()


def _weight_chunks(node: Model) -> Iterator[bytes]:
    """What a fingerprint reads of one node's own weights: each tensor of its
    PyTorch modules by name, shape, dtype and an even sample, then each thinc
    parameter by name and value."""
    for module in _torch_modules(node):
        for name, tensor in module.state_dict().items():
            yield f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode()
            yield _sampled(tensor).tobytes()
    for name in node.param_names:
        if node.has_param(name):
            yield name.encode()
            yield numpy.ascontiguousarray(node.ops.to_numpy(node.get_param(name))).tobytes()


def saved_weights_fingerprint(model: Model) -> str:
    """A digest of the weight values of `model`'s PyTorch modules, for a saved
    pipeline to tell its own model folder from another's (its `cfg` records it).

    Unlike `weights_fingerprint` it reads what a save writes, by value only:
    not the tensors' names or order, nor integer buffers (BERT's position ids,
    saved by transformers 4.30 and not after), nor buffers that are never
    saved but computed when the model is built (rotary `inv_freq`, whose
    number and shape change with the version of transformers): a pipeline
    saved under one version must load under the next. Each floating-point
    parameter or saved buffer (ELMo keeps frozen weights as buffers) gives its
    shape and an even sample of its values.
    """
    digests = []
    for node in model.walk():
        for module in _torch_modules(node):
            for tensor in itertools.chain(module.parameters(), _saved_buffers(module)):
                if tensor.is_floating_point():
                    digest = hashlib.blake2b(repr(tuple(tensor.shape)).encode(), digest_size=8)
                    digest.update(_sampled(tensor).tobytes())
                    digests.append(digest.digest())
    return hashlib.blake2b(b"".join(sorted(digests)), digest_size=8).hexdigest()


def saved_options_digest(model: Model) -> Optional[str]:
    """What else the model folder holds that shapes every vector: ELMo's
    options (clipping, activation, skip connections), by content
    (`ElmoOptions.digest`), for a saved pipeline to tell its own options file
    from an edited one. None for BERT: its tokenizer's definition, as the
    tokenizers library writes it, changes with that library's version, and a
    pipeline saved under one version must load under the next."""
    shim = encoder_shim(model)
    return shim.options_digest() if shim is not None else None


def saved_probe(model: Model) -> Optional[Dict[str, Any]]:
    """What a Hugging Face encoder's model folder computes (`hf_probe.probe_record`),
    for a saved pipeline to tell its own config.json and tokenizer from edited
    ones by what they do (their text changes with the library's version, see
    `saved_options_digest`). None for ELMo (its options are digested) and for
    an encoder without weights of its own."""
    shim = encoder_shim(model)
    return shim.probe_record() if shim is not None and shim.loaded else None


def _torch_modules(node: Model) -> Iterator[torch.nn.Module]:
    """The PyTorch modules of a thinc node's shims (none before weights are loaded)."""
    for shim in node.shims:
        module = shim._model
        if isinstance(module, torch.nn.Module):
            yield module


def _saved_buffers(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    """The buffers `state_dict` holds (persistent ones), each once."""
    seen = set()
    for sub in module.modules():
        for name, buffer in sub.named_buffers(recurse=False):
            if name not in sub._non_persistent_buffers_set and id(buffer) not in seen:
                seen.add(id(buffer))
                yield buffer


def _sampled(tensor: torch.Tensor) -> numpy.ndarray:
    """`SAMPLES_PER_TENSOR` values evenly spaced over the flattened tensor (`evenly_sampled`)."""
    return evenly_sampled(tensor, SAMPLES_PER_TENSOR)
