"""`spacy-ctxembed.ElmoEncoder.v3`: ELMo on the released weight files, as a Thinc layer.

docs -> sentences (the doc's own boundaries, else the whole doc), whitespace
tokens left out -> length-sorted batches across docs -> character CNN (once per
distinct word in a batch) + biLSTM -> per doc, an array
(n_layers, n_tokens, 2 * projection_dim) on the current device, with zero rows
for whitespace tokens. Layer 0 is the token layer duplicated; 1 and 2 are the
biLSTM layers, [forward; backward].

The biLM is frozen unless `trainable = true`; either way, a mix on top of it
(a `ScalarMix` combiner, a listener's) trains with its component.
"""
import contextlib
import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, cast

import numpy
import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import get_torch_default_device

from ..batching import batches_by_budget, concat_ranges
from ..errors import bad_setting, check_bool, check_int
from ..settings import check_layers, layer_count, layers_as_given, normalize_layers, warn_repeated_layers
from ..types import DocLayers, EncoderModel
from .elmo_chars import MAX_CHARS, distinct_words, sentence_char_ids
from .elmo_net import ElmoBiLm, LstmStep, build_bilm, lstm_step
from .elmo_weights import (
    OPTIONS_FILE,
    WEIGHTS_FILE,
    ElmoOptions,
    read_options,
    read_weights,
    released_layout,
    write_files,
)
from .torch_bridge import (
    EncoderNode,
    EncoderShim,
    autograd_on,
    averaged_weights,
    callers_autocast_off,
    checked_as,
    loading_weights,
    named_as_loaded,
    run_encoder,
    scaled_optimizer,
    set_loaded_dims,
    staged,
    trains_weights,
)

COMPONENT = "ctxembed_elmo"


@registry.architectures("spacy-ctxembed.ElmoEncoder.v3")
def ElmoEncoder(
    *,
    options_file: Optional[str] = None,
    weight_file: Optional[str] = None,
    layers: Sequence[int] = (0, 1, 2),
    max_batch_items: int = 4096,
    trainable: bool = False,
    compile: bool = False,
) -> EncoderModel:
    """ELMo's layers per token from `*_options.json` + `*_weights.hdf5`.

    layers: 0 is the character-CNN token layer, 1.. the biLSTM layers.
    max_batch_items: padded tokens per biLM batch.
    trainable: also fine-tune the biLM when its component is trained.
    compile: run the LSTM step through `torch.compile`, which fuses the gates'
        elementwise work into a few kernels (for GPU, where each kernel launch
        costs more than the arithmetic). The first batches wait for the
        compilation (seconds to a minute); vectors stay within 1e-5 of the
        eager step's.
    """
    settings = {
        "options_file": options_file,
        "weight_file": weight_file,
        "layers": layers_as_given(layers),
        "max_batch_items": max_batch_items,
        "trainable": trainable,
        "compile": compile,
    }
    return EncoderNode(
        "ctxembed-elmo-encoder",
        forward,
        init=init,
        dims={"nO": None, "nL": layer_count(settings["layers"])},
        shims=[ElmoShim(settings)],
    )


@registry.architectures("spacy-ctxembed.ElmoEncoder.v2")
def ElmoEncoder_v2(
    *,
    options_file: Optional[str] = None,
    weight_file: Optional[str] = None,
    layers: Sequence[int] = (0, 1, 2),
    max_batch_items: int = 4096,
    trainable: bool = False,
) -> EncoderModel:
    """v2, as released: v3 without `compile` (the eager LSTM step)."""
    return ElmoEncoder(options_file=options_file, weight_file=weight_file, layers=layers,
                       max_batch_items=max_batch_items, trainable=trainable, compile=False)


def check_settings(settings: dict) -> None:
    check_layers(COMPONENT, settings["layers"])
    check_int(COMPONENT, "max_batch_items", settings["max_batch_items"])
    check_bool(COMPONENT, "trainable", settings["trainable"])
    check_bool(COMPONENT, "compile", settings["compile"])


def forward(model: EncoderModel, docs: List[Doc], is_train: bool) -> Tuple[List[DocLayers], Callable]:
    shim = get_shim(model)
    shim.get_net()  # a clear error when no weights are loaded
    return run_encoder(model, shim, shim.embed, docs, train_weights=trains_weights(shim.settings, is_train))


def init(model: EncoderModel, X: Optional[List[Doc]] = None, Y=None) -> None:
    """Read the released files the config names, whatever the shim holds
    (initializing starts from the config; see `bert.init`)."""
    shim = get_shim(model)
    with named_as_loaded(shim.settings):
        check_settings(shim.settings)
        paths = []
        for setting in ("options_file", "weight_file"):
            value = shim.settings[setting]
            if not value or not isinstance(value, str):
                raise bad_setting(COMPONENT, setting, value, "set it to the path of the released ELMo file")
            paths.append(Path(value).expanduser())  # (as BERT's `name`: "~/elmo/options.json")
        shim.load_files(paths[0], paths[1])
    set_loaded_dims(model)


def get_shim(model: EncoderModel) -> "ElmoShim":
    return cast(ElmoShim, model.shims[0])


@dataclass(frozen=True)
class _Sentence:
    doc: int
    token_ids: numpy.ndarray  # indices of the doc's non-whitespace tokens in this sentence
    char_ids: numpy.ndarray  # (len + 2, 50), wrapped in <S> ... </S>


class ElmoShim(EncoderShim):
    """Holds the biLM (moved to the current device) for Thinc: files in and out."""

    component = COMPONENT
    FILES_KEY = "elmo_files"

    def __init__(self, settings: Dict[str, Any]) -> None:
        super().__init__(settings)
        self.options: Optional[ElmoOptions] = None
        self._layers: Tuple[int, ...] = ()
        # torch.compile'd lazily (the first call compiles); dynamic, so that
        # the shrinking number of running rows does not recompile every step.
        self.step: LstmStep = torch.compile(lstm_step, dynamic=True) if settings["compile"] else lstm_step

    def check_settings(self) -> None:
        check_settings(self.settings)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def layers(self) -> Tuple[int, ...]:
        """The selected layers, as indices into the loaded biLM's (empty until loaded)."""
        return self._layers

    def finish_update(self, optimizer) -> None:
        super().finish_update(scaled_optimizer(optimizer, self.settings))

    @contextlib.contextmanager
    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        """As thinc's, with the averages under the keys its finish_update writes (see `averaged_weights`)."""
        with averaged_weights(self, params):
            yield

    def cache_identity(self) -> str:
        """What the output depends on besides the settings and the weights (the
        feature cache's key): the options file (clipping, activation...) and the layers."""
        return json.dumps([cast(ElmoOptions, self.options).raw, list(self.layers)], sort_keys=True, default=str)

    def identity_fields(self) -> Dict[str, str]:
        """What the outputs' signature (`pipeline.signature`) takes from the biLM
        besides its weights: its options (clipping, activation...), by content,
        not by the files' paths (copied elsewhere, they are the same model)."""
        return {"options": cast(ElmoOptions, self.options).digest}

    def options_digest(self) -> Optional[str]:
        return self.options.digest if self.options is not None else None

    def __deepcopy__(self, memo: Dict[int, Any]) -> "ElmoShim":
        # Model.copy() (spaCy's replace_listeners) deep-copies shims: in memory,
        # not through the pickled form's weight files.
        copied = ElmoShim(self.settings)
        if self._model is not None:
            with loading_weights():
                copied._model = copy.deepcopy(self._model, memo)
            copied.options, copied._layers = self.options, self._layers
        return copied

    @property
    def device(self) -> torch.device:
        if self._model is None:
            return get_torch_default_device()
        return next(itertools.chain(self._model.parameters(), self._model.buffers())).device

    def get_net(self) -> ElmoBiLm:
        if self._model is None:
            raise ValueError(f"[{COMPONENT}] the biLM has no weights yet: call nlp.initialize() first")
        return cast(ElmoBiLm, self._model)

    def dims(self) -> Dict[str, int]:
        """The thinc model's dims the loaded weights give (`set_loaded_dims`)."""
        return {"nO": self.get_options().output_width, "nL": len(self.layers)}

    @property
    def n_states(self) -> int:
        """How many layers the loaded biLM gives (the token layer included): what `layers` index."""
        return 1 + self.get_options().n_layers

    def get_options(self) -> ElmoOptions:
        self.get_net()
        return cast(ElmoOptions, self.options)

    def load_files(self, options_path: Path, weights_path: Path,
                   setting_names: Tuple[str, str] = ("options_file", "weight_file"), *,
                   component: str = COMPONENT) -> None:
        """Load the released pair. setting_names, component: what errors name as each file's source, and whose."""
        options = read_options(options_path, component=component, setting=setting_names[0])
        weights = read_weights(weights_path, options, component=component, setting=setting_names[1])
        layers = normalize_layers(COMPONENT, self.settings["layers"], 1 + options.n_layers)
        name, block = checked_as(COMPONENT, self.settings)
        warn_repeated_layers(name, self.settings["layers"], layers, 1 + options.n_layers, block=block)
        # The biLM takes the arrays over (and empties `weights`): held once.
        with loading_weights():
            net = build_bilm(options, weights, trainable=bool(self.settings["trainable"])).eval()
            self._model = net.to(get_torch_default_device())
        self.options, self._layers = options, layers
        self.weights_loaded()

    def save_dir(self, directory: Path) -> None:
        options = self.get_options()
        write_files(Path(directory), options, released_layout(options, self.get_net().arrays()))

    def load_saved(self, directory: Path, name: str, setting: str) -> None:
        self.load_files(directory / OPTIONS_FILE, directory / WEIGHTS_FILE, (setting, setting), component=name)

    def saved_files_problem(self, files: Any) -> str:
        if isinstance(files, dict) and set(files) == {OPTIONS_FILE, WEIGHTS_FILE}:
            return ""
        return f"the serialized biLM does not hold {OPTIONS_FILE} + {WEIGHTS_FILE}"

    def embed(self, docs: Sequence[Doc], grad: bool) -> List[torch.Tensor]:
        """Per doc, (n_layers, n_tokens, width) on the biLM's device.

        The sentences of all docs go in length-sorted batches; each batch's
        word rows are written into one array of all the docs' tokens with one
        indexed copy (whitespace tokens stay zero), which is cut into docs at
        the end: no per-sentence work on the device, and per doc only the copy
        of its own output. Memory: a batch's outputs are freed before the next
        batch runs, and a single doc's output is that array itself (no copy).
        """
        net = self.get_net()
        device = self.device
        width = cast(ElmoOptions, self.options).output_width
        # The biLSTM layers above the deepest selected one are not run.
        depth = max(self.layers)
        sentences = [s for d, doc in enumerate(docs) for s in _sentences(d, doc)]
        # Similar lengths together keep the padding small.
        sentences.sort(key=lambda s: len(s.token_ids), reverse=True)
        offsets = numpy.concatenate(([0], numpy.cumsum([len(doc) for doc in docs], dtype="int64")))

        def on_device(array: numpy.ndarray) -> torch.Tensor:
            return staged(array, device).to(device, non_blocking=True)

        with autograd_on() if grad else torch.inference_mode(), callers_autocast_off(device.type):
            # Layer-major, so that a doc's rows are its output's layout; float32
            # whatever torch's default dtype (`torch.set_default_dtype`), as the
            # biLM's outputs are. Made in the block: made under a caller's
            # inference mode, it could not take the training pass's rows.
            tokens = torch.zeros((len(self.layers), int(offsets[-1]), width), dtype=torch.float32, device=device)
            for batch in batches_by_budget(sentences, self.settings["max_batch_items"], lambda s: len(s.char_ids)):
                lengths = numpy.array([len(s.char_ids) for s in batch], dtype="int64")
                time = int(lengths.max())
                char_ids = numpy.zeros((len(batch), time, MAX_CHARS), dtype="int64")
                for row, sentence in enumerate(batch):
                    char_ids[row, : len(sentence.char_ids)] = sentence.char_ids
                # Row r's words sit at positions 1..n (after <S>, before </S>).
                targets = numpy.concatenate([offsets[s.doc] + s.token_ids for s in batch])
                sources = concat_ranges(numpy.arange(len(batch)) * time + 1, lengths - 2)
                words, positions = distinct_words(char_ids)
                layers = net(on_device(words), on_device(positions), torch.from_numpy(lengths), self.step, depth)
                rows = on_device(sources)
                tokens[:, on_device(targets)] = torch.stack([layers[i].reshape(-1, width)[rows] for i in self.layers])
                # Every layer of the batch, padding included: dropped now, not
                # when the next batch's outputs replace them (after it has run).
                del layers, rows
            if len(docs) == 1:  # the array is this doc's output as it is
                return [tokens]
            # A copy per doc: a view would keep every doc's memory alive with any one doc.
            return [tokens[:, start:end].clone(memory_format=torch.contiguous_format)
                    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _sentences(doc_index: int, doc: Doc) -> List[_Sentence]:
    """Each sentence on its own when the doc has boundaries, else the whole doc."""
    spans = doc.sents if doc.has_annotation("SENT_START") else [doc[:]]
    sentences = []
    for span in spans:
        tokens = [t for t in span if not t.is_space]
        if tokens:
            sentences.append(_Sentence(
                doc_index,
                numpy.array([t.i for t in tokens], dtype="int64"),
                sentence_char_ids(t.text for t in tokens),
            ))
    if "sents" in doc.user_hooks:
        _check_hook_sentences(doc, [s.token_ids for s in sentences])
    return sentences


def _check_hook_sentences(doc: Doc, token_ids: List[numpy.ndarray]) -> None:
    """Sentences from SENT_START cut the doc into parts; those of a user hook
    (`doc.user_hooks["sents"]`) may overlap or leave words out. A word in two
    sentences would take the context of whichever was written last, one in
    none no vector at all, both silently: refused. (Whitespace tokens, never
    embedded, may be left out.)"""
    counts = numpy.bincount(numpy.concatenate([numpy.zeros(0, dtype="int64"), *token_ids]), minlength=len(doc))
    wrong = numpy.flatnonzero((doc.to_array("IS_SPACE") == 0) & (counts != 1))
    if len(wrong):
        i = int(wrong[0])
        placed = "in no sentence" if counts[i] == 0 else f"in {counts[i]} sentences"
        raise ValueError(
            f"[{COMPONENT}] doc.user_hooks['sents']: token {i} ({doc[i].text!r}) is {placed} "
            f"({len(wrong)} word(s) in all not in exactly one). ELMo embeds each sentence on its own, so "
            "every word (non-whitespace token) must be in exactly one: make the hook's sentences cover the "
            "doc without overlapping, or set the boundaries with token.is_sent_start instead"
        )
