"""A bounded cache of per-doc layer stacks, for training on a frozen encoder.

Every epoch a frozen, annotating embedder would recompute the same layers for
the same training docs. With `cache_mb > 0` the component keeps them in an
in-memory LRU bounded in bytes. The cache holds host (numpy) arrays, counted
by their host bytes; a hit is moved to the current device when used, so a
GPU cache never holds GPU memory.

Entries are keyed by everything the output depends on: the doc's text, its
token boundaries and its sentence boundaries (ELMo embeds each sentence on
its own), the encoder's identity (every setting and a fingerprint of its
weights, as loaded; after a training step, a count of the steps: the component
empties the cache then) and the device it computes on, so a changed model,
setting or device can never hit a stale entry.
"""
import hashlib
import json
import threading
from collections import OrderedDict
from typing import Hashable, Optional

import numpy
from spacy.attrs import LENGTH, SENT_START, SPACY
from spacy.tokens import Doc
from thinc.api import Model

from ..models.torch_bridge import encoder_shim
from ..settings import config_value

#: What an entry costs besides its array's data: the array object, the key and
#: the LRU's node (measured: ~400 bytes). Counted, so that many small docs stay
#: within `max_bytes` too.
ENTRY_OVERHEAD = 512


class FeatureCache:
    """LRU map from keys to host arrays, holding at most `max_bytes` (array data
    plus `ENTRY_OVERHEAD` per entry)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, numpy.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def after_fork(self) -> None:
        """In a forked process: a lock of its own (the parent's may have been held
        by a thread the child does not have). The entries stay: they are data."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Optional[numpy.ndarray]:
        """A copy of the cached host array (callers may modify it), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                return None
            self._entries.move_to_end(key)
            return value.copy()

    def put(self, key: Hashable, value: numpy.ndarray) -> None:
        """Keep a host copy of `value` (numpy)."""
        if not isinstance(value, numpy.ndarray):
            raise TypeError(f"the feature cache holds host arrays, got {type(value).__name__}")
        with self._lock:
            if value.nbytes + ENTRY_OVERHEAD > self.max_bytes or key in self._entries:
                return
            self._entries[key] = value.copy()
            self.nbytes += value.nbytes + ENTRY_OVERHEAD
            while self.nbytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.nbytes -= evicted.nbytes + ENTRY_OVERHEAD

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0


def cacheable(doc: Doc) -> bool:
    """Whether `doc_key` says all the encoder sees of `doc`: not where a user hook
    gives `doc.sents` boundaries that its SENT_START array does not hold."""
    return "sents" not in doc.user_hooks


def doc_key(doc: Doc) -> bytes:
    """What an encoder sees of a doc: its text, its tokens and its sentence boundaries.

    Tokens by their lengths and trailing spaces, as the encoders place them
    (`TokenTable`), not by IDX: `Doc.from_array` with SPACY changes the text
    and leaves IDX stale, and such a doc, run through the component again
    (as an edit not followed asks), took the entry of another doc with the
    same text, IDX and lengths but other tokens (" b" against "b ")."""
    digest = hashlib.blake2b(doc.text.encode("utf8"), digest_size=16)
    if len(doc):
        digest.update(numpy.ascontiguousarray(doc.to_array([LENGTH, SPACY, SENT_START]), dtype="int64").tobytes())
    return digest.digest()


def encoder_identity(encoder: Model) -> str:
    """Every setting of the encoder plus a fingerprint of its weights."""
    digest = hashlib.blake2b(digest_size=16)
    for node in encoder.walk():
        digest.update(node.name.encode("utf8"))
        settings = config_value(node.attrs.get("settings"))  # (TrfEncoder's)
        if settings is not None:
            digest.update(json.dumps(settings, sort_keys=True, default=str).encode("utf8"))
    shim = encoder_shim(encoder)
    if shim is not None:  # (BERT's, ELMo's)
        digest.update(json.dumps(shim.settings, sort_keys=True, default=str).encode("utf8"))
        module = shim._model
        if module is not None:
            # The same settings and weights can still give other outputs: another
            # tokenizer (another window), another ELMo options file (clipping).
            digest.update(shim.cache_identity().encode("utf8"))
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode("utf8"))
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
