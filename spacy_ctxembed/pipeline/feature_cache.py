"""A bounded cache of per-doc layer stacks, for training on a frozen embedder.

Every epoch a frozen, annotating embedder would recompute the same layers for
the same training docs. With `cache_mb > 0` the component keeps them in an
in-memory LRU bounded in bytes. Entries are keyed by the doc's content (text
and token boundaries) and the embedder's identity (its settings and a
fingerprint of its weights), so a changed model or changed settings can never
hit a stale entry.
"""
import hashlib
import json
from collections import OrderedDict
from typing import Hashable, Optional

import numpy
from spacy.tokens import Doc
from thinc.api import Model

from ..types import DocLayers


class FeatureCache:
    """LRU map from keys to arrays, holding at most `max_bytes` of array data."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, DocLayers] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Optional[DocLayers]:
        """A copy of the cached array (callers may modify it), or None."""
        value = self._entries.get(key)
        if value is None:
            return None
        self._entries.move_to_end(key)
        return value.copy()

    def put(self, key: Hashable, value: DocLayers) -> None:
        if value.nbytes > self.max_bytes or key in self._entries:
            return
        self._entries[key] = value.copy()
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def doc_key(doc: Doc) -> bytes:
    """What the embedder sees of a doc: its text and where its tokens are."""
    digest = hashlib.blake2b(doc.text.encode("utf8"), digest_size=16)
    bounds = numpy.fromiter((i for t in doc for i in (t.idx, len(t))), dtype="int64", count=2 * len(doc))
    digest.update(bounds.tobytes())
    return digest.digest()


def model_identity(model: Model) -> str:
    """The embedder's settings plus a fingerprint of its weights."""
    settings = {k: v for k, v in model.attrs.items() if k != "source_dir"}
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode("utf8"), digest_size=16)
    for shim in model.shims:
        for name, tensor in sorted(shim._model.state_dict().items()):
            digest.update(name.encode("utf8"))
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
