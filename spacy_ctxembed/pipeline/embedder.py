"""The pipeline component shared by every factory.

Its model maps docs to per-doc layer stacks (n_layers, n_tokens, width);
the component combines them (`combine`), and writes `doc._.ctx_vectors`,
`doc.tensor`, `doc._.ctx_layers` and the vector hooks. The embedder is
frozen: `update` leaves it alone, so it serves as pure features.
"""
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union, cast

import srsly
from spacy.language import Language
from spacy.pipeline import TrainablePipe
from spacy.tokens import Doc
from spacy.training import Example
from spacy.util import ensure_path, from_disk, to_disk
from spacy.vocab import Vocab

from ..errors import check_positive
from ..layers import build_combiner
from ..settings import check_component_settings
from ..types import DocLayers, DocVectors, EmbedderModel, SavableShim
from .extensions import LAYERS, VECTORS, install_extensions, set_vector_hooks
from .feature_cache import FeatureCache, doc_key, model_identity

#: Subfolder of the component's directory where a model with weights saves them.
MODEL_DIR = "model"


class ContextualEmbedder(TrainablePipe):
    """Attach contextual token vectors computed by `model` to each doc."""

    def __init__(
        self,
        vocab: Vocab,
        model: EmbedderModel,
        name: str,
        *,
        factory: str,
        pooling: Optional[str] = "mean",
        layers: Sequence[int] = (-1,),
        combine: str = "mean",
        store_layers: bool = False,
        set_doc_tensor: bool = True,
        cache_mb: int = 0,
    ) -> None:
        check_component_settings(factory, pooling=pooling, combine=combine, layers=layers)
        if cache_mb:
            check_positive(factory, "cache_mb", cache_mb, "number of megabytes (0: no cache)")
        self.vocab = vocab
        self.model = model
        self.name = name
        self.factory = factory
        self.cfg: Dict[str, object] = {
            "pooling": pooling,
            "layers": list(layers),
            "combine": combine,
            "store_layers": store_layers,
            "set_doc_tensor": set_doc_tensor,
            "cache_mb": cache_mb,
        }
        # The model runs only the layers and pooling the component asks for.
        model.attrs["layers"] = tuple(layers)
        model.attrs["pooling"] = pooling
        self.combiner = build_combiner(factory, combine, n_layers=len(layers))
        # Layers of docs already seen, for training on a frozen embedder.
        self.cache = FeatureCache(cache_mb * 2**20) if cache_mb else None
        self._identity = ""
        self._loaded = False
        install_extensions()

    def initialize(
        self, get_examples: Optional[Callable[[], Iterable[Example]]] = None, *, nlp: Optional[Language] = None
    ) -> None:
        """Load the pretrained weights and check the settings against the model."""
        self.model.initialize()
        self.combiner.initialize()
        self._model_loaded()

    def _model_loaded(self) -> None:
        self._loaded = True
        if self.cache is not None:
            identity = model_identity(self.model)
            if identity != self._identity:
                self.cache.clear()  # entries of another model: free the memory
            self._identity = identity

    def predict(self, docs: Iterable[Doc]) -> Tuple[List[DocLayers], List[DocVectors]]:
        docs = list(docs)
        if not self._loaded:
            # A pretrained embedder needs no data to initialise, so plain
            # `nlp.add_pipe(...)` followed by `nlp(text)` just works.
            self.initialize()
        layers = self._layers(docs)
        return layers, self.combiner.predict(layers)

    def _layers(self, docs: List[Doc]) -> List[DocLayers]:
        if self.cache is None:
            return self.model.predict(docs)
        keys = [(self._identity, doc_key(doc)) for doc in docs]
        cached = [self.cache.get(key) for key in keys]
        missing = [i for i, layers in enumerate(cached) if layers is None]
        if missing:
            fresh = self.model.predict([docs[i] for i in missing])
            for i, layers in zip(missing, fresh):
                self.cache.put(keys[i], layers)
                cached[i] = layers
        return cast(List[DocLayers], cached)

    def set_annotations(self, docs: Iterable[Doc], predictions: Tuple[List[DocLayers], List[DocVectors]]) -> None:
        for doc, layers, vectors in zip(docs, *predictions):
            doc._.set(VECTORS, vectors)
            if self.cfg["set_doc_tensor"]:
                # spaCy's stub says numpy; on GPU this is cupy, as with spaCy's tok2vec.
                doc.tensor = vectors  # type: ignore[assignment]
            if self.cfg["store_layers"]:
                doc._.set(LAYERS, layers)
            set_vector_hooks(doc)

    def update(
        self,
        examples: Iterable[Example],
        *,
        drop: float = 0.0,
        sgd=None,
        losses: Optional[Dict[str, float]] = None,
    ) -> Dict[str, float]:
        """The embedder is frozen: nothing to learn from annotations."""
        result: Dict[str, float] = {} if losses is None else losses
        result.setdefault(self.name, 0.0)
        return result

    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        """Write cfg, the combiner's weights and the model's own files (safetensors, no pickles)."""
        path = ensure_path(path)
        if not self._loaded:
            self.initialize()
        serializers = {
            "cfg": lambda p: srsly.write_json(p, self.cfg),
            "combiner": lambda p: p.open("wb").write(self.combiner.to_bytes()),
        }
        if self.model.shims:
            serializers[MODEL_DIR] = lambda p: cast(SavableShim, self.model.shims[0]).save(p)
        to_disk(path, serializers, exclude)

    def from_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> "ContextualEmbedder":
        path = ensure_path(path)
        deserializers: Dict[str, Callable[[Path], None]] = {
            "combiner": self._load_combiner,
            MODEL_DIR: self._load_model_dir,
        }
        from_disk(path, deserializers, exclude)
        self._model_loaded()
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        """Pack `to_disk`'s files into one msgpack blob (no pickles)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.to_disk(tmp, exclude=exclude)
            root = Path(tmp)
            files = {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}
        return srsly.msgpack_dumps(files)

    def from_bytes(self, bytes_data: bytes, *, exclude: Iterable[str] = tuple()) -> "ContextualEmbedder":
        import tempfile

        files = srsly.msgpack_loads(bytes_data)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for rel, data in files.items():
                target = (root / rel).resolve()
                if root.resolve() not in target.parents:
                    raise ValueError(f"[{self.factory}] refusing to unpack {rel!r} outside the component")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            self.from_disk(root, exclude=exclude)
        return self

    def _load_combiner(self, path: Path) -> None:
        self.combiner.from_bytes(path.read_bytes())

    def _load_model_dir(self, path: Path) -> None:
        if path.exists():
            self.model.attrs["source_dir"] = str(path)
        self.model.initialize()
