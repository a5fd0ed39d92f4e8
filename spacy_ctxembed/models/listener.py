"""The listener node: how any spaCy component (tagger, parser, ner, textcat, ...)
gets contextual features from an upstream ctxembed component.

`ContextualListenerNode` listens to its upstream through spaCy's listener
mechanism, as `Tok2VecListener` and spacy-transformers' `TransformerListener` do:

- when the upstream is trained, its `update` sends this batch's outputs and a
  backprop callback (`receive`); the gradient flows back into the upstream
  (scaled by `grad_factor`), and through it into the encoder;
- when the upstream is frozen (listed in `frozen_components` and
  `annotating_components`), or outside training, the listener reads the
  outputs the upstream stored on each doc (`doc._.ctx_outputs[upstream]`).

With `mix_layers` it gives the upstream's layers, without it the upstream's
combined vectors. Layer counts and widths come from the upstream at
`initialize`.

Outside training, a doc that no upstream annotated gets zeros only where
spaCy expects that: the sample docs it initialises the listening component
on. Otherwise the listener says that its upstream is missing (excluded, or
not before it) or did not run (disabled), rather than predict from zeros.

The node runs inside a head: `ListenerHead`, whose forward pass
(`_delegate`) checks the head against its upstream and keeps the records
of what it trained on, and which refuses weights saved with another
`width` or `mix_layers`. They live here, with the node, where pickled
pipelines name them. The registered architectures that build heads are in
`heads`; the checks of a head against what its upstream gives, which read
the records the node keeps (`TRAINED_ON`, `TRAINED_WITH`), in `listener_checks`.
"""
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import srsly
from spacy.attrs import IDX, LENGTH
from spacy.tokens import Doc
from thinc.api import Model
from thinc.layers.concatenate import forward as _concatenate_forward
from thinc.model import deserialize_attr

from ..embedded import READER
from ..errors import SettingError, bad_setting
from ..layers import built_as
from ..layers.read_ctx_layers import SampleDocsModel
from ..outputs import (
    ENCODER_WEIGHTS,
    MissingOutputs,
    get_outputs,
    read_output,
    signature_fields,
    stored_signature,
    uncovered_error,
)
from ..settings import FromConfig
from .listener_checks import (
    HELD,
    TRAINED_ON,
    TRAINED_WITH,
    check_saved_combiners,
    check_trained_dims,
    check_trained_upstream,
    layers_text,
    upstream_named,
)
from .torch_bridge import selected_layers

LISTENER = "ctxembed-listener"
#: The listener attr that holds the name of the component it serves, as last
#: linked: saved with its bytes, so that a pipeline loaded without its upstream
#: (`exclude=[...]`), where nothing links it, names the component in its errors
#: as the same pipeline does after `nlp.remove_pipe`.
SERVES = "listening_component"

#: Per doc of a batch: its text and token boundaries (`ContextualListenerNode.batch_tokens`).
BatchTokens = Tuple[Tuple[str, bytes], ...]


class ContextualListenerNode(SampleDocsModel):
    """The layer that gets its input from an upstream ctxembed component.

    Zeros only for the docs it was initialised on: see `SampleDocsModel`
    (`remember_samples`, `is_sample`) and `_zeros_for_sample`."""

    name = LISTENER
    #: Why the last load of its component's weights failed at this node (`set_dim`),
    #: if it did. (A class default: a node pickled before it existed has none of its own.)
    _load_refused: Optional[str] = None
    #: `renamed_upstreams` where it was pickled: the claims do not travel (the
    #: components claim their listeners again, and a renamed one lists none).
    _renamed: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = ()
    #: ctxembed components that looked for their listeners in this one's
    #: component and did not take it, its upstream being another name: (their
    #: id, their name then, the component weakly). For the message of an
    #: upstream named wrong (`_zeros_for_sample`); replaced, never changed in place.
    _passed_over: Tuple[Tuple[int, str, Any], ...] = ()
    #: The component this listener serves, as last linked (for messages). (A
    #: class default too: a node pickled by an earlier version may have none,
    #: and unpickling its pipeline claims it, which reads this.)
    _listening_component: Optional[str] = None
    #: The docs the upstream embedded for the batch held, weakly (`receive`;
    #: None where not told). (A class default too, for nodes pickled before.)
    _docs: Optional[Tuple[Any, ...]] = None
    #: Whether the upstream annotated other docs in training since it sent the
    #: batch held (`note_annotated`). (A class default too.)
    _superseded: bool = False
    #: The upstream whose load dropped the batch it sent last (`forget_batch_of`),
    #: until it sends another: for the error of the update that then finds no
    #: outputs. (A class default too.)
    _dropped_by_load: Optional[str] = None

    def __init__(self, upstream_name: str, *, mix_layers: bool, grad_factor: float) -> None:
        SampleDocsModel.__init__(self, name=LISTENER, forward=listener_forward, init=listener_init,
                                 dims={"nL": None, "nO": None},
                                 attrs={TRAINED_ON: None, TRAINED_WITH: None, SERVES: None})
        self.upstream_name = upstream_name
        self.mix_layers = mix_layers
        self.grad_factor = grad_factor
        self._batch_id: Optional[int] = None
        # The batch's docs as the upstream embedded them (`batch_tokens`): None where not told.
        self._tokens: Optional[BatchTokens] = None
        self._outputs: Optional[list] = None
        self._backprop: Optional[Callable] = None
        self._upstream: Optional[str] = None
        # Components that added this listener, by identity: (their name then, the
        # component weakly). By identity: a component sourced into a second
        # pipeline is one object, listed by an upstream of each.
        self._claims: Dict[int, Tuple[str, Any]] = {}
        self._listening_component = None

    def set_dim(self, name: str, value: int, *, force: bool = False) -> None:
        """Only a load sets the dims without `force` (the upstream sizes them
        with it, `_size_listener`): a saved value that is not the upstream's
        means the weights being loaded were trained on another upstream. thinc
        said "Attempt to change dimension", naming neither the component nor
        the setting, and the component ran on, half loaded (its layers loaded
        before this one). It is refused until a load or initialize succeeds."""
        current = self._dims.get(name)
        if not force and name in ("nL", "nO") and current is not None and value != current:
            what = layers_text if name == "nL" else (lambda n: f"features of width {n}")
            upstream = upstream_named(self)
            self._load_refused = (
                f"{self.described()}: the weights being loaded were saved for {what(value)} of its upstream, and its "
                f"upstream {upstream!r} gives {what(current)}: load them into a pipeline whose {upstream!r} has the "
                "settings they were saved with (its encoder's `layers` and model, its combiner), or train this "
                "component again")
            raise ValueError(self._load_refused)
        super().set_dim(name, value, force=force)
        if not force and name == "nO":  # (the last of its dims a load sets: this one loaded)
            self._load_refused = None

    def described(self) -> str:
        """How errors name a listener: "[component] ContextualListener upstream = ...", with the
        component that holds it where an upstream lists it (spaCy tells a listener nothing of
        the component it serves)."""
        holders = [name for component in self._upstreams()
                   for name, nodes in getattr(component, "listener_map", {}).items() if any(n is self for n in nodes)]
        last = self._listening_component or self.attrs.get(SERVES)  # (the attr: as saved, where none linked it)
        if not holders and isinstance(last, str) and last:  # (an upstream renamed, gone or excluded: as last linked)
            holders = [last]
        where = f"[{holders[0]}] " if holders else ""
        return f"{where}ContextualListener upstream = {self.upstream_name!r}"

    @property
    def kind(self) -> str:
        return "layers" if self.mix_layers else "vectors"

    @classmethod
    def get_batch_id(cls, docs: List[Doc]) -> int:
        return sum(sum(token.orth for token in doc) for doc in docs)

    @staticmethod
    def batch_tokens(docs: List[Doc]) -> BatchTokens:
        """Each doc's text and token boundaries: the batch id (a sum over the
        words, as spaCy's listeners have) is the same for a batch retokenized so
        that its edits cancel out (a merge in one doc, the same split in
        another), whose rows would then be handed on by position to tokens
        they were not made for."""
        return tuple((doc.text, doc.to_array([IDX, LENGTH]).tobytes()) for doc in docs)

    def claim(self, component: Any, listening_component: Optional[str] = None) -> None:
        """`component` lists this listener, for `listening_component` (None: as before)."""
        # A new dict, the latest last: a reader in another thread copies the old one or this one.
        key = id(component)
        self._claims = {**{k: v for k, v in self._claims.items() if k != key},
                        key: (component.name, weakref.ref(component))}
        self._serving(listening_component)

    def pass_over(self, component: Any, listening_component: Optional[str] = None) -> None:
        """`component`, a ctxembed component before this listener's (`listening_component`,
        which errors then name), did not take it (`_passed_over`)."""
        self._serving(listening_component)
        # Entries of components collected since are dropped here: a pipeline built
        # again and again (a notebook, a sweep) does not grow the record.
        key = id(component)
        self._passed_over = (*(seen for seen in self._passed_over if seen[0] != key and seen[2]() is not None),
                             (key, component.name, weakref.ref(component)))

    def _serving(self, listening_component: Optional[str]) -> None:
        """`listening_component` (None: as before) is the component this listener serves (`SERVES`)."""
        self._listening_component = listening_component or self._listening_component
        if self._listening_component:
            self.attrs[SERVES] = self._listening_component

    def passed_over(self) -> List[str]:
        """The names of the components alive that passed this listener over
        under the name they have now (`pass_over`)."""
        return sorted({name for _, name, ref in self._passed_over
                       if (component := ref()) is not None and component.name == name})

    def _claimants(self) -> List[Any]:
        """The components alive that claimed this listener under the name they
        have now, where it listens to that name: linked to it now, or before
        the pipeline was linked again without it. (The claims are copied in one
        step: a relink in another thread adds claims while this listener
        predicts, and a dict changed while it is iterated raises.)"""
        return [component for claim, ref in list(self._claims.values()) if self.upstream_name in ("*", claim)
                and (component := ref()) is not None and component.name == claim]

    def renamed_upstreams(self) -> List[Tuple[str, str, Tuple[str, ...]]]:
        """(The name it linked this listener under, its name now, its
        `made_signatures`) of each component alive that linked it under the
        name it listens to and has another name now: it stores its outputs
        under its new name, and those under the old one are its own only if
        it made them before (`check_not_renamed`). spaCy renames a component with
        `rename_pipe`, and where another pipeline takes it in under another
        name (`add_pipe(source=..., name=...)`): one object in both, renamed
        in both. ("*" listens to whichever runs.)"""
        if self.upstream_name == "*":
            return []
        renamed = [(claim, component.name, component.made_signatures) for claim, ref in list(self._claims.values())
                   if claim == self.upstream_name and (component := ref()) is not None and component.name != claim]
        # (Pickled: as they were, until a component of the name links it again.)
        return renamed or ([] if self._claimants() else list(self._renamed))

    def check_not_renamed(self, renamed: List[Tuple[str, str, Tuple[str, ...]]], found: Optional[Dict[str, Any]],
                          stored: Optional[str]) -> None:
        """Where a component this listener was linked to has been renamed
        (`renamed_upstreams`), the doc's outputs under the old name must be
        those of a component it is linked to, by their signature: that one's
        made before the rename, or those of a component of the old name
        linked to it now. Others (another embedder given the old name: two
        sourced under each other's names) were read as its features. A doc
        without them, where a component of the old name is linked, is read
        as any other (`_zeros_for_sample`). `found`, `stored`: the doc's
        output under the name it listens to, and its signature (`_doc_output`)."""
        claimants = self._claimants()
        if claimants and found is None:
            return
        ours = [signature for component in claimants for signature in _signatures_of(component)]
        ours += [signature for _, _, made in renamed for signature in made]
        if _unlike(stored, ours, [_held_by_upstream(signature) for signature in ours]) is not None:
            raise ValueError(_renamed_error(self, renamed[-1], has=found is not None, signed=stored is not None))

    def _upstreams(self) -> List[Any]:
        """The components that list this listener now (a rename or relink drops old claims)."""
        return [component for component in self._claimants() if self in component.listeners]

    def linked_names(self) -> List[str]:
        """The names of the components that list this listener now, sorted."""
        return sorted({component.name for component in self._upstreams()})

    def source_name(self) -> Optional[str]:
        """The upstream component's name: the one named, or the one "*" matched."""
        if self.upstream_name != "*":
            return self.upstream_name
        live = self.linked_names()
        if len(live) > 1:
            raise ValueError(
                f"{self.described()} matches several ctxembed components ({', '.join(live)}): "
                "set upstream to the name of one of them"
            )
        return live[0] if live else None

    def ensure_dims(self) -> None:
        """Dims come from the upstream once it has its weights. spaCy does not
        initialise frozen components in `spacy train`, so a listener that is
        initialised before its upstream has run has the upstream load now."""
        if self.has_dim("nO") is True and self.has_dim("nL") is True:
            return
        for component in self._upstreams():
            component.ensure_loaded()
            return

    def upstream(self, docs: Optional[List[Doc]] = None) -> Any:
        """The upstream component now: the one this listener is linked to, or else
        the one that linked it last under the name it listens to (spaCy may link
        the pipeline again without this listener's component, as spacy train's
        init_nlp does with sourced components, whose docs still come from it);
        None where not known. A component sourced into another pipeline is
        linked to an upstream of each: the one whose outputs `docs` hold; of
        several that make the same (the same model), the one the head trained
        with, if there; else the one linked last."""
        try:
            name = self.source_name()
        except ValueError:  # "*" matches several: the forward pass says so
            return None
        found = [component for component in self._claimants() if name is None or component.name == name]
        if len(found) > 1 and docs:
            made = next((signature for signature in (stored_signature(doc, name) for doc in docs) if signature), None)
            found = [component for component in found if component.signature == made] or found
        if len(found) > 1:
            found = [component for component in found if self in component.listeners] or found
        if len(found) > 1:
            record = self.attrs.get(TRAINED_WITH)
            lineage = record.get("lineage") if isinstance(record, dict) else None
            found = [component for component in found if component.lineage == lineage] or found
        return found[-1] if found else None

    def held_weights(self, component: Any) -> str:
        """The fingerprint of `component`'s weights that this listener reads
        through: the encoder's, and for a listener of the vectors the combiner's."""
        encoder = component.encoder_fingerprint()
        return encoder if self.mix_layers else f"{encoder}+{component.combiner_fingerprint()}"

    def upstream_record(self, component: Any) -> Optional[Dict[str, Any]]:
        """What `component` makes now, as this listener's head records it
        (`TRAINED_WITH`); None before its weights are loaded."""
        features = component.listener_features()
        if features is None:
            return None
        return {"features": features, "weights": self.held_weights(component), "lineage": component.lineage,
                **self._signed(component)}

    def _signed(self, component: Any) -> Dict[str, Optional[str]]:
        """What `component`'s output signature, which its outputs on docs
        carry, says of its weights, as a record keeps it: `signed`, encoder
        and combiner together (for `ctxembed_from_trf` the combiner's alone:
        no transformer's), and `signed_encoder`, the encoder's alone (`ENCODER_WEIGHTS`);
        None before it loads."""
        signature = component.signature
        fields = {} if signature is None else signature_fields(signature)
        return {"signed": fields.get("weights"), "signed_encoder": fields.get(ENCODER_WEIGHTS)}

    def signed_held(self, record: Dict[str, Any], component: Any) -> Tuple[Optional[str], Optional[str]]:
        """(What `record` says, what `component`'s signature says now) of the
        weights this listener reads through: for one that mixes the layers,
        the encoder's alone where both say (a record or signature of an
        earlier version does not); else the encoder's and combiner's together."""
        now = self._signed(component)
        key = "signed_encoder" if self.mix_layers and record.get("signed_encoder") and now["signed_encoder"] \
            else "signed"
        return record.get(key), now[key]

    def note_saved_upstream(self, component: Any) -> None:
        """`component`, linked to this listener, is being saved: where the head
        was trained on it as it is now (its lineage, with the weights it
        trained on, or with weights that moved while it trained), record
        what its outputs' signature says of its weights now (`signed`), which
        a pipeline saved with both makes. Loaded without `component`
        (`exclude=[...]`), the listener holds docs embedded once to it
        (`outputs_check`): a head fine-tuned with its upstream has no other
        record of weights that moved until the last step, or until
        `spacy train` saved `model-best` under the averages. spaCy saves a
        pipeline's components in order, the upstream before its listeners'."""
        record = self.attrs.get(TRAINED_WITH)
        if not isinstance(record, dict) or record.get("untrained") or record.get("lineage") != component.lineage:
            return
        if record.get("weights") is not None and record["weights"] != self.held_weights(component):
            return  # (left behind by its upstream's training: refused next to it, and as excluded)
        signed = self._signed(component)
        if signed["signed"] is not None and any(value != record.get(key) for key, value in signed.items()):
            self.attrs[TRAINED_WITH] = {**record, **signed}

    def follow_lineage(self, old: Optional[str], new: str) -> None:
        """Its upstream took a training step, and its weights, of lineage `old`,
        are of lineage `new` now (`ContextualEmbedder._branch_lineage`): the
        record follows, being of this upstream. (A head trained with them as
        they move records no fingerprint, and is held to the lineage; one
        trained on them frozen is held to its fingerprint, which the step left
        behind, and is told that they moved since.)"""
        record = self.attrs.get(TRAINED_WITH)
        if isinstance(record, dict) and record.get("lineage") == old:
            self.attrs[TRAINED_WITH] = {**record, "lineage": new}

    def record(self) -> Any:
        """What the head was trained on (`TRAINED_WITH`), as it is now."""
        return self.attrs.get(TRAINED_WITH)

    def put_back_record(self, record: Any) -> None:
        """The record as it was before the upstream swapped in other weights
        (`use_params`), where a save inside the swap changed it."""
        if self.attrs.get(TRAINED_WITH) is not record:
            self.attrs[TRAINED_WITH] = record

    def outputs_check(self) -> Callable[[str], Optional[str]]:
        """What tells whether outputs stored on a doc under the upstream's name
        with a signature are the upstream's, for the prediction path, where
        the listener reads them from the docs: a function of the stored
        signature giving None where they are, else how they differ. Docs
        embedded by another pipeline (another checkpoint of the same width,
        other pooling or layers) and given to this component with its
        upstream disabled or excluded were read as its features.
        - An upstream linked and loaded: one it has made (`_signatures_of`,
          the latest `SIGNATURES_KEPT` weights) or of its model, but for
          quantization (int8 runs the same weights, as heads are not held to).
        - Else (excluded, or disabled and never loaded): what the head was
          trained on (`TRAINED_WITH`, `TRAINED_ON`): the features it is held
          to, the layers, and the weights where the record has them (frozen
          in training, or recorded when the upstream was saved with it:
          `note_saved_upstream`; not for heads saved before either). A head
          not trained yet is held to nothing.
        Next to a linked upstream the docs' outputs must be its own, whose
        weights' fingerprint covers the combiner too. Held to the record, a
        head that mixes the layers is held to the encoder's weights alone
        where the record and the docs' signature name them (`ENCODER_WEIGHTS`;
        earlier versions' do not): no combiner shapes the layers it reads."""
        ours = [signature for component in self._claimants() if component.loaded
                for signature in _signatures_of(component)]
        encoder_only = False
        if ours:
            expected = [_held_by_upstream(signature) for signature in ours]
        else:
            record = self.attrs.get(TRAINED_WITH)
            if not isinstance(record, dict) or record.get("untrained"):
                return lambda stored: None
            trained = record.get("features")
            held = (*HELD, *(() if self.mix_layers else ("combiner",)))
            fields = {key: value for key, value in (trained if isinstance(trained, dict) else {}).items()
                      if key in held}
            if self.attrs.get(TRAINED_ON) is not None:
                fields["layers"] = str(list(self.attrs[TRAINED_ON]))
            if record.get("signed"):
                fields["weights"] = record["signed"]
            if self.mix_layers and record.get("signed_encoder"):
                fields[ENCODER_WEIGHTS] = record["signed_encoder"]
            expected, encoder_only = [fields], self.mix_layers

        return lambda stored: _unlike(stored, ours, expected, encoder_only=encoder_only)

    def receive(self, batch_id: int, outputs: list, backprop: Callable, upstream: str,
                tokens: Optional[BatchTokens] = None, docs: Optional[Sequence[Doc]] = None) -> None:
        """The upstream's outputs for a training batch (`tokens`: its docs, `batch_tokens`;
        `docs`: the Doc objects it embedded, held weakly: see `note_annotated`)."""
        if self._batch_id == batch_id and self._outputs is not None and self._upstream != upstream:
            raise ValueError(
                f"{self.described()} receives from both "
                f"{self._upstream!r} and {upstream!r}: set upstream to one of them"
            )
        self._batch_id, self._outputs, self._backprop, self._upstream = batch_id, outputs, backprop, upstream
        self._tokens, self._superseded, self._dropped_by_load = tokens, False, None
        self._docs = None if docs is None else tuple(weakref.ref(doc) for doc in docs)

    def note_annotated(self, docs: Sequence[Doc]) -> None:
        """Its upstream annotated `docs` in training. A batch held for none of
        them was sent in an earlier `nlp.update` that this listener's
        component was left out of: it is superseded, and not read where the
        docs this listener is given hold the upstream's outputs
        (`drop_superseded_batch`: the upstream frozen and annotating in this
        update). Read by the same texts' batch id, it trained on outputs of
        weights the upstream has stepped since, and its gradient reached an
        upstream frozen now; on other docs, the update failed with
        "mismatched batch". Only marked here, since docs annotated between
        updates (`nlp(text)`, an evaluation) are not an update's: a loop that
        then updates this listener's component without the upstream, not
        annotating, still reads the batch. (Told by the docs annotated, not
        by those the listener gets: those need not be the objects the
        upstream embedded; spaCy's EntityLinker copies them.)"""
        if self._docs is None or self._batch_id is None:
            return
        held = {id(doc) for doc in (ref() for ref in self._docs) if doc is not None}
        if not any(id(doc) in held for doc in docs):
            self._superseded = True

    def drop_superseded_batch(self, docs: Sequence[Doc]) -> bool:
        """Before a training batch: drop the batch held where it is superseded
        (`note_annotated`) and `docs` hold the upstream's outputs, which are
        read instead; whether it did."""
        if not self._superseded:
            return False
        name = self.source_name()
        if all(_doc_output(doc, name)[1] is not None for doc in docs):
            self._forget_batch()
            return True
        return False

    def forget_batch_of(self, upstream: str) -> None:
        """Drop a training batch held from `upstream`, whose weights were loaded
        since (`from_bytes`, `from_disk`, `initialize`, or one past the component,
        noticed before its next step): its outputs are of the
        weights before, and its backprop callback would send their gradient to
        the loaded ones. A hand-written loop that then updates this listener's
        component without the upstream is told its docs hold no outputs,
        rather than training on the old weights' outputs."""
        if self._batch_id is not None and self._upstream == upstream:
            self._forget_batch()
            self._dropped_by_load = upstream

    def _forget_batch(self) -> None:
        self._batch_id, self._tokens, self._docs, self._outputs, self._backprop = None, None, None, None, None
        self._superseded = False

    def verify_inputs(self, docs: List[Doc]) -> None:
        batch_id = self.get_batch_id(docs)
        tokens = None if self._tokens is None else self.batch_tokens(docs)
        if batch_id == self._batch_id and tokens == self._tokens:
            return
        if tokens is not None and self._tokens is not None and [t for t, _ in tokens] == [t for t, _ in self._tokens]:
            raise ValueError(
                f"{self.described()}: the docs' tokens changed since the upstream {self._upstream!r} embedded them "
                "in this update (a component between them retokenizes, such as merge_entities in [training] "
                f"annotating_components), and a trained upstream's rows are for the tokens it embedded. Freeze "
                f"{self._upstream!r} and list it in annotating_components too (its stored outputs then follow the "
                f"merges and splits), or move the retokenizer before {self._upstream!r} or after this component"
            )
        raise ValueError(f"{self.described()}: mismatched batch ({batch_id} vs {self._batch_id}): the "
                         f"upstream {self._upstream!r} ran on other docs than this component")

    def __getstate__(self) -> Any:
        # A batch in flight (its outputs and backprop callback) and the weak
        # references to the upstream components do not travel (nor, as
        # SampleDocsModel drops them, the docs it was initialised on); the
        # component claims its listeners again when it is unpickled.
        own, slots = super().__getstate__()
        own.update(_batch_id=None, _tokens=None, _docs=None, _superseded=False, _dropped_by_load=None,
                   _outputs=None, _backprop=None,
                   _upstream=None, _claims={},
                   _passed_over=(),
                   _renamed=tuple(self.renamed_upstreams()))
        return own, slots

    def backprop_and_clear(self, d_outputs: list) -> List[Doc]:
        backprop = self._backprop
        self._forget_batch()
        if backprop is None:
            return []
        if self.grad_factor == 0:
            # Only "answered": a zero gradient would still count as one, and an
            # optimizer with weight decay would move the weights it reached.
            return backprop(None)
        if self.grad_factor != 1.0:
            d_outputs = [d * self.grad_factor for d in d_outputs]
        return backprop(d_outputs)


def listener_forward(model: ContextualListenerNode, docs: List[Doc], is_train: bool) -> Tuple[list, Callable]:
    if model._load_refused is not None:
        raise ValueError(f"{model._load_refused} (the load failed, and left this component's weights half loaded)")
    if is_train:  # (its component is initialized: see `forget_samples`)
        model.forget_samples()
    if is_train and model._batch_id is not None and not model.drop_superseded_batch(docs):
        model.verify_inputs(docs)
        return list(model._outputs or []), model.backprop_and_clear
    # The upstream is frozen (and annotating), or this is prediction: the
    # outputs are on the docs, and the gradient stops here.
    renamed = model.renamed_upstreams()
    model.ensure_dims()
    name = model.source_name()
    outputs = []
    checked: Dict[str, Optional[str]] = {}  # stored signature -> how it differs (found once a batch)
    differs: Optional[Callable[[str], Optional[str]]] = None
    for doc in docs:
        read, found, stored = _doc_output(doc, name)
        if renamed:
            model.check_not_renamed(renamed, found, stored)
        elif found is not None:
            if stored is not None and stored not in checked:
                differs = differs or model.outputs_check()
                checked[stored] = differs(stored)
            difference = None if stored is None else checked[stored]
            if difference is not None:
                raise ValueError(_foreign_error(model, read or model.upstream_name, difference))
        value = None if found is None else found.get(model.kind)
        uncovered = None if found is None else found.get("missing")
        if uncovered is not None and uncovered.any():
            # A doc joined from docs of which only some went through the upstream
            # (`Doc.from_docs`): the output's zero rows on the others' tokens are
            # features from nothing. (`token.vector` refuses them as well.)
            read = name or next(iter(get_outputs(doc)))  # (upstream "*": the doc's one output)
            raise MissingOutputs(f"{model.described()}: {uncovered_error(doc, read, uncovered)}")
        if value is None:
            if found is not None and model.kind == "layers":
                # (the upstream keeps its layers for the listeners linked to it, and
                # spaCy links them only when a pipeline is made or loaded)
                read = name or next(iter(get_outputs(doc)))  # (upstream "*": the doc's one output)
                raise ValueError(
                    f"{model.described()}: upstream {read!r} stored no layers on the doc, only vectors: it keeps "
                    "them for the listeners linked to it (or with store_layers = true), and spaCy links "
                    "listeners when a pipeline is made or loaded, not on enable_pipe. Load the pipeline without "
                    f"disabling this component, or set store_layers = true on {read!r}; or they were dropped "
                    "before this component (doc._.ctx_layers = None: a doc_cleaner before it, to move after it)"
                )
            if is_train:
                # (spaCy's `debug model` runs no upstream but its own tok2vec's
                # and transformer's, so a listener's component debugged alone lands here too;
                # so does an upstream disabled in training (`[nlp] disabled`), which this
                # listener cannot tell from one left out of annotating_components.)
                raise ValueError(
                    f"{model.described()}: doc has no {model.kind} from upstream {name or model.upstream_name!r}: "
                    "it did not run on the training docs before this component's update. In training, a frozen "
                    "ctxembed component must also be listed in [training] annotating_components, and a trained "
                    "one updated in the same nlp.update, and neither may be disabled ([nlp] disabled, "
                    "nlp.select_pipes, nlp.disable_pipe: nlp.update runs no disabled component, so listing it "
                    "in annotating_components does not help); a listening component updated on its own (its "
                    "update(), `spacy debug model`) has no upstream outputs to read" + _unlinked(model)
                    + _dropped_by_load(model)
                )
            others = sorted(get_outputs(doc)) if Doc.has_extension("ctx_outputs") else []
            if others and not model._upstreams():
                # The doc was annotated, under another name: the upstream was
                # renamed (rename_pipe, add_pipe(source=..., name=...)) or
                # another one ran. Zeros here would be silently wrong features.
                raise ValueError(
                    f"{model.described()}: doc has no {model.kind} from upstream {name or model.upstream_name!r}, "
                    f"but has outputs of {', '.join(map(repr, others))}; if the upstream component was renamed, "
                    "set the listener's upstream to its new name"
                )
            value = _zeros_for_sample(model, doc, name, in_training_batch=(
                model._batch_id is not None and model._batch_id == model.get_batch_id(docs)))
        outputs.append(model.ops.asarray(value))
    return outputs, lambda d_outputs: []


def _dropped_by_load(node: ContextualListenerNode) -> str:
    """What to add to a training error where the upstream sent this listener
    a batch and loaded weights before the listener's component read it
    (`forget_batch_of`): the load, perhaps in another thread, dropped it."""
    loaded = node._dropped_by_load
    if loaded is None:
        return ""
    return (f". {loaded!r} did send this listener its outputs for a batch in training, but its weights were loaded "
            "before this component read them (from_bytes, from_disk or initialize, here or in another thread), "
            "which dropped that batch: its outputs were of the weights before the load. Update "
            f"{loaded!r} again, with this component, after the load")


def _unlinked(node: ContextualListenerNode) -> str:
    """What to add to a training error where an upstream that listed this
    listener once does not now: spaCy linked the pipeline again without its
    component. `spacy train` does (init_nlp initializes with the sourced
    components disabled, and `Language.initialize` links only the enabled
    ones), so a sourced listening component next to a new trained upstream
    is never sent its outputs."""
    unlinked = [component.name for component in node._claimants() if node not in component.listeners]
    if not unlinked:
        return ""
    return (f". {', '.join(map(repr, unlinked))} does not list this listener now: spaCy linked the pipeline again "
            "while this component was disabled (spacy train initializes with sourced components disabled, so a "
            "sourced listening component is not linked to a trained upstream). Freeze the upstream and list it in "
            "[training] annotating_components, source it from the same pipeline with its listening components, "
            "or give the component a copy of its own (nlp.replace_listeners in its source pipeline)")


#: The signature fields a listener does not hold the docs' outputs to, next to
#: a linked upstream: int8 runs the same weights (as `HELD` leaves it out).
_NOT_HELD = ("quantization",)


def _held_by_upstream(signature: str) -> Dict[str, str]:
    """The fields of an upstream's signature that a doc's outputs are held to
    where the upstream is linked (all but `_NOT_HELD`)."""
    return {key: value for key, value in signature_fields(signature).items() if key not in _NOT_HELD}


def _unlike(stored: Optional[str], ours: Sequence[str], expected: Sequence[Dict[str, str]], *,
            encoder_only: bool = False) -> Optional[str]:
    """None where a doc's outputs signed `stored` are those `ours` names, or
    agree with one of `expected` (fields a listener holds them to) in every
    field both have (earlier versions wrote fewer, as `outputs` compares them);
    else how they differ from the first. The one comparison of a doc's
    outputs with what a listener reads, for a renamed upstream and others.
    `encoder_only`: for a head that mixes the layers, held to the encoder's
    weights alone where both name them (`_held_against`)."""
    if not stored:
        return "the outputs do not say what made them"
    if stored in ours:  # (of one process, the same string: compared field by field only where it is not)
        return None
    got = signature_fields(stored)
    differences = [[f"{key} {got[key]} vs {value}" for key, value in _held_against(want, got, encoder_only).items()
                    if key in got and got[key] != value]
                   for want in expected]
    if any(not difference for difference in differences):
        return None
    return "; ".join(differences[0]) if differences else f"nothing to compare {stored!r} with"


def _held_against(want: Dict[str, str], got: Dict[str, str], encoder_only: bool) -> Dict[str, str]:
    """The fields of `want` that a doc's signature fields `got` are held to.
    With `encoder_only`, where both name the encoder's weights alone, not
    all the weights ("weights", the combiner's too); where either lacks them
    (an earlier version's signature or record), "weights" as before, so the
    weights are never left unchecked."""
    if encoder_only and ENCODER_WEIGHTS in want and ENCODER_WEIGHTS in got:
        return {key: value for key, value in want.items() if key != "weights"}
    return want


def _signatures_of(component: Any) -> Tuple[str, ...]:
    """The signatures `component`'s outputs may have (`made_signatures`), its
    current one first; where those tell nothing (`ctxembed_from_trf`), its
    current one, as any other upstream's outputs are read."""
    current = component.signature  # (taken first: it is then one of those made)
    made = component.made_signatures
    return (current, *made) if made and current else (current,) if current else ()


def _renamed_error(node: ContextualListenerNode, renamed: Tuple[str, str, Tuple[str, ...]], *, has: bool,
                   signed: bool) -> str:
    was, now, made = renamed
    doc_has = (f"the doc has none under {was!r}" if not has else
               f"those under {was!r} on the doc do not say which model made them" if not signed else
               f"those under {was!r} on the doc are another model's" if made else
               f"those under {was!r} on the doc cannot be told to be its own (ctxembed_from_trf's outputs do not say "
               "which transformer made them)")
    return (
        f"{node.described()}: the component it was linked to as {was!r} is named {now!r} now, and stores its outputs "
        f"under {now!r}: {doc_has}. spaCy renames a component with nlp.rename_pipe, and "
        f"where another pipeline takes it in under another name (add_pipe({was!r}, source=..., name={now!r})): "
        "the two pipelines share one object, renamed in both. Source it under its own name, or from a copy of "
        f"this pipeline (spacy.load it again); or set this listener's upstream to {now!r}"
    )


def _foreign_error(node: ContextualListenerNode, name: str, difference: str) -> str:
    linked = any(component.loaded for component in node._claimants())
    than, run = ((f"{name!r} makes", f"run {name!r} on the docs (nlp.pipe(docs) with it enabled embeds them again)")
                 if linked else
                 ("this component was trained on", f"load the pipeline with {name!r} (not excluded) and run it on "
                  "the docs"))
    return (
        f"{node.described()}: the doc's outputs under {name!r} were made by another model or with other settings than "
        f"{than} ({difference}): a doc embedded by another pipeline (or by {name!r} before it was trained or "
        f"loaded again) and given to this component with {name!r} disabled or excluded, whose features would be "
        f"another model's. Embed the docs with this pipeline, or {run}"
    )


#: The record's fields of what the upstream's outputs' signature said of its
#: weights (`ContextualListenerNode._signed`).
_SIGNED = ("signed", "signed_encoder")


def _recorded_in_training(node: ContextualListenerNode, record: Any, component: Any) -> Optional[Dict[str, Any]]:
    """The record after a training step of the head on the upstream's outputs:
    the upstream's now, with the fingerprint of the weights it reads through
    while every step on this upstream was on those weights (frozen; from the
    first step on a new upstream, whatever the head trained on before); None
    once they may move under it (sent by an upstream in the same update
    whose weights train)."""
    moving = node._batch_id is not None and component.weights_train(combiner=not node.mix_layers)
    if moving and isinstance(record, dict) and record.get("weights") is None \
            and record.get("lineage") == component.lineage:
        # (Nothing to take again: no fingerprint per step. The weights a save
        # recorded (`note_saved_upstream`) are left behind by this step.)
        return record if all(record.get(key) is None for key in _SIGNED) else {**record, **dict.fromkeys(_SIGNED)}
    now = node.upstream_record(component)
    if now is None:
        return record
    new_upstream = not isinstance(record, dict) or record.get("lineage") != now["lineage"]
    kept = not moving and (new_upstream or record.get("weights") == now["weights"])
    return now if kept else {**now, "weights": None, **dict.fromkeys(_SIGNED)}


def _recorded_from_docs(node: ContextualListenerNode, docs: List[Doc]) -> Optional[Tuple[ContextualListenerNode, Any]]:
    """The record of a training step with no upstream in the pipeline (or one
    not loaded, which makes nothing here), on docs embedded once (`embed`'s
    shards read back) whose outputs are read from the docs: what their
    signature says made them (`from_docs`: the features,
    layers and weights a head is held to, as `outputs_check` and
    `check_trained_upstream` read them). Without it the head, trained on one
    model's features, kept no record, and read docs of any other model (or of
    other pooling or layers) afterwards, also beside them in a batch, as its
    own. Docs that say less than those it trained on before (an earlier
    version's outputs, with no weights) keep what the record says. None where
    the head holds the record of an upstream it trained with (the docs are
    held to that), or where the docs' outputs say nothing."""
    record = node.attrs.get(TRAINED_WITH)
    if isinstance(record, dict) and not record.get("untrained") and not record.get("from_docs"):
        return None
    try:
        name = node.source_name()
    except ValueError:  # ("*" matching several: the forward pass says so)
        return None
    signatures = list(dict.fromkeys(stored for stored in (_doc_output(doc, name)[2] for doc in docs) if stored))
    if not signatures:
        return None
    held = (*HELD, *(() if node.mix_layers else ("combiner",)), "layers", "weights",
            *((ENCODER_WEIGHTS,) if node.mix_layers else ()))
    fields: Dict[str, str] = {}
    for signature in signatures:
        # Each against every field of those before: a signature of an earlier
        # version (no weights) first in the batch held the others to less.
        difference = _unlike(signature, [], [{key: value for key, value in fields.items() if key in held}],
                             encoder_only=node.mix_layers)
        if difference is not None:
            read = name or node.upstream_name
            raise ValueError(
                f"{node.described()}: the docs of this training batch hold outputs under {read!r} of different "
                f"models or settings ({difference}), and the component would learn from both as one model's "
                "features. Embed all its training docs with one pipeline"
            )
        fields = {**signature_fields(signature), **fields}
    try:
        layers = srsly.json_loads(fields.get("layers", "null"))
    except ValueError:
        layers = None
    if not (isinstance(layers, list) and all(isinstance(i, int) for i in layers)):
        layers = None
    features = {key: value for key, value in fields.items() if key not in ("weights", ENCODER_WEIGHTS, "layers")}
    signed = {"signed": fields.get("weights"), "signed_encoder": fields.get(ENCODER_WEIGHTS)}
    if isinstance(record, dict) and record.get("from_docs"):
        # Docs that say less (signed by an earlier version: no weights; fields
        # missing or unreadable) keep what the docs trained on before said:
        # the forward pass refuses those that say otherwise.
        before = record.get("features")
        features = {**(before if isinstance(before, dict) else {}), **features}
        signed = {key: value or record.get(key) for key, value in signed.items()}
        layers = layers if layers is not None else record.get("layers")
    return node, {"features": features, "weights": None, "lineage": None, **signed,
                  "layers": layers, "from_docs": True}


def listener_init(model: ContextualListenerNode, X: Optional[List[Doc]] = None, Y=None) -> None:
    model._load_refused = None
    if X is not None:
        model.remember_samples(X)
    # The head is made for the upstream's layers now (saved with its weights),
    # and sized by them: an upstream not loaded yet (spaCy does not initialise
    # frozen components; a component initialised on its own) loads first, and
    # its load sizes this listener (`_size_listener`).
    for component in model._upstreams():
        component.ensure_loaded()
    upstream = model.upstream()
    model.attrs[TRAINED_ON] = None if upstream is None else selected_layers(upstream.encoder)
    record = None if upstream is None else model.upstream_record(upstream)
    # Not trained yet: a component whose updates all skip (spaCy's ner, parser
    # on batches without their annotation) predicts on whatever its upstream's
    # weights have become in the meantime, as any untrained head would.
    model.attrs[TRAINED_WITH] = None if record is None else {**record, "untrained": True}


def _doc_output(doc: Doc, name: Optional[str]) -> Tuple[Optional[str], Optional[Dict[str, Any]], Optional[str]]:
    """(The name read, the doc's output under it, the signature stored with it):
    `name`'s, or with None (upstream "*") the doc's one output's."""
    return read_output(doc, name) if Doc.has_extension("ctx_outputs") else (name, None, None)


def _zeros_for_sample(model: ContextualListenerNode, doc: Doc, name: Optional[str], *, in_training_batch: bool):
    """Zeros of the right shape for a doc no upstream annotated, where that is
    expected: one of the docs spaCy initialises the listening component on
    (as spaCy's Tok2VecListener gives zeros there). Anywhere else zeros would
    be features from nothing: the upstream is missing (excluded, or not
    before this component: no component claimed this listener; the dims a
    loaded pipeline restores from its bytes say nothing about that) or did
    not run on the doc (disabled)."""
    if not model._upstreams() or model.has_dim("nO") is not True or model.has_dim("nL") is not True:
        # spaCy links a listener to a component of the name it gives, and only to one before it.
        others = model.passed_over()
        before = f" (the ctxembed components before it: {', '.join(map(repr, others))})" if others else ""
        upstream = "NAME" if model.upstream_name == "*" else repr(model.upstream_name)  # (placeholders unquoted)
        raise ValueError(
            f"{model.described()}: no ctxembed component of that name "
            f"comes before this listener's component in the pipeline{before}; set upstream to the name of an "
            "earlier ctxembed component (or \"*\" for the only one), or move that component before it "
            "(a pipeline loaded with exclude=[...] has no excluded component)" + (
                "; to train it without one, on docs embedded once (embed's output), read them with "
                f"@readers = \"{READER}\" in [corpora.train] and [corpora.dev]: "
                "spacy.Corpus.v1 gives the docs it trains on none of their outputs; to run or evaluate one trained "
                "so, add the embedder its docs had back before it (nlp.add_pipe("
                f"{upstream}, source=spacy.load(EMBEDDER), first=True))" if not others else "")
        )
    if not model.is_sample(doc) and in_training_batch:
        # The upstream is being trained on these docs (its update sent this
        # listener this batch), but this component predicts: it is frozen and
        # annotating. (A batch id alone could be a stale one, of a batch that
        # this listener's component skipped.)
        raise ValueError(
            f"{model.described()}: doc has no {model.kind} from upstream "
            f"{name!r}, which is being trained but does not annotate the training docs, while this listener's "
            f"component predicts on them (it is in [training] annotating_components and not trained); add "
            f"{name!r} to [training] annotating_components too, or give this component its own copy of the "
            f"embedder with nlp.replace_listeners({name!r}, ...)"
        )
    if not model.is_sample(doc):
        raise ValueError(
            f"{model.described()}: doc has no {model.kind} from upstream "
            f"{name!r}, which did not run on it: it is disabled (spacy.load(..., disable=[...]), "
            f"nlp.select_pipes, nlp.disable_pipe; nlp.enable_pipe({name!r}) enables it), or it is not in the "
            "pipeline that ran this component (" + _sourced_away(name) + "), or the doc did not "
            "go through the pipeline (run nlp(text), not this component alone), or its outputs were dropped "
            "before this component (doc._.ctx_outputs = None: a doc_cleaner before it, to move after it), or, "
            "in training, this component annotates the training docs ([training] annotating_components, "
            f"nlp.update(annotates=[...])) and {name!r} is not listed there with it"
        )
    if model.mix_layers:
        return model.ops.alloc3f(model.get_dim("nL"), len(doc), model.get_dim("nO"))
    return model.ops.alloc2f(len(doc), model.get_dim("nO"))


def _sourced_away(name: Optional[str]) -> str:
    """Why a listener may be linked to an upstream that is not in the pipeline
    running its component. spaCy shares a sourced component: taken into
    another pipeline (`nlp.add_pipe(..., source=...)`), it is one object in
    both, and the source's upstream still lists its listener, whatever the
    new pipeline holds; the listener cannot tell which pipeline runs it."""
    return (f"a component taken into another pipeline with nlp.add_pipe(..., source=...) is one object in both, "
            f"and still listens to {name!r} of its source pipeline: add a ctxembed component before it in this "
            f"one (source {name!r} with it), or give it a copy of its own in its source pipeline first "
            "(nlp.replace_listeners)")


#: The head attr that holds its `mix_layers` (a `SavedSetting`): written with its
#: bytes, and held to the config's when they load (absent in older bytes).
MIXES = "mix_layers"


class SavedSetting(FromConfig):
    """A head's setting that its saved weights were made for: bytes saved with
    another value are refused as they load (`_refuse_other_setting`), not loaded
    into the head the edited config built."""

    __slots__ = ()


@deserialize_attr.register(SavedSetting)
def _refuse_other_setting(current: SavedSetting, saved: bytes, name: str, model: Model) -> SavedSetting:
    """thinc loads a node's attrs after its dims and before its layers: an edited
    `mix_layers` in a saved pipeline's config.cfg is refused here, before thinc
    puts the saved nodes in the places of others (a KeyError, or "Attempt to
    change dimension", naming neither the component nor the setting). (A
    listener's head of another `mix_layers` has another number of nodes, which
    thinc refuses before any node loads: "mismatched structure".)"""
    try:
        value = srsly.msgpack_loads(saved)
    except Exception:  # (bytes of another layout: nothing to compare with)
        value = None
    if isinstance(value, bool) and value != current.value and isinstance(model, ListenerHead):
        raise model.refused_edit(name, current.value, value)
    return SavedSetting(current.value, saved=value)


class ListenerHead(Model):
    """The node `_head` builds: its `width` (`nO`) and `mix_layers` are the
    config's, and weights saved with others are refused by name as they load:
    a saved pipeline's config.cfg may be edited. The head is the first node of
    its own that thinc loads (in the component's model, breadth first), so
    nothing of it is loaded when it refuses."""

    def set_dim(self, name: str, value: int, *, force: bool = False) -> None:
        current = self._dims.get(name)
        if not force and name == "nO" and current is not None and value != current:
            raise self.refused_edit("width", current, value)
        super().set_dim(name, value, force=force)

    def refused_edit(self, setting: str, current: Any, saved: Any) -> SettingError:
        """The error of a load of weights saved with `setting` = `saved` into this
        head, built with `current`: the listener, with the component it serves
        where it is linked (`described`), or the copy that replace_listeners made."""
        parts = _listener_parts(self)
        what = "put back" if setting == "width" else "set"
        fix = (f"{what} {setting} = {_cfg_text(saved)} in the saved pipeline's config.cfg, or train this component "
               "again")
        if parts is None:
            return bad_setting("ContextualTok2Vec", setting, current,
                               f"this component's weights were saved with {setting} = {_cfg_text(saved)} (the "
                               f"component that nlp.replace_listeners gave this copy of the embedder): {fix}")
        return SettingError(f"{parts[0].described()}: {setting} = {_cfg_text(current)} in the config, but this "
                            f"component's weights were saved with {setting} = {_cfg_text(saved)}: {fix}")


def _cfg_text(value: Any) -> str:
    """`value` as config.cfg writes it (`mix_layers = false`)."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _delegate(model: Model, docs: List[Doc], is_train: bool):
    parts = _listener_parts(model)
    recorded: Optional[Tuple[ContextualListenerNode, Any]] = None
    if parts is not None:
        node = parts[0]
        node.ensure_dims()  # (a frozen upstream may not have loaded yet)
        upstream = node.upstream(docs)  # (found once a batch, for both checks)
        check_trained_dims(parts, upstream)
        if not is_train:
            check_trained_upstream(node, upstream)
        elif upstream is not None and upstream.loaded:  # (not its signature: no fingerprint per step)
            node.drop_superseded_batch(docs)  # (first: a superseded batch does not move the weights read)
            recorded = node, _recorded_in_training(node, node.attrs.get(TRAINED_WITH), upstream)
        else:
            # No upstream, or one not loaded (sourced next to this component and
            # left out of the update): the head trains on the docs' outputs, and
            # records what made them. Kept as it was, a record of a head not
            # trained yet held it to nothing once that upstream loaded.
            recorded = _recorded_from_docs(node, docs)
    check_saved_combiners(model)
    Y, backprop = model.layers[0](docs, is_train)
    if recorded is None:
        return Y, backprop

    def backward(dY):
        # In training the head learns what its upstream makes now, and records
        # it once its gradient comes back (an update may fail before that).
        node, record = recorded
        node.attrs[TRAINED_WITH] = record
        if isinstance(record, dict) and record.get("from_docs"):
            node.attrs[TRAINED_ON] = record.get("layers")
        return backprop(dY)

    return Y, backward


def _listener_parts(head: Model) -> Optional[Tuple[ContextualListenerNode, Optional[Model], Model, List[Model]]]:
    """The listener node of a head `_head` built, its scalar mix (None without
    `mix_layers`), the projection, and the `embed` layers concatenated to the
    mix; None for a head without a listener node (ContextualTok2Vec,
    ContextualListener.v1). The node is the first layer of the first layer
    ... of the head, so this looks at a few layers, not the whole model."""
    inner = head.layers[0]  # chain(features, with_array(Linear))
    parent, node = inner, inner.layers[0]
    embeds: List[Model] = []
    while not isinstance(node, ContextualListenerNode):
        if not node.layers:
            return None
        if node._func is _concatenate_forward:
            # concatenate(mixed, embed): thinc flattens a concatenated
            # concatenate, so the embed may be several layers.
            embeds = node.layers[1:]
        parent, node = node, node.layers[0]
    mix = parent.layers[1] if parent is not inner and len(parent.layers) > 1 else None
    if mix is not None and built_as(mix) != "scalar_mix":
        mix = None  # concatenate(node, embed): no mix
    return node, mix, inner.layers[-1].layers[0], embeds


def _init_inner(model: Model, X=None, Y=None) -> None:
    model.layers[0].initialize(X=X)


def _init_v1(model: Model, X=None, Y=None) -> None:
    # spaCy initialises downstream components on docs the upstream has not
    # annotated yet, so every dim comes from the config, not from X. Those
    # docs (and only those) get zeros from the read layer.
    if X is not None:
        for node in model.walk():
            if isinstance(node, SampleDocsModel):
                node.remember_samples(X)
    model.layers[0].initialize()
