"""Independent reference computations for the tests, written plainly with loops.

Nothing here imports spacy_ctxembed: these are the yardsticks.
"""
import inspect

import numpy


def token_pieces(doc, offsets):
    """For each token, the indices of the pieces whose character span overlaps it;
    none for whitespace tokens (the documented contract: they have no vector)."""
    result = []
    for token in doc:
        start, end = token.idx, token.idx + len(token)
        overlapping = [p for p, (ps, pe) in enumerate(offsets) if pe > ps and ps < end and start < pe]
        result.append([] if token.is_space else overlapping)
    return result


def pool(states, pieces_per_token, mode):
    """states: (n_pieces, width) -> (n_tokens, width), zero for tokens without pieces."""
    out = numpy.zeros((len(pieces_per_token), states.shape[1]), dtype="float64")
    for t, pieces in enumerate(pieces_per_token):
        if not pieces:
            continue
        chosen = states[pieces]
        if mode == "mean":
            out[t] = chosen.mean(axis=0)
        elif mode == "first":
            out[t] = chosen[0]
        elif mode == "last":
            out[t] = chosen[-1]
        elif mode == "max":
            out[t] = chosen.max(axis=0)
    return out


def hf_hidden_states(tokenizer, model, text):
    """All hidden states of `transformers` on the text: (n_layers + 1, n_pieces, width),
    special tokens removed, plus each piece's character offsets."""
    import torch

    encoding = tokenizer(text, return_tensors="pt", return_offsets_mapping=True,
                         return_special_tokens_mask=True)
    offsets = encoding.pop("offset_mapping")[0].tolist()
    special = encoding.pop("special_tokens_mask")[0].bool()
    accepted = inspect.signature(model.forward).parameters  # DistilBERT takes no token types
    with torch.no_grad():
        output = model(**{k: v for k, v in encoding.items() if k in accepted}, output_hidden_states=True)
    keep = ~special
    states = numpy.stack([h[0][keep].double().numpy() for h in output.hidden_states])
    offsets = [o for o, s in zip(offsets, special.tolist()) if not s]
    return states, offsets
