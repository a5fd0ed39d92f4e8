"""`spacy-ctxembed.TrfPooler.v1`: pool an upstream spacy-transformers output.

Reads `doc._.trf_data` (written by spacy-transformers' `transformer`
component) and pools its wordpiece states to tokens through its own
alignment, `trf_data.align`, without running the transformer again.
"""
from typing import List, Optional, cast

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, torch2xp, xp2torch

from ..alignment import PieceAlignment
from ..errors import bad_setting
from ..pooling import pool_pieces
from ..settings import normalize_layers
from ..types import DocLayers, EmbedderModel

COMPONENT = "ctxembed_from_trf"


@registry.architectures("spacy-ctxembed.TrfPooler.v1")
def TrfPooler() -> EmbedderModel:
    return Model("ctxembed-trf-pooler", forward, attrs={"layers": (-1,), "pooling": "mean", "source_dir": None})


def forward(model: EmbedderModel, docs: List[Doc], is_train: bool):
    outputs = [_pool_doc(model, doc) for doc in docs]
    return outputs, lambda d_outputs: []


def _pool_doc(model: EmbedderModel, doc: Doc) -> DocLayers:
    if not Doc.has_extension("trf_data") or doc._.trf_data is None:
        raise ValueError(
            f"[{COMPONENT}] doc._.trf_data is missing: add a spacy-transformers "
            "'transformer' component before this one in the pipeline"
        )
    trf_data = doc._.trf_data
    output = trf_data.model_output
    states = _select_layers(model.attrs["layers"], output)
    n_layers = len(states)
    if states[0].size == 0:
        width = states[0].shape[-1] if states[0].ndim == 3 else 0
        return model.ops.alloc3f(n_layers, len(doc), width)
    width = states[0].shape[-1]
    # (n_spans, span_len, width) per layer -> (n_pieces, n_layers, width)
    flat = model.ops.xp.stack([s.reshape(-1, width) for s in states], axis=1)
    alignment = PieceAlignment.from_lengths(
        model.ops.to_numpy(trf_data.align.dataXd), model.ops.to_numpy(trf_data.align.lengths), flat.shape[0]
    )
    pooled = pool_pieces(xp2torch(flat), alignment, model.attrs["pooling"])
    return cast(DocLayers, torch2xp(pooled, ops=model.ops))


def _select_layers(layers, output) -> list:
    hidden_states: Optional[tuple] = output.get("hidden_states") if hasattr(output, "get") else None
    if hidden_states:
        return [hidden_states[i] for i in normalize_layers(COMPONENT, layers, len(hidden_states))]
    if list(layers) != [-1]:
        raise bad_setting(
            COMPONENT,
            "layers",
            list(layers),
            "the upstream transformer outputs only its last layer; use layers = [-1], or set "
            "output_hidden_states = true in its [model.transformer_config] block",
        )
    return [output.last_hidden_state]

