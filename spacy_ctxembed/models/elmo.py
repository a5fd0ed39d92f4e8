"""`spacy-ctxembed.ElmoEmbedder.v1`: ELMo on the released weight files, as a Thinc model.

docs -> sentences (the doc's own boundaries, else the whole doc), whitespace
tokens left out -> length-sorted batches across docs -> character CNN (once per
distinct word in a batch) + biLSTM -> per doc, an array
(n_layers, n_tokens, 2 * projection_dim) on the current device, with zero rows
for whitespace tokens. Layer 0 is the token layer duplicated; 1 and 2 are the
biLSTM layers, [forward; backward].
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, cast

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, PyTorchShim, torch2xp

from ..batching import batches_by_budget
from ..errors import bad_setting, check_positive
from ..settings import normalize_layers
from ..types import EmbedderModel
from .elmo_chars import MAX_CHARS, sentence_char_ids
from .elmo_net import ElmoBiLm
from .elmo_weights import (
    COMPONENT,
    OPTIONS_FILE,
    WEIGHTS_FILE,
    ElmoOptions,
    read_options,
    read_weights,
    write_files,
)


@registry.architectures("spacy-ctxembed.ElmoEmbedder.v1")
def ElmoEmbedder(
    *,
    options_file: Optional[str] = None,
    weight_file: Optional[str] = None,
    max_batch_items: int = 4096,
) -> EmbedderModel:
    """ELMo's three layers per token from `*_options.json` + `*_weights.hdf5`.

    max_batch_items: padded tokens per biLM batch.
    """
    check_positive(COMPONENT, "max_batch_items", max_batch_items)
    return Model(
        "ctxembed-elmo",
        forward,
        init=init,
        dims={"nO": None},
        attrs={
            "options_file": options_file,
            "weight_file": weight_file,
            "max_batch_items": max_batch_items,
            "layers": (0, 1, 2),
            "pooling": None,
            "source_dir": None,
        },
    )


def forward(model: EmbedderModel, docs: List[Doc], is_train: bool):
    shim = cast(ElmoShim, model.shims[0])
    outputs = shim.embed(docs)
    return [torch2xp(layers, ops=model.ops) for layers in outputs], lambda d_outputs: []


def init(model: EmbedderModel, X: Optional[List[Doc]] = None, Y=None) -> None:
    source_dir = model.attrs["source_dir"]
    if source_dir is not None:
        options_path, weights_path = Path(source_dir) / OPTIONS_FILE, Path(source_dir) / WEIGHTS_FILE
    else:
        for setting in ("options_file", "weight_file"):
            if not model.attrs[setting]:
                raise bad_setting(COMPONENT, setting, model.attrs[setting],
                                  "set it to the path of the released ELMo file")
        options_path, weights_path = Path(model.attrs["options_file"]), Path(model.attrs["weight_file"])
    options = read_options(options_path)
    weights = read_weights(weights_path, options)
    layers = normalize_layers(COMPONENT, model.attrs["layers"], 1 + options.n_layers)
    model.shims[:] = [ElmoShim(options, weights, layers=layers, max_batch_items=model.attrs["max_batch_items"])]
    model.set_dim("nO", options.output_width, force=True)


@dataclass(frozen=True)
class _Sentence:
    doc: int
    token_ids: numpy.ndarray  # indices of the doc's non-whitespace tokens in this sentence
    char_ids: numpy.ndarray  # (len + 2, 50), wrapped in <S> ... </S>


class ElmoShim(PyTorchShim):
    """Holds the biLM, moved to the current device."""

    def __init__(self, options: ElmoOptions, weights: Dict[str, numpy.ndarray], *,
                 layers: Tuple[int, ...], max_batch_items: int):
        # The biLM takes the arrays over (and empties `weights`): held once.
        super().__init__(ElmoBiLm(options, weights).eval())
        self.options = options
        self.layers = layers
        self.max_batch_items = max_batch_items

    def save(self, directory: Path) -> None:
        write_files(Path(directory), self.options, self._model.export_weights())

    @property
    def device(self) -> torch.device:
        return next(self._model.buffers()).device

    def embed(self, docs: Sequence[Doc]) -> List[torch.Tensor]:
        device = self.device
        width = self.options.output_width
        outputs = [torch.zeros((len(self.layers), len(doc), width), device=device) for doc in docs]
        sentences = [s for d, doc in enumerate(docs) for s in _sentences(d, doc)]
        # Similar lengths together keep the padding small.
        sentences.sort(key=lambda s: len(s.token_ids), reverse=True)
        with torch.inference_mode():
            for batch in batches_by_budget(sentences, self.max_batch_items, lambda s: len(s.char_ids)):
                lengths = torch.tensor([len(s.char_ids) for s in batch], device=device)
                char_ids = numpy.zeros((len(batch), int(lengths.max()), MAX_CHARS), dtype="int64")
                for row, sentence in enumerate(batch):
                    char_ids[row, : len(sentence.char_ids)] = sentence.char_ids
                layers = self._model(torch.from_numpy(char_ids).to(device), lengths)
                selected = torch.stack([layers[i] for i in self.layers])  # (n_layers, batch, time, width)
                for row, sentence in enumerate(batch):
                    n = len(sentence.token_ids)
                    target = torch.as_tensor(sentence.token_ids, device=device)
                    # Positions 1..n: the words, without <S> and </S>.
                    outputs[sentence.doc][:, target] = selected[:, row, 1 : n + 1]
        return outputs


def _sentences(doc_index: int, doc: Doc) -> Iterator[_Sentence]:
    """Each sentence on its own when the doc has boundaries, else the whole doc."""
    spans = doc.sents if doc.has_annotation("SENT_START") else [doc[:]]
    for span in spans:
        tokens = [t for t in span if not t.is_space]
        if tokens:
            yield _Sentence(
                doc_index,
                numpy.array([t.i for t in tokens], dtype="int64"),
                sentence_char_ids(t.text for t in tokens),
            )
