"""Named type aliases shared by the models, layers and pipeline components."""
from typing import List, Tuple

from spacy.tokens import Doc
from thinc.api import Model
from thinc.types import Floats2d, Floats3d

# The settings are typed `str` in the architectures and checked against these
# tuples, so that an error names the setting and the bad value.

#: How the wordpieces of one token become one vector per layer.
POOLING_MODES: Tuple[str, ...] = ("mean", "first", "last", "max")
#: How the selected layers become one vector per token (the v1 `combine` setting).
COMBINE_MODES: Tuple[str, ...] = ("mean", "concat", "scalar_mix")
#: Numeric precision of the encoder's forward pass: exact fp32 (the default),
#: tf32 (fp32 with TF32 matmuls on CUDA; exact fp32 on CPU), fp16/bf16
#: autocast (GPU), or int8 dynamic quantization (CPU).
PRECISIONS: Tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16", "int8")

#: Per doc, the selected layers pooled to tokens: (n_layers, n_tokens, width).
DocLayers = Floats3d
#: Per doc, one combined vector per token: (n_tokens, width).
DocVectors = Floats2d

#: An encoder: docs in, per-doc layer stacks out.
EncoderModel = Model[List[Doc], List[DocLayers]]
#: A combiner: per-doc layer stacks in, per-doc token vectors out.
CombinerModel = Model[List[DocLayers], List[DocVectors]]
#: A component's whole model, chain(encoder, combiner): docs in, vectors out.
EmbedderModel = Model[List[Doc], List[DocVectors]]
