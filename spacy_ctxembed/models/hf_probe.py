"""What a Hugging Face model folder computes, recorded small enough for a saved
pipeline's cfg: the wordpieces of a probe text and a sample of every hidden
state the model gives for them.

A saved pipeline's weights are checked by fingerprint, but the folder's
other files shape every vector too: config.json (the attention heads, the
activation, the position embeddings) and the tokenizer's files (lowercasing,
accents, the vocabulary). A user who edits them gets other vectors under the
weights trained on the saved ones, with no error. Their text cannot be
compared: transformers and tokenizers write them otherwise from one version
to the next, and a pipeline saved under one version must load under the
next. What they do can: the probe's ids exactly, the states to float
rounding (`PROBE_TOLERANCE`). Edits that change nothing the model computes
(dropout rates, the `transformers_version` field) pass, as do those that
change it as little as rounding does.
"""
import hashlib
import json
from typing import Any, Dict, Optional

import numpy
import torch

from .hf_loading import HFEncoder
from .torch_bridge import evenly_sampled

#: Cased, accented and Chinese letters, digits, punctuation, a contraction:
#: an edited normalizer (lowercasing, accent stripping, Chinese characters
#: split apart) splits it otherwise.
PROBE_TEXT = "Zoë's naïve Café paid $3.50, ÉLAN-ish; 東京 wasn't near."
#: The tokenizer's edges, split by the tokenizer alone (too long for a tiny
#: model's positions): words of 100 and 101 letters (WordPiece's
#: `max_input_chars_per_word` makes a longer word its unknown token), a
#: character no vocabulary has (which unknown token), control characters
#: (the normalizer's `clean_text`) and a no-break space. Recorded since 0.2:
#: a record without it is not checked for it.
EDGE_TEXT = ("a" * 100 + " " + "b" * 101 + " \U0001fab8 \U000e0041 x\x07y z\x1bw \u00a0v \u200bu"
             " Tokenizationally")
#: Values recorded per hidden state, evenly spaced over its (pieces x width) values.
PROBE_SAMPLES = 16
#: States agree to this, |a - b| <= tolerance * (1 + |b|): far above the float32
#: rounding of one model on two devices or thread counts (1e-5), and above what
#: TF32 matmuls give (a GPU with them switched on, process-wide: 8e-4 on MiniLM,
#: more on deeper models), or what approximations leave that change vectors by
#: as little (GELU's tanh form, another LayerNorm epsilon: 1e-3); far below what
#: an edited config gives (relu for GELU, other attention heads, relative
#: positions: 0.38 to 1.6 on MiniLM).
PROBE_TOLERANCE = 2e-2


def probe_record(encoder: HFEncoder, *, max_length: int) -> Dict[str, Any]:
    """{"vocab": a digest of the tokenizer's vocabulary, "ids": the probe text's
    wordpieces (with a special token's text after it; the special tokens the
    tokenizer adds included, at most `max_length`: a tiny model's
    positions), "edge_ids": EDGE_TEXT's wordpieces, "states": PROBE_SAMPLES
    values of each hidden state}, from the
    model as loaded (in float32: the precision setting is applied per call)."""
    tokenizer = encoder.tokenizer
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    # A special token's text too: whether it is split like other text (`split_special_tokens`).
    special = getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None) or ""
    text = f"{PROBE_TEXT} {special}".strip()
    ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])[:max_length]
    module = encoder.module
    device = next(module.parameters()).device
    with torch.inference_mode():
        output = module(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    return {
        "vocab": hashlib.blake2b(json.dumps(vocab, ensure_ascii=False).encode("utf8"), digest_size=8).hexdigest(),
        "ids": [int(i) for i in ids],
        "edge_ids": [int(i) for i in tokenizer(EDGE_TEXT, add_special_tokens=False, verbose=False)["input_ids"]],
        "states": [evenly_sampled(state[0], PROBE_SAMPLES).tolist() for state in output.hidden_states],
    }


def probe_difference(saved: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """What the folder now does otherwise than it did when `saved` was recorded:
    "tokenizer", "model", or None where nothing differs (or `saved` is not a record)."""
    if not isinstance(saved, dict):
        return None
    if saved.get("vocab") != current["vocab"] or saved.get("ids") != current["ids"]:
        return "tokenizer"
    if "edge_ids" in saved and saved["edge_ids"] != current["edge_ids"]:
        return "tokenizer"
    try:
        states = numpy.asarray(saved.get("states"), dtype="float64")
    except (TypeError, ValueError):
        return "model"
    expected = numpy.asarray(current["states"], dtype="float64")
    if states.shape != expected.shape or not numpy.allclose(
            states, expected, rtol=PROBE_TOLERANCE, atol=PROBE_TOLERANCE) or not numpy.isfinite(states).all():
        return "model"
    return None
