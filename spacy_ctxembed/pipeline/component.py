"""The pipeline component behind every ctxembed factory.

Its model is the whole computation, `Embedder.v2` = chain(encoder, combiner).
In prediction it writes each doc's outputs (`doc._.ctx_outputs[name]`, and as
the primary component `doc._.ctx_vectors`, `doc._.ctx_layers`, `doc.tensor`
and the vector hooks). In training it is a listened-to component, like spaCy's
`Tok2Vec`: `update` runs the model and sends each listener its input (the
layers, or the combined vectors) with a callback that, once every listener
has answered, backpropagates into the combiner and the encoder and applies
the optimizer. Frozen (in `frozen_components`), it only annotates, and the
feature cache spares recomputing the same training docs.
"""
import inspect
import os
import sys
import tempfile
import threading
import warnings
from contextlib import contextmanager
from functools import partial, wraps
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar, Union, cast

import srsly
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.pipeline.tok2vec import Tok2VecListener
from spacy.tokens import Doc
from spacy.training import Example, validate_examples
from spacy.util import ensure_path, from_disk, minibatch, to_disk
from spacy.vocab import Vocab
from thinc.api import CupyOps, Model, Optimizer, set_dropout_rate
from thinc.util import to_numpy

from ..batching import InFlight, computed_ahead, on_caller_devices
from ..errors import SettingError, bad_setting, check_bool, check_int, check_number, named_errors
from ..finite import FiniteCheck, refuse_non_finite
from ..layers.read_ctx_layers import SampleDocsModel
from ..layers.scalar_mix import is_plain_mean
from ..models.elmo_weights import ElmoFileError
from ..models.embedder import (
    check_combiner_layers,
    check_combiner_output,
    check_embedder,
    check_encoder_settings,
    pass_dims,
    replace_listener_cfg,
)
from ..models.legacy import V1_SETTINGS
from ..models.listener import ContextualListenerNode
from ..models.torch_bridge import (
    at_lr_scale,
    drop_gradients,
    encoder_features,
    encoder_shim,
    set_loaded_dims,
    swaps_weights,
)
from ..models.trf_pooler import MODEL_NAME as TRF_ENCODER
from ..models.trf_pooler import TRF_DATA
from ..outputs import ENCODER_WEIGHTS, install_extensions, signature_fields, write_outputs
from ..settings import check_saved_features
from ..types import DocLayers, DocVectors, EmbedderModel
from .feature_cache import FeatureCache, cacheable, doc_key, encoder_identity
from .load_gate import LoadGate
from .saved import (
    FEATURES_KEY,
    KEPT_KEY,
    LAYERS_KEY,
    LINEAGE_KEY,
    MODEL_DIR,
    OPTIONS_KEY,
    PROBE_KEY,
    SOURCE_KEY,
    WEIGHTS_KEY,
    check_combiner,
    check_format,
    check_saved_combiner,
    check_saved_layers,
    check_saved_options,
    check_saved_probe,
    check_saved_weights,
    combiner_nodes,
    is_v1_bytes,
    load_failure,
    read_cfg,
    saved_cfg,
    saved_nodes,
    v1_saved_layers,
    vouching_keys,
    warn_if_source_edited,
)
from .signature import output_signature, saved_weights_fingerprint, weights_fingerprint

F = TypeVar("F", bound=Callable[..., Any])

#: Why a component refuses to run in a process forked while its weights were being changed.
_FORKED_MID_CHANGE = "(forked while another thread was changing the weights)"


class Predictions(tuple):
    """What `predict` returns: (layers, vectors), one entry per doc, the
    signature of the weights that made them (`output_signature`), and the
    check of the vectors for nan and inf, read by `set_annotations` (taken
    again there for a copy: a pickle does not keep it)."""

    signature: Optional[str]
    finite: Optional[FiniteCheck]

    def __new__(cls, layers: List[DocLayers], vectors: List[DocVectors], signature: Optional[str],
                finite: Optional[FiniteCheck] = None) -> "Predictions":
        predictions = super().__new__(cls, (layers, vectors))
        predictions.signature = signature
        predictions.finite = finite
        return predictions

    def __reduce__(self) -> Tuple[Any, Tuple[Any, Any, Optional[str]]]:  # (pickle, copy)
        # Without the check: its sums may be on a device, behind a CUDA event
        # (which neither pickles nor copies); `set_annotations` takes it again.
        return Predictions, (self[0], self[1], self.signature)


def _loads(method: F) -> F:
    """A method that loads weights: alone, not while the component predicts
    in another thread (see `load_gate`)."""

    @wraps(method)
    def loading(self: "ContextualEmbedder", *args: Any, **kwargs: Any) -> Any:
        self._after_fork()
        with self._gate.loading():
            # (A load past the component before this one is its weights now: what
            # `from_disk(exclude=["model"])` keeps, and the lineage it keeps, are theirs.)
            self._notice_outside_load()
            return method(self, *args, **kwargs)

    return cast(F, loading)


#: How many signatures of the weights it has had a component keeps (`made_signatures`).
SIGNATURES_KEPT = 64


class ContextualEmbedder(TrainablePipe):
    """Attach contextual token vectors computed by `model` to each doc."""

    #: What a refused `from_disk`/`from_bytes` was loading (see `_loading`), or `_FORKED_MID_CHANGE`;
    #: None after a good load.
    _load_refused: Optional[str] = None
    #: What makes this component's outputs (`output_signature`), stored with each, and
    #: the `_generation` whose weights it is of (another: taken again when asked); set
    #: once loaded. One pair, written at once (`_sign`). (A class default too: components
    #: pickled by earlier versions have none.)
    _signed: Tuple[int, Optional[str]] = (0, None)
    #: How many times the component's weights changed (loads, training steps,
    #: `use_params`): a prediction made before the last change is of other weights.
    _generation = 0
    #: The signatures of the weights it has had, the latest `SIGNATURES_KEPT`
    #: (`made_signatures`). A new tuple at each change: a reader in another thread has one or the other.
    _made: Tuple[str, ...] = ()
    #: Which weights these are, as a listener's head trained on their outputs
    #: knows them (`listener_checks.TRAINED_WITH`): a random id given when weights are
    #: loaded from the config's model (initialize, a first use), a new one at
    #: each training step (`_branch_lineage`), kept by a save and its load.
    #: Another component of the same model and settings has another.
    _lineage: Optional[str] = None
    #: Whether the weights were loaded from a model folder whose cfg records of
    #: the saved model were removed (kept on purpose, so not checked): a head
    #: trained on another lineage's outputs is refused even where the weights'
    #: fingerprint is the same (`listener_checks.check_trained_upstream`). Saves keep
    #: it (`KEPT_KEY`): the records they write would vouch for that folder.
    _unvouched = False
    #: How many times the encoder's weights changed (loads, training steps, swaps);
    #: `encoder_fingerprint`, as (that count, the fingerprint) when taken.
    _encoder_changes = 0
    _encoder_fingerprint: Optional[Tuple[int, str]] = None
    #: The encoder shim's count of loads (`EncoderShim.loads`) at the component's
    #: last load: another count is a load past it (`_notice_outside_load`).
    _shim_loads = 0
    #: ctxembed_from_trf: its last initialize had no pipeline to find its transformer in
    #: (`spacy train` initializes no frozen component: the listener's init initializes it alone).
    _initialized_alone = False

    def __init__(
        self,
        vocab: Vocab,
        model: EmbedderModel,
        name: str,
        *,
        store_layers: bool = False,
        set_doc_tensor: bool = True,
        primary: bool = True,
        cache_mb: int = 0,
        encoder_lr_scale: float = 1.0,
    ) -> None:
        with named_errors(name):
            for setting, value in (("store_layers", store_layers), ("set_doc_tensor", set_doc_tensor),
                                   ("primary", primary)):
                check_bool(name, setting, value)
            check_int(name, "cache_mb", cache_mb, minimum=0, unit="an integer number of megabytes (0: no cache)")
            check_number(name, "encoder_lr_scale", encoder_lr_scale, minimum=0.0,
                         unit="a number >= 0: the encoder's learning rate as a fraction of the optimizer's")
            check_embedder(name, "model", model)
            check_encoder_settings(model)
            check_combiner_layers(name, model)
            if cache_mb and not _cacheable_encoder(model):
                # (a warning, not an error: pipelines saved so keep loading)
                warnings.warn(f"[{name}] cache_mb = {cache_mb}: no cache, the encoder reads another component's "
                              "outputs (spacy-ctxembed.TrfEncoder), which the cache cannot tell apart", stacklevel=2)
        self.vocab = vocab
        self.model = model
        self.name = name
        self.cfg: Dict[str, Any] = {
            "store_layers": store_layers,
            "set_doc_tensor": set_doc_tensor,
            "primary": primary,
            "cache_mb": cache_mb,
            "encoder_lr_scale": encoder_lr_scale,
        }
        self.listener_map: Dict[str, List[ContextualListenerNode]] = {}
        self._bind_replace_hook()
        self._identity = ""
        self._signed = (0, None)
        self._updates = 0
        self._loaded = False
        self._pid = os.getpid()
        self._start_runtime()

    def _start_runtime(self) -> None:
        """What is made, never copied or pickled: the load lock, an empty feature
        cache (layers of docs already seen, for training on a frozen encoder),
        and the Doc extensions the outputs live in."""
        self._gate = LoadGate()
        #: Held while a load past the component is taken (`_notice_outside_load`): once, by one thread.
        self._notice_lock = threading.Lock()
        #: The backward pass of an update whose listeners have not all called back yet,
        #: and the thread whose update made it (the one that may run it: `_flush_backward`).
        self._pending_backward: Optional[Callable[..., bool]] = None
        self._pending_thread: Optional[threading.Thread] = None
        #: Batches `pipe` predicts ahead, until done (`memory_zone` waits for them).
        self._in_flight = InFlight()
        cache_mb = self.cfg["cache_mb"]
        self.cache = FeatureCache(cache_mb * 2**20) if cache_mb and _cacheable_encoder(self.model) else None
        install_extensions()

    def __reduce__(self):
        # spaCy's pipelines pickle (and `nlp.pipe(n_process=...)` pickles them
        # where processes are spawned). TrainablePipe's reducer, made by
        # Cython, copies __dict__ as it is; this one leaves out the load lock
        # and the feature cache's entries (a memory saving, not state).
        self._notice_outside_load()  # (the copy's records are of the weights it holds)
        state = {**self.__dict__, "vocab": self.vocab, "model": self.model, "cfg": self.cfg, "name": self.name,
                 "scorer": self.scorer, "_gate": None, "_notice_lock": None, "cache": None, "_pending_backward": None,
                 "_pending_thread": None,
                 "_in_flight": None,
                 "_encoder_fingerprint": None}  # (taken again: a step meanwhile may have moved the weights)
        return _unpickled_component, (type(self), state)

    @property
    def encoder(self) -> Model:
        return self.model.get_ref("encoder")

    @property
    def combiner(self) -> Model:
        return self.model.get_ref("combiner")

    # Listeners (spaCy's ListenedToComponent protocol) ---------------------

    @property
    def listeners(self) -> List[ContextualListenerNode]:
        return [m for c in self.listening_components for m in self.listener_map[c]]

    @property
    def listening_components(self) -> List[str]:
        return list(self.listener_map.keys())

    def add_listener(self, listener: ContextualListenerNode, component_name: str) -> None:
        self.listener_map.setdefault(component_name, [])
        if listener not in self.listener_map[component_name]:
            self.listener_map[component_name].append(listener)
        listener.claim(self, component_name)
        if self._loaded:
            self._size_listener(listener)

    def remove_listener(self, listener: ContextualListenerNode, component_name: str) -> bool:
        linked = self.listener_map.get(component_name, [])
        if listener not in linked:
            return False
        # A new list, not the old one changed: spaCy's replace_listeners removes each
        # listener while it walks the list it read, and a removal in place made it
        # skip every second one (left listening in the model, a copy in the config).
        rest = [node for node in linked if node is not listener]
        if rest:
            self.listener_map[component_name] = rest
        else:
            del self.listener_map[component_name]
        return True

    def find_listeners(self, component) -> None:
        """Find the listeners in `component`'s model whose upstream is this one (or "*")."""
        self._bind_replace_hook()  # (spaCy links components again after a rename)
        names = ("*", self.name)
        if isinstance(getattr(component, "model", None), Model):
            for node in component.model.walk():
                if isinstance(node, SampleDocsModel):
                    # spaCy links the pipeline after initializing it (and at each change
                    # since): the docs it initialized `component` on get no zeros now.
                    node.forget_samples()
                if isinstance(node, ContextualListenerNode) and node.upstream_name in names:
                    self.add_listener(node, component.name)
                elif isinstance(node, ContextualListenerNode):
                    node.pass_over(self, component.name)  # (for its error, where no component takes it)
                elif isinstance(node, Tok2VecListener) and node.upstream_name == self.name:
                    # spaCy's listener is linked to spaCy's tok2vec only: it would read
                    # doc.tensor where this component annotates, and never train it.
                    warnings.warn(f"[{self.name}] {component.name!r} has a spacy.Tok2VecListener with upstream = "
                                  f"{self.name!r}, which listens to spaCy's tok2vec only: in training it reads "
                                  "doc.tensor and sends this component no gradient. Use "
                                  "spacy-ctxembed.ContextualListener.v2", stacklevel=2)

    def _bind_replace_hook(self) -> None:
        """spaCy's replace_listeners hook sees only the model's config: the
        replacement's encoder keeps this component's learning-rate scale, and
        the listener of this component is told from others by its name, the
        name it has now (`rename_pipe`, `add_pipe(source=..., name=...)`)."""
        if "replace_listener_cfg" in self.model.attrs:
            self.model.attrs["replace_listener_cfg"] = partial(
                replace_listener_cfg, encoder_lr_scale=self.cfg["encoder_lr_scale"], upstream=self.name,
                v1_settings=self.model.attrs.get(V1_SETTINGS))

    def _size_listener(self, listener: ContextualListenerNode) -> None:
        encoder = self.encoder
        if encoder.name == TRF_ENCODER and encoder.has_dim("nO") is not True:
            # (ctxembed_from_trf's width is the transformer's, known once that is
            # initialized, or from the first doc it pools: too late for a listener.)
            listening = [name for name, nodes in self.listener_map.items() if listener in nodes]
            if self._initialized_alone:  # (the transformer may well be initialized: this component never looked)
                why = (
                    "which it reads from the pipeline that initializes it, and it was initialized on its own "
                    "(component.initialize() without nlp=, or at its first use). spacy train initializes no frozen "
                    f"component: leave {self.name!r} out of [training] frozen_components (the transformer is "
                    "what stays frozen: list it in frozen_components and annotating_components), or initialize "
                    f"it with the pipeline (nlp.initialize(), or nlp.get_pipe({self.name!r}).initialize(nlp=nlp))"
                )
            else:
                why = (
                    "which is not initialized. Initialize it with the pipeline (nlp.initialize()); spacy train "
                    "initializes no frozen component, so a frozen transformer must be sourced from a pipeline in "
                    "which it was initialized (source = ... in its [components] block), or left out of [training] "
                    "frozen_components and kept in annotating_components, for init_nlp to initialize it (no "
                    "gradient reaches it through this component either way)"
                )
            raise ValueError(
                f"[{self.name}] cannot size the listener of {', '.join(map(repr, listening)) or 'a component'}: "
                f"the width of the vectors it pools is that of the spacy-transformers transformer before it, {why}"
            )
        listener.set_dim("nL", encoder.get_dim("nL"), force=True)
        width = encoder.get_dim("nO") if listener.mix_layers else self.model.get_dim("nO")
        listener.set_dim("nO", width, force=True)

    # Loading ---------------------------------------------------------------

    @_loads
    def initialize(
        self, get_examples: Optional[Callable[[], Iterable[Example]]] = None, *, nlp: Optional[Language] = None
    ) -> None:
        """Load the pretrained weights the config names and check the settings
        against the model. This starts the component from its config, as
        spaCy's own components start afresh: weights loaded or fine-tuned
        before (and a combiner's) are replaced."""
        was_loaded = self._loaded
        self._initialized_alone = self.encoder.name == TRF_ENCODER and nlp is None
        with named_errors(self.name):
            if self.encoder.name == TRF_ENCODER and nlp is not None:
                _check_upstream_transformer(self.name, self.encoder, nlp)
            try:
                self.model.initialize()
            except (SettingError, ElmoFileError) as err:  # (a model or file the config names)
                if not was_loaded:
                    raise
                raise type(err)(
                    f"{err} (nlp.initialize() starts the component from its config, so it loads the weights the "
                    f"config names again; to keep the ones it holds, leave it out: with nlp.select_pipes("
                    f"disable=[{self.name!r}]): nlp.initialize())") from None
            finally:
                # (Weights it may have loaded before failing are no load past it, to be taken.)
                self._shim_loads = _loads_of(self.encoder)
        self._model_loaded()

    def ensure_loaded(self) -> None:
        """Load the weights unless they are loaded.

        A pretrained embedder needs no data to initialise, so plain
        `nlp.add_pipe(...)` then `nlp(text)` works. One load, even when
        several threads make the first call at once. Not after a refused
        `from_disk`/`from_bytes` (see `_loading`).
        """
        self._after_fork()  # (every use of the component comes here, or to `_loads`, first)
        if self._loaded:
            self._notice_outside_load()
            return
        with self._gate.loading():  # (waits for a load under way in another thread)
            if self._load_refused == _FORKED_MID_CHANGE:
                raise ValueError(
                    f"[{self.name}] this process was forked while another thread of its parent was changing the "
                    "component's weights (a load, a training step, use_params): its copy may hold parts of "
                    "two sets of weights, so it does not run. Fork (nlp.pipe(n_process=...)) once the change "
                    "is done, or load the pipeline in the new process")
            if self._load_refused is not None:
                raise bad_setting(self.name, "model", self._load_refused,
                                  "loading it was refused, so the component holds parts of two models; load a "
                                  "pipeline that fits its config, or call initialize() to start from the config's")
            if not self._loaded and self._shim_loads != _loads_of(self.encoder):
                # Loaded past it before its first use (spaCy's `init_tok2vec` while
                # `spacy train` has a frozen embedder disabled): those are its weights,
                # not to be replaced by the config's.
                with named_errors(self.name):
                    self._after_loading("the weights loaded into its model")
                self._model_loaded()
            if not self._loaded:
                self.initialize()

    def _after_fork(self) -> None:
        """In a process forked by `nlp.pipe(n_process > 1)` (or any fork): one
        torch thread, and the component's own locks made anew.

        torch's intra-op (OpenMP) thread pool does not survive a fork, and a
        child that uses it deadlocks; with one thread no pool is used, and the
        worker processes are the parallelism. Nothing is installed globally:
        only a ctxembed component that finds itself in a new process does this.

        A fork copies the load gate and the feature cache's lock as they were,
        held by threads the child does not have (a prediction or a load in
        another thread, a run-ahead worker finishing a batch nobody waits for):
        the child would wait for them for ever. If the weights were being
        changed then (a load, a training step, `use_params`), the child's copy
        may hold parts of two models: it refuses to run rather than predict.
        """
        pid = os.getpid()
        if pid != self._pid:
            self._pid = pid
            import torch

            torch.set_num_threads(1)
            if self._gate.changing:
                self._loaded = False
                self._load_refused = _FORKED_MID_CHANGE
            self._gate = LoadGate()
            self._notice_lock = threading.Lock()
            # (The parent's run-ahead workers are not in the child: never to be waited for.)
            self._in_flight = InFlight()
            if self.cache is not None:
                self.cache.after_fork()
            shim = encoder_shim(self.encoder)
            if shim is not None:
                shim.in_this_process()

    @contextmanager
    def _loading(self, source: str) -> Iterator[None]:
        """Loading saved weights, from the first write into the model on.

        A load refused on the way (a combiner saved for other layers, a missing
        file, bad bytes) leaves the encoder of one model beside the combiner of
        another. The component then refuses to run until it is loaded or
        initialized again: a caller that catches the error would otherwise get
        vectors from the mix, or (never initialized) from the config's base
        weights, silently.
        """
        self._loaded = False
        self._load_refused = source
        self._initialized_alone = False  # (the saved width is the one to size with)
        yield
        self._load_refused = None

    def _model_loaded(self, lineage: Any = None, *, vouched: bool = True) -> None:
        """After a load or initialize; `lineage`: the saved weights' (`LINEAGE_KEY`), None for new weights;
        `vouched`: False for a model folder whose records were removed (`_unvouched`)."""
        self._load_refused = None
        # What training accumulated is of the weights before: gone with them. (A
        # new encoder module has no gradients; the combiner kept thinc's, and a
        # step after the load, `nlp.update(sgd=False)` before it, applied them to
        # the loaded mix alone. A backward pass still waiting would add its batch's.)
        self._pending_backward, self._to_step = None, frozenset()
        drop_gradients(self.model)
        for listener in self.listeners:  # (and the batch a listener holds, of those weights)
            listener.forget_batch_of(self.name)
        self._lineage = lineage if isinstance(lineage, str) and lineage else os.urandom(8).hex()
        self._unvouched = not vouched
        self._combiner_checked_at = None
        if self.encoder.has_dim("nO") is True:
            pass_dims(self.model)
            self._check_combiner_width()
        for listener in self.listeners:
            self._size_listener(listener)
        if self.cache is not None:
            identity = encoder_identity(self.encoder)
            if identity != self._identity:
                self.cache.clear()  # entries of another model: free the memory
            self._identity = identity
        self._generation += 1
        self._encoder_changes += 1
        self._shim_loads = _loads_of(self.encoder)
        self._sign(self._generation)
        self._loaded = True

    #: The encoder's width that the combiner was last tried at (`_check_combiner_width`).
    _combiner_checked_at: Optional[int] = None

    def _check_combiner_width(self) -> None:
        """`check_combiner_output` once per width of the encoder: after a load
        or initialize, and at a batch whose width was not known then
        (ctxembed_from_trf not initialized with its upstream learns it from
        its first doc, where a combiner of another signature failed deep in
        thinc). A combiner of this package's is never tried."""
        encoder = self.encoder
        if encoder.has_dim("nO") is not True:
            return
        width = encoder.get_dim("nO")
        if width != self._combiner_checked_at:
            check_combiner_output(self.name, self.model)
            self._combiner_checked_at = width

    def _notice_outside_load(self) -> None:
        """Weights loaded into the encoder past the component: thinc's
        `Model.from_bytes` on its model, as spaCy's `[initialize] init_tok2vec`
        loads what `spacy pretrain` wrote (and `pretrain --resume-path`), or a
        user's own call. They count as new weights (`_model_loaded`): a new
        lineage (where they come from is not known), the cache keyed anew, the
        outputs signed anew, the listeners sized again. Unnoticed, the cache
        served docs seen before with the old weights' layers, and the outputs'
        signatures and the records of heads trained on them named the old
        weights: a head trained on these was refused beside them once saved,
        and taken beside the old ones. (No load gate: the load it follows took
        none, and the getters that come here may be asked inside a prediction.)
        Before the component's first use, `ensure_loaded` takes them the same way."""
        # (Not while a load of its own is under way in another thread: its count
        # moves before it is done, and that load takes it.)
        if not self._loaded or self._gate.changing_elsewhere or self._shim_loads == _loads_of(self.encoder):
            return
        with self._notice_lock:  # (once, where several threads see it)
            if self._loaded and self._shim_loads != _loads_of(self.encoder):
                self._model_loaded()

    # Prediction ------------------------------------------------------------

    #: In `pipe`, predict the next batch in a worker thread while this one is
    #: annotated and passed on. None: on GPU only, and not with precision
    #: "tf32" (its process-wide switch would then also hold while the other
    #: components run, giving their fp32 matmuls TF32; fp16/bf16's switch,
    #: cuDNN attention off, only changes which kernel their attention takes,
    #: so it keeps run-ahead). On CPU the worker's torch work would compete for the
    #: same cores as spaCy's, and measured no faster.
    run_ahead: Optional[bool] = None

    def pipe(self, stream: Iterable[Doc], *, batch_size: int = 128) -> Iterator[Doc]:
        """Annotate a stream of docs in batches, as `TrainablePipe.pipe` does, but
        with batch k+1 predicted in a worker thread while batch k is annotated and
        handed to the next component, and while the stream makes the docs after it.

        On GPU the device then always has the next batch queued while the host
        tokenizes, annotates and runs the components downstream. The vectors
        are those of the serial loop: the same batches, the same model. Errors
        go to the component's error handler, as in `TrainablePipe.pipe`.
        """
        if not self._runs_ahead():
            yield from super().pipe(stream, batch_size=batch_size)
            return
        self._after_fork()  # (in a forked child, its batches go to the child's `_in_flight`)
        error_handler = self.get_error_handler()
        predict = on_caller_devices(self._predict_ahead)
        batches = minibatch(stream, size=batch_size)
        for docs, result, error in computed_ahead(predict, batches, in_flight=self._in_flight):
            try:
                if error is not None:
                    raise error
                generation, predictions = cast(Tuple[int, Tuple[List[DocLayers], List[DocVectors]]], result)
                if generation != self._generation:
                    # The component's weights changed after the worker predicted
                    # this batch (a load, a training step, use_params: between
                    # batches, or in another thread): those were other weights' vectors.
                    predictions = self.predict(docs)
                self.set_annotations(docs, predictions)
            except Exception as exc:
                error_handler(self.name, self, docs, exc)
                continue
            yield from docs

    @contextmanager
    def memory_zone(self, mem: Any = None) -> Iterator[None]:
        """Entered by spaCy's `nlp.memory_zone()`, whose end frees the strings and
        lexemes made in it: the docs of a batch that `pipe` predicts ahead hold
        them. A stream left inside the zone (a `break`, an error in the loop,
        `islice`) drops that batch without waiting for it (`computed_ahead`),
        and its worker went on reading the docs' text and tokens after the
        zone had freed them (a KeyError from the string store, or freed memory
        read). Its end waits for those batches first; spaCy ends the
        components' zones before the vocab's."""
        try:
            yield
        finally:
            self._after_fork()  # (a forked child never waits for its parent's workers)
            self._in_flight.wait()

    def _runs_ahead(self) -> bool:
        if self.run_ahead is not None and not isinstance(self.run_ahead, bool):  # (1 == True: `in` took 0 and 1)
            raise bad_setting(self.name, "run_ahead", self.run_ahead, "expected True, False or None (on GPU only)")
        if self.run_ahead is not None:
            return bool(self.run_ahead)
        shim = encoder_shim(self.encoder)
        tf32 = shim is not None and shim.settings.get("precision") == "tf32"
        return isinstance(self.model.ops, CupyOps) and not tf32

    def predict(self, docs: Iterable[Doc]) -> Tuple[List[DocLayers], List[DocVectors]]:
        docs = list(docs)
        with self._ready(), named_errors(self.name):
            layers = self._frozen_layers(docs)
            self._check_combiner_width()
            vectors = self.combiner.predict(layers)
            # The signature of these weights, taken now: a load in another
            # thread before `set_annotations` must not stamp them as its model's.
            return Predictions(layers, vectors, self._current_signature(), FiniteCheck(self.model.ops, vectors))

    def _current_signature(self) -> Optional[str]:
        generation = self._generation
        signed_at, signature = self._signed
        if signed_at != generation:  # the weights changed (a training step, use_params) since it was taken
            signature = self._sign(generation)
        return signature

    def _sign(self, generation: int) -> str:
        """Take the signature of the weights of `generation`, the ones it has now.
        Taken first, then marked: a thread asking meanwhile takes it too, never
        the old one; a change meanwhile leaves it to be taken again."""
        signature = output_signature(self.model)
        if signature not in self._made:
            self._made = (*self._made[1 - SIGNATURES_KEPT:], signature)
        # The pair at once: threads outside the load gate ask for the signature
        # too (a listener's check in a serving thread, `signature`), and with the
        # two written apart, one that took the signature before a training step
        # and wrote it after a prediction had signed the step's weights left those
        # predictions, and all until the next change, stamped as the old weights'.
        self._signed = (generation, signature)
        return signature

    @property
    def made_signatures(self) -> Tuple[str, ...]:
        """The signatures its outputs may have been stored with: those of the
        weights it has had in this process (the latest `SIGNATURES_KEPT`; a
        doc it annotated before a training step has one of the weights
        then). For a listener whose upstream was renamed, to tell that
        upstream's outputs from another's (`ContextualListenerNode.check_not_renamed`).
        Empty for `ctxembed_from_trf`: its signature has its settings and its
        combiner's weights only, and tells no transformer from another."""
        return self._made if encoder_shim(self.encoder) is not None else ()

    @property
    def loaded(self) -> bool:
        """Whether the weights are loaded: False before the first use, and after a refused load."""
        return self._loaded

    @property
    def lineage(self) -> Optional[str]:
        """Which weights these are (`_lineage`); None before they are loaded."""
        self._notice_outside_load()
        return self._lineage

    @property
    def unvouched(self) -> bool:
        """Whether the weights came from a model folder kept on purpose (`_unvouched`)."""
        return self._unvouched

    @property
    def signature(self) -> Optional[str]:
        """What makes the outputs now (`output_signature`), as stored with each; None before loading."""
        self._notice_outside_load()
        return self._current_signature() if self._loaded else None

    def listener_features(self) -> Optional[Dict[str, str]]:
        """What shapes the outputs besides the weights, for a listener's record
        (`listener_checks.TRAINED_WITH`): the fields of `output_signature` without the
        layers (recorded apart) and the weights' fingerprints (recorded apart:
        `encoder_fingerprint`, and the record's `signed`). A new dict; None
        before the weights are loaded."""
        signature = self.signature
        if signature is None:
            return None
        features = signature_fields(signature)
        for key in ("weights", ENCODER_WEIGHTS, "layers"):
            features.pop(key, None)
        return features

    def encoder_fingerprint(self) -> str:
        """The encoder's weights by value, as a save records them (the same under
        another version of transformers), for a listener's record. Taken once
        per change of the encoder's weights."""
        self._notice_outside_load()
        changes = self._encoder_changes
        if self._encoder_fingerprint is None or self._encoder_fingerprint[0] != changes:
            self._encoder_fingerprint = (changes, saved_weights_fingerprint(self.encoder))
        return self._encoder_fingerprint[1]

    def combiner_fingerprint(self) -> str:
        """The combiner's weights (a few numbers, or none), for a listener's record."""
        return weights_fingerprint(self.combiner)

    def weights_train(self, *, combiner: bool) -> bool:
        """Whether an update moves the encoder's weights (`_encoder_trains`), or
        with `combiner` the combiner's (weights that a listener of the vectors
        sends a gradient to)."""
        return self._encoder_trains() or (combiner and bool(self.combiner.param_names) and any(
            listener.kind == "vectors" and listener.grad_factor != 0 for listener in self.listeners))

    def _predict_ahead(self, docs: List[Doc]) -> Tuple[int, Tuple[List[DocLayers], List[DocVectors]]]:
        """`predict`, with the count of weight changes (`_generation`) taken
        before it: a load, training step or `use_params` that comes before the
        predictions are used makes them be predicted again, never kept (at
        worst once too often)."""
        self.ensure_loaded()  # (the first load is not one to predict again for)
        generation = self._generation
        return generation, self.predict(docs)

    @contextmanager
    def _ready(self) -> Iterator[None]:
        """Loaded, and no load starts before the block ends (see `load_gate`)."""
        while True:
            self.ensure_loaded()
            with self._gate.predicting():
                if self._loaded:  # (else a load began after the check, and failed: ensure_loaded says so)
                    yield
                    return

    def _frozen_layers(self, docs: List[Doc]) -> List[DocLayers]:
        """The encoder's output without training it, through the cache if there is one."""
        if self.cache is None:
            return self.encoder.predict(docs)
        # The device is part of the key: the same weights give other outputs on
        # another device (about 1e-6 in fp32, more under TF32), so entries taken
        # on CPU are never served to the pipeline moved to GPU (`model.to_gpu`).
        device = (self.encoder.ops.device_type, self.encoder.ops.device_id)
        keys = [(self._identity, device, doc_key(doc)) if cacheable(doc) else None for doc in docs]
        cached: List[Any] = [None if key is None else self.cache.get(key) for key in keys]
        missing = [i for i, layers in enumerate(cached) if layers is None]
        fresh = self.encoder.predict([docs[i] for i in missing]) if missing else []
        for i, layers in zip(missing, fresh):
            key = keys[i]
            if key is not None:
                self.cache.put(key, to_numpy(layers))
            cached[i] = layers
        ops = self.model.ops
        return [ops.asarray3f(layers) for layers in cached]

    def set_annotations(self, docs: Iterable[Doc], predictions: Tuple[List[DocLayers], List[DocVectors]]) -> None:
        docs = list(docs)
        layers, vectors = predictions
        # Refused before any doc of the batch is written (see `finite`).
        check = getattr(predictions, "finite", None) or FiniteCheck(self.model.ops, vectors)
        refuse_non_finite(self.name, docs, check, self.encoder)
        keep_layers = self.cfg["store_layers"] or any(listener.mix_layers for listener in self.listeners)
        if threading.current_thread() is self._pending_thread:  # (the training thread: not a serving one beside it)
            for listener in self.listeners:
                listener.note_annotated(docs)
        signature = getattr(predictions, "signature", None) or self._current_signature()
        for doc, doc_layers, doc_vectors in zip(docs, layers, vectors):
            write_outputs(doc, self.name, doc_vectors, doc_layers if keep_layers else None,
                          primary=self.cfg["primary"], set_doc_tensor=self.cfg["set_doc_tensor"],
                          signature=signature, weights_signed=encoder_shim(self.encoder) is not None)

    # Training --------------------------------------------------------------

    #: The parts ("combiner", "encoder") that a gradient from some listener
    #: reached since their last step: only they are stepped (see `finish_update`).
    _to_step: frozenset = frozenset()

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd: Optional[Optimizer] = None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """Run the model and send each listener its input and a backprop callback.

        Once every listener has called back, the backward pass runs and, with
        `sgd`, the optimizer step. A listener may never call back: spaCy's NER
        skips a batch without entity annotation, and a frozen or excluded
        component is not updated. The backward pass of what the others sent
        then runs at `finish_update` (spaCy calls it once every component has
        updated) or at the next `update`, whichever comes first, so that
        their gradients are neither lost nor applied twice. A `finish_update`
        that comes before the backward pass (`nlp.update(examples, sgd=...)`
        calls it right after this update) takes its step after it. A batch
        that a listener's component did not take is not read once this
        component has annotated other docs in training (`note_annotated`)
        and the docs the listener gets hold its outputs. A listener at
        `grad_factor` 0 only answers: it sends no gradient.
        """
        validate_examples(examples, "ContextualEmbedder.update")
        losses = {} if losses is None else losses
        losses.setdefault(self.name, 0.0)
        # In any thread: this update's backward pass takes the waiting one's place
        # (updates one after the other in a pool's threads, each alive after it).
        self._flush_backward(at_update=True, any_thread=True)
        listeners = self.listeners
        docs = [eg.predicted for eg in examples]
        if not listeners or not docs:
            return losses
        self.ensure_loaded()
        set_dropout_rate(self.model, drop)
        with named_errors(self.name):
            if self._encoder_trains():
                layers, bp_layers = self.encoder.begin_update(docs)
            else:  # the encoder is frozen: no graph, and the cache may serve
                layers, bp_layers = self._frozen_layers(docs), None
            self._check_combiner_width()
            vectors, bp_vectors = self.combiner.begin_update(layers)
        ops = self.model.ops
        # Refused before any listener is sent the batch (see `finite`).
        refuse_non_finite(self.name, docs, FiniteCheck(ops, vectors), self.encoder, training=True)
        grads = {"layers": [ops.alloc(x.shape) for x in layers], "vectors": [ops.alloc(x.shape) for x in vectors]}
        waiting = len(listeners)
        received: set = set()  # the kinds of output that got a gradient (none at grad_factor 0)
        done = False
        step_with: Optional[Optimizer] = None  # a finish_update's, called before this backward pass

        def backward(*, at_update: bool, sgd: Optional[Optimizer] = None) -> bool:
            """Run the backward pass of what the listeners sent; whether it is done with.
            sgd: the optimizer of the finish_update asking, whose step waits for it."""
            nonlocal done, step_with
            if done:
                return True
            if not received and waiting > 0 and not at_update:
                # Nothing sent yet: at finish_update, keep waiting (`nlp.update(sgd=...)`
                # steps each component right after its own update, before its
                # listeners run). A step now would move the weights that the
                # graph reads in this backward pass: it is taken after it.
                if sgd is not None:
                    step_with = sgd
                return False
            done = True
            d_layers = grads["layers"]
            # The combiner gets a gradient only when its vectors were read:
            # a zero gradient would still let weight decay shrink its weights.
            if "vectors" in received:
                d_layers = bp_vectors(grads["vectors"])
                for total, d in zip(d_layers, grads["layers"]):
                    total += d
                self._to_step |= {"combiner"}
            if bp_layers is not None and received:
                bp_layers(d_layers)
                self._to_step |= {"encoder"}
            if step_with is not None:
                self.finish_update(step_with)
            return True

        def backprop(kind: str, d_outputs: Optional[List[Any]]) -> List[Doc]:
            """A listener's callback: its gradient, or None from a listener at grad_factor 0."""
            nonlocal waiting
            if done:  # not in spaCy's update flows: every listener calls back in its own update
                if d_outputs is not None:
                    warnings.warn(f"[{self.name}] a listener sent its gradient after this batch's backward pass "
                                  "ran (at finish_update or the next update): it does not reach the encoder",
                                  stacklevel=2)
                return []
            if d_outputs is not None:
                for total, d in zip(grads[kind], d_outputs):
                    total += d
                    losses[self.name] += float((d**2).sum())
                received.add(kind)
            waiting -= 1
            if waiting > 0:
                return []
            backward(at_update=True)
            if self._pending_backward is backward:
                self._pending_backward = None
            if sgd is not None:
                self.finish_update(sgd)
            return []

        self._pending_thread, self._pending_backward = threading.current_thread(), backward

        batch_id = ContextualListenerNode.get_batch_id(docs)
        tokens = ContextualListenerNode.batch_tokens(docs)
        for listener in listeners:
            kind = listener.kind
            outputs = layers if kind == "layers" else vectors
            listener.receive(batch_id, outputs, lambda d, kind=kind: backprop(kind, d), self.name, tokens=tokens,
                             docs=docs)
        return losses

    def _flush_backward(self, *, at_update: bool, sgd: Optional[Optimizer] = None, any_thread: bool = False) -> bool:
        """Run the pending backward pass where it is due: at an update, a
        finish_update, `use_params`, and before the weights are saved (a loop
        of `nlp.update(sgd=...)` with a listening component disabled leaves
        its last batch's backward pass, and the step asked for it, waiting for
        a listener that never calls back: the save has that step, as the next
        update would).

        Only in the thread whose update made it, while that thread runs: a save
        (a checkpoint, a snapshot) or `use_params` in another thread comes
        between the training thread's update and its listeners' (`nlp.update`
        runs them one after the other), and run there, the backward pass found
        no gradient sent yet: the listeners' gradients, sent after it, never
        reached the encoder. Such a save has the weights as they are, before
        that step. (A training thread that has ended sends nothing more: a save
        after it, joined, has the step, as in the thread that trained.) `any_thread`:
        an update, which puts its own backward pass in the waiting one's place.

        RETURNS: whether the backward pass still waits, with the step `sgd`
        asked for taken after it."""
        # A load past the component since (thinc's `from_bytes` on its model)
        # first drops what training left (`_model_loaded`), as its own loads do:
        # this backward pass, its step, and the gradients would move the loaded weights.
        self._notice_outside_load()
        backward, owner = self._pending_backward, self._pending_thread
        elsewhere = owner is not None and owner is not threading.current_thread() and owner.is_alive()
        if backward is None or (elsewhere and not any_thread):
            return False
        if backward(at_update=at_update, sgd=sgd):
            self._pending_backward = None
            return False
        return sgd is not None

    def take_waiting_step(self) -> bool:
        """Run a backward pass still waiting for a listener, and the step asked
        for it, as a save does first (`nlp.replace_listeners` copies the
        weights after it); whether one was waiting."""
        waiting = self._pending_backward is not None
        self._flush_backward(at_update=True)
        return waiting

    def finish_update(self, sgd: Optimizer) -> None:
        # A batch that some listener did not call back for runs its backward
        # pass now (see `update`). One that no listener has called back for
        # yet takes this step after its backward pass. What the backward
        # passes of earlier batches left is stepped now, unless `nlp.update`
        # asks (below): `spacy train` accumulating gradients calls this after
        # all its updates, where a batch no listener answered will get no
        # gradient, and its evaluation must see the step.
        self._after_fork()
        if self._flush_backward(at_update=False, sgd=sgd) and _called_by_language_update(sys._getframe(1)):
            # `nlp.update(sgd=...)`: the listeners run after this call, and their
            # backward pass reads the weights of this batch's forward pass. A
            # step now, of the gradients earlier updates left (`sgd=False`),
            # would move them under it (in place: silently): that step is the
            # one taken after the backward pass, with this batch's gradient.
            # (Nothing in this component's state tells this call from spacy
            # train's: in both, the batch has had no gradient yet.)
            return
        # Only what a gradient reached since its last step: an optimizer with
        # weight decay moves weights even on a zero gradient, and thinc keeps
        # a zeroed gradient after each step.
        to_step, self._to_step = self._to_step, frozenset()
        if not to_step:
            return
        # Alone, as a load is (`load_gate`): a step rewrites the weights in place,
        # layer by layer, and a prediction in another thread meanwhile (a server
        # fine-tuning as it serves) would read the lower layers before the step
        # and the upper ones after it, and be stamped as the new weights'.
        with self._gate.loading():
            if "encoder" in to_step:
                # Fine-tuning wants the pretrained encoder to move slower than the
                # freshly initialised heads and mix (e.g. 5e-5 against 1e-3): thinc's
                # optimizer takes a per-call `lr_scale` (`at_lr_scale`), so one
                # optimizer (and one schedule) serves both.
                scale = self.cfg["encoder_lr_scale"]
                with self._changing_weights(encoder=True):
                    self.encoder.finish_update(cast(Optimizer, at_lr_scale(sgd, scale)))
            if "combiner" in to_step:
                with self._changing_weights(encoder=False):
                    self.combiner.finish_update(sgd)
            self._branch_lineage()

    def _branch_lineage(self) -> None:
        """After a training step: the weights are this component's own now, a
        new lineage, which the records of the heads linked to it follow
        (`ContextualListenerNode.follow_lineage`). Two loads of one
        saved pipeline (or a pipeline and its copy) share a lineage: kept
        through training, the one trained on (`spacy train` on sourced
        components, `resume_training`) and the one left as saved stayed one
        lineage, and a head trained further with the first was taken silently
        next to the second's other weights (`check_trained_upstream`)."""
        old, self._lineage = self._lineage, os.urandom(8).hex()
        for listener in self.listeners:
            listener.follow_lineage(old, self._lineage)

    @contextmanager
    def _changing_weights(self, *, encoder: bool) -> Iterator[None]:
        """Around a change of the weights (a step, a swap): after it, the count
        of changes moves, and with the `encoder`'s weights the cache and the
        signature follow (`_weights_moved`). Also after a change cut short
        (Ctrl-C, an error): it may have moved some weights already."""
        try:
            yield
        finally:
            if encoder:
                self._weights_moved()
            else:
                self._generation += 1

    def _weights_moved(self) -> None:
        """The encoder's weights changed: cached layers are of another model now,
        and outputs get another signature (taken again at the next annotation).
        For the cache a step counter in the identity is enough (hashing the
        weights every step would cost more than the cache saves). Batches
        predicted ahead (`pipe` with run-ahead) before it are predicted again."""
        self._generation += 1
        self._encoder_changes += 1
        if self.cache is not None:
            self.cache.clear()
            self._updates += 1
            self._identity = f"{self._identity.split(':')[0]}:{self._updates}"

    def use_params(self, params: Dict[Any, Any]) -> Iterator[None]:
        """As TrainablePipe's (a generator, which `Language.use_params` steps). Where
        `params` swap the encoder's weights (an optimizer's averages of a fine-tuned
        encoder), the cache's entries are of other weights both inside the block
        and after it."""
        # A backward pass still waiting for a listener (one that skipped its last
        # batch) runs now: swapping the weights in place would invalidate its
        # graph, and the next update would fail. (It is what that update would
        # do first; the gradient waits for finish_update as before.)
        self._after_fork()
        self._flush_backward(at_update=True)
        shim = encoder_shim(self.encoder)
        swapped = shim is not None and swaps_weights(shim, params)
        swap = self.model.use_params(params)
        # A save inside the block records the averages' signature in the
        # listeners' records (`_note_saved`), for the saved pipeline; the
        # weights this one predicts with after the block are its own again.
        records = [(listener, listener.record()) for listener in self.listeners]
        # Swapped in and back alone, as a training step is (`finish_update`);
        # predictions in the block read the averages, in any thread.
        # (The combiner's averages count as a change too: `_changing_weights` always moves the count.)
        with self._gate.loading(), self._changing_weights(encoder=swapped):
            swap.__enter__()
        try:
            yield
        finally:
            with self._gate.loading(), self._changing_weights(encoder=swapped):
                # Ended as a plain exit whatever ended the block: thinc's own
                # `use_params` puts a node's parameters back (the combiner's
                # trained mix) on a plain exit only, not on an exception.
                swap.__exit__(None, None, None)
            for listener, record in records:
                listener.put_back_record(record)

    def _encoder_trains(self) -> bool:
        """Whether an update may move the encoder: it is trainable, its `encoder_lr_scale` is not 0, and
        some listener may send it a gradient. Otherwise it runs as frozen: no graph, and the cache serves.
        (A listener whose component is frozen or excluded never calls back: `finish_update` steps
        the encoder only where a gradient reached it.)"""
        shim = encoder_shim(self.encoder)
        trainable = shim is not None and bool(shim.settings.get("trainable"))
        return (trainable and self.cfg["encoder_lr_scale"] > 0
                and any(listener.grad_factor != 0 for listener in self.listeners))

    def get_loss(self, examples, scores) -> Tuple[float, Any]:
        return 0.0, None

    def add_label(self, label: str) -> int:
        raise NotImplementedError(f"[{self.name}] a contextual embedder has no labels")

    # Serialization ---------------------------------------------------------

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Write cfg, the combiner's weights and the encoder's own files (BERT's
        safetensors, ELMo's options and hdf5 weights: no pickles)."""
        path = ensure_path(path)
        self._flush_backward(at_update=True)
        self._width_into_combiner()
        serializers: Dict[str, Callable[[Path], Any]] = {
            "cfg": lambda p: srsly.write_json(p, saved_cfg(self.cfg, self.encoder, probe=True, lineage=self._lineage,
                                                               kept=self._unvouched)),
            "combiner": lambda p: p.write_bytes(self.combiner.to_bytes()),
        }
        shim = encoder_shim(self.encoder)
        if shim is not None:
            serializers[MODEL_DIR] = shim.save_dir
        with self._ready():  # (one model's weights, not a load's half-swapped ones)
            self._note_saved()
            to_disk(path, serializers, exclude)

    def _note_saved(self) -> None:
        """Tell the listeners linked to this component that it is being saved
        as it is (`ContextualListenerNode.note_saved_upstream`): their heads,
        saved after it, then record what its outputs' signature says of the
        weights they were trained on, to hold docs embedded once to it where
        this component is excluded at load."""
        if self._loaded:
            for listener in self.listeners:
                listener.note_saved_upstream(self)

    def _width_into_combiner(self) -> None:
        """Give the combiner the encoder's width where only the encoder knows it,
        as initialize would have: ctxembed_from_trf added to a loaded pipeline
        without initialize learns its width from its first output, and the
        combiner saved alone by to_disk is where a load reads it back from
        (`_after_loading`; without it an empty first doc got (0, 0) vectors).
        Its dims only: a ScalarMix keeps the weights it has."""
        if self.combiner.has_dim("nI") is not True and self.encoder.has_dim("nO") is True:
            pass_dims(self.model)

    @_loads
    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "ContextualEmbedder":
        path = Path(path)
        recorded: Dict[str, Any] = {}
        # Without its model folder, a loaded encoder keeps its weights, and their lineage.
        kept = self._lineage if self._loaded else None
        with named_errors(self.name):
            from_disk(path, {"cfg": lambda p: recorded.update(read_cfg(self.name, p))}, exclude)
            with self._loading(str(path)):
                shim = encoder_shim(self.encoder)
                if shim is not None and MODEL_DIR not in exclude:
                    if not (path / MODEL_DIR).is_dir():
                        # Never fall back to the config's `name`: that would be another model.
                        raise bad_setting(self.name, "model", str(path / MODEL_DIR),
                                          "the saved pipeline has no model folder here; it cannot load without it")
                    shim.load_dir(path / MODEL_DIR)
                    check_saved_weights(self.name, self.encoder, recorded.get(WEIGHTS_KEY), path)
                    warn_if_source_edited(self.name, self.encoder, recorded.get(SOURCE_KEY), path)
                    if WEIGHTS_KEY in recorded:  # (removed on purpose: another model, with its own files)
                        check_saved_options(self.name, self.encoder, recorded.get(OPTIONS_KEY), path)
                        check_saved_probe(self.name, self.encoder, recorded.get(PROBE_KEY), path)
                if "combiner" not in exclude and (path / "combiner").is_file():
                    saved_layers = recorded.get(LAYERS_KEY, v1_saved_layers(self.name, self.encoder, recorded))
                    self._load_combiner((path / "combiner").read_bytes(), str(path / "combiner"), saved_layers)
                elif "combiner" not in exclude and self.combiner.param_names:
                    raise bad_setting(self.name, "combiner", str(path / "combiner"),
                                      "the combiner's weights are missing")
                # (After the combiner: whether its weights were trained decides.)
                self._check_saved_features(recorded.get(FEATURES_KEY), with_combiner="combiner" not in exclude,
                                           on_purpose=f"to load it with the config's on purpose, remove "
                                           f"{FEATURES_KEY!r} from {str(path / 'cfg')!r}")
                self._after_loading(str(path / "combiner"))
        # The saved weights' lineage where the saved weights were loaded, the kept
        # one where the weights were kept; a new one for a mix of saved and kept
        # weights (the encoder's and a combiner's with weights), and where not
        # known (exclude=["cfg"]), as for weights from the config.
        # A folder whose records were removed to keep other weights or options
        # on purpose (as the refusals say) is not the saved model: a new lineage,
        # so that what listens to it, trained on the saved one, is refused; and
        # marked (`_unvouched`), as its saves are, which keep that lineage.
        encoder_kept, combiner_kept = MODEL_DIR in exclude, "combiner" in exclude
        mixed = encoder_kept != combiner_kept and bool(self.combiner.param_names)
        # (A save without a lineage predates the records: nothing was removed.)
        removed = not encoder_kept and shim is not None and LINEAGE_KEY in recorded and not all(
            key in recorded for key in vouching_keys(self.encoder))
        unvouched = self._unvouched if encoder_kept else removed or bool(recorded.get(KEPT_KEY))
        self._model_loaded(None if mixed or removed else kept if encoder_kept else recorded.get(LINEAGE_KEY),
                           vouched=not unvouched)
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """cfg and the whole model (the encoder's files inside), msgpack: no pickles.
        `exclude` leaves out "cfg" or "model", as spaCy's own components do."""
        self._flush_backward(at_update=True)
        parts: Dict[str, Callable[[], Any]] = {"cfg": lambda: saved_cfg(self.cfg, self.encoder, probe=False,
                                                                        lineage=self._lineage, kept=self._unvouched),
                                               "model": self.model.to_bytes}
        with self._ready():
            self._note_saved()
            return srsly.msgpack_dumps({key: part() for key, part in parts.items() if key not in exclude})

    @_loads
    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "ContextualEmbedder":
        with named_errors(self.name):
            try:
                msg = srsly.msgpack_loads(bytes_data)
            except Exception as err:  # noqa: BLE001 - any decoding failure means "not ours"
                raise bad_setting(self.name, "bytes", f"{len(bytes_data)} bytes",
                                  f"not a serialized ctxembed component ({type(err).__name__})") from None
            if is_v1_bytes(msg):
                # 0.1 packed the files of its to_disk into one msgpack dict; from_disk reads them.
                return self._from_v1_bytes(msg, exclude)
            if isinstance(msg, dict) and "model" in exclude and set(msg) <= {"cfg", "model"}:
                return self  # (the cfg only checks the model it was saved with)
            if not isinstance(msg, dict) or not {"cfg", "model"} & set(msg):
                raise bad_setting(self.name, "bytes", f"{len(bytes_data)} bytes", "not a serialized ctxembed component")
            if "model" not in msg:
                raise bad_setting(self.name, "bytes", f"{len(bytes_data)} bytes",
                                  "they hold no model (saved with exclude=['model']?); load them with "
                                  "exclude=['model'], or the bytes of the whole component")
            cfg = {} if "cfg" in exclude else msg.get("cfg", {})
            check_format(self.name, cfg, "bytes")  # (a dict from here on: anything else is refused)
            check_saved_combiner(self.name, self.combiner, combiner_nodes(self.model, self.combiner, msg["model"]),
                                 "bytes")
            with self._loading(f"{len(bytes_data)} bytes"):
                try:
                    self.model.from_bytes(msg["model"])
                except SettingError:
                    raise
                except Exception as err:  # noqa: BLE001 - msgpack and thinc raise many types
                    raise bad_setting(self.name, "bytes", f"{len(bytes_data)} bytes",
                                      load_failure("a serialized ctxembed model", err)) from None
                check_saved_layers(self.name, self.encoder, cfg.get(LAYERS_KEY), "bytes")
                self._check_saved_features(cfg.get(FEATURES_KEY))
                warn_if_source_edited(self.name, self.encoder, cfg.get(SOURCE_KEY))
                self._after_loading("bytes")
        self._model_loaded(cfg.get(LINEAGE_KEY), vouched=not cfg.get(KEPT_KEY))
        return self

    def _from_v1_bytes(self, files: Dict[str, bytes], exclude: Iterable[str]) -> "ContextualEmbedder":
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp).resolve()
            for rel, data in files.items():
                target = (root / rel).resolve()
                if root not in target.parents:
                    raise bad_setting(self.name, "bytes", rel, "a file outside the component: not loaded")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            # 0.1 read no cfg back, so a blob written with exclude=["cfg"] loaded; it still does.
            # Its "model" was the encoder's folder: excluded, the combiner is too, as
            # the current bytes' "model" (the whole thinc model) holds it.
            exclude = [*exclude, *([] if "cfg" in files else ["cfg"]), *(["combiner"] if "model" in exclude else [])]
            return self.from_disk(root, exclude=exclude)

    def _after_loading(self, combiner_source: str) -> None:
        shim = encoder_shim(self.encoder)
        if shim is None or shim.loaded:
            set_loaded_dims(self.encoder)  # (its `initialize` would load the config's weights over them)
        else:  # `exclude=["model"]` into a component not loaded yet: its own are the config's, loaded now
            self.encoder.initialize()
        # ctxembed_from_trf learns its width from the upstream at initialize;
        # a loaded pipeline has it from the combiner that was saved with it.
        if self.encoder.has_dim("nO") is not True and self.combiner.has_dim("nI") is True:
            self.encoder.set_dim("nO", self.combiner.get_dim("nI"))
        check_combiner(self.name, self.encoder, self.combiner, combiner_source)

    def _check_saved_features(self, saved: Any, *, with_combiner: bool = True, on_purpose: str = "") -> None:
        """The pooling and windows the encoder was saved with, held to where weights
        trained on the vectors read them: a combiner with weights (ScalarMix) loaded
        with it, unless they are as initialised, or listening components. A plain
        embedder takes the config's, as it takes its other settings."""
        trained = [repr(name) for name in self.listening_components]
        if with_combiner and self.combiner.param_names and not is_plain_mean(self.combiner):
            trained.insert(0, f"its {self.combiner.name}")
        if trained:
            check_saved_features(self.name, saved, encoder_features(self.encoder), trained=", ".join(trained),
                                 on_purpose=on_purpose)

    def _load_combiner(self, data: bytes, source: str, saved_layers: Any = None) -> None:
        check_saved_combiner(self.name, self.combiner, saved_nodes(data), source)
        check_saved_layers(self.name, self.encoder, saved_layers, source)
        try:
            self.combiner.from_bytes(data)
        except Exception as err:  # noqa: BLE001 - msgpack and thinc raise many types
            raise bad_setting(self.name, "combiner", source,
                              load_failure("a combiner saved by spacy-ctxembed", err)) from None


def _called_by_language_update(frame: Any) -> bool:
    """Whether `frame` runs spaCy's `Language.update`: also where a decorator
    (`functools.wraps`) stands in its place, or a subclass's update calls it."""
    return frame.f_code is inspect.unwrap(Language.update).__code__


def _loads_of(encoder: Model) -> int:
    """How many times weights were loaded into `encoder`'s shim (0 without one: `ctxembed_from_trf`)."""
    shim = encoder_shim(encoder)
    return shim.loads if shim is not None else 0


def _cacheable_encoder(model: Model) -> bool:
    """Whether the feature cache can key the encoder's outputs: not where it has
    no model of its own (TrfEncoder pools another component's outputs from the
    doc's user data, which neither the cache's key, text and tokens, nor its
    identity, settings and weights, sees change)."""
    return any(node.shims for node in model.walk())


def _check_upstream_transformer(name: str, encoder: Model, nlp: Language) -> None:
    """ctxembed_from_trf: a component before it must write `doc._.trf_data`
    (else every doc fails at its first call), and the width of the output it
    pools is that of the last one before it (whose output the docs keep).
    Writers are told by their metadata (spacy-transformers' `transformer`
    assigns it): a pipeline with none is warned of, since a component of the
    user's may write it without saying so."""
    names = nlp.component_names
    if name not in names:  # (initialized on its own, outside this pipeline)
        return
    position = names.index(name)
    writers = [other for other in names if TRF_DATA in nlp.get_pipe_meta(other).assigns]
    before = [other for other in writers if names.index(other) < position]
    if not before and writers:
        raise ValueError(f"[{name}] pools doc._.trf_data, which no component before it writes: "
                         f"{', '.join(repr(w) for w in writers)} comes after it; move it before {name!r}")
    if not before:
        warnings.warn(f"[{name}] pools doc._.trf_data, and no component before it says it writes it: add a "
                      "spacy-transformers 'transformer' component before it (a doc without it is refused)",
                      stacklevel=3)
        return
    # (Disabled ones count: `spacy train` initializes with its frozen and
    # sourced components disabled, which then run.)
    model = getattr(nlp.get_pipe(before[-1]), "model", None)
    if isinstance(model, Model) and model.has_dim("nO") is True:
        encoder.set_dim("nO", model.get_dim("nO"), force=True)


def _unpickled_component(cls: "type[ContextualEmbedder]", state: Dict[str, Any]) -> "ContextualEmbedder":
    component = cls.__new__(cls)
    for key, value in state.items():
        setattr(component, key, value)
    component._start_runtime()
    # The copy's shim counts its own loads (its bytes' load is its first).
    component._shim_loads = _loads_of(component.encoder)
    # Unpickled in this process (spawned `n_process` workers, Ray, joblib): not
    # a fork, so torch's thread pool is sound and the user's thread setting stays.
    component._pid = os.getpid()
    if component._loaded:
        # Taken again from the weights the copy holds: the caller's pickler wrote
        # them after the state above was taken, and a training step in another
        # thread meanwhile (pickling does not wait for it: the weights are written
        # outside any lock of ours) left the state's signature the old weights'.
        component._sign(component._generation)
    for listener in component.listeners:  # listeners hold their upstream weakly: claimed again
        listener.claim(component)
    return component
