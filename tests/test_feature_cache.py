"""The training feature cache: identical features, bounded size, no stale entries."""
import numpy
import pytest
import spacy
import torch

from spacy_ctxembed.pipeline.feature_cache import ENTRY_OVERHEAD, FeatureCache, doc_key

from .conftest import bert_module, ctx_config

TEXTS = ["I ran to the park .", "I ran significance tests .", "Nothing else ran ."]


def _nlp(model_dir, cache_mb=64, **settings):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", config=ctx_config(store_layers=True, cache_mb=cache_mb, name=model_dir, **settings))
    nlp.initialize()
    return nlp


def _elmo_nlp(options_file, weight_file, cache_mb):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options_file), weight_file=str(weight_file),
                                                    cache_mb=cache_mb))
    nlp.initialize()
    return nlp


def _count_forwards(nlp):
    calls = []
    bert_module(nlp.get_pipe("ctxembed_bert").model).register_forward_hook(
        lambda mod, args, out: calls.append(1))
    return calls


def test_second_epoch_hits_and_gives_identical_features(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir)
    fresh = [d._.ctx_layers for d in _nlp(tiny_bert_dir, cache_mb=0).pipe(TEXTS)]
    calls = _count_forwards(nlp)
    first = [d._.ctx_layers for d in nlp.pipe(TEXTS)]
    n_first = len(calls)
    second = [d._.ctx_layers for d in nlp.pipe(TEXTS)]
    assert n_first > 0 and len(calls) == n_first  # the second epoch never runs the model
    for a, b, c in zip(first, second, fresh):
        numpy.testing.assert_array_equal(a, b)
        numpy.testing.assert_allclose(b, c, atol=1e-6)
    with pytest.raises(ValueError, match="read-only"):  # outputs, and so the cache, are not rewritten in place
        second[0][:] = 0
    numpy.testing.assert_array_equal(nlp(TEXTS[0])._.ctx_layers, first[0])
    assert len(nlp.get_pipe("ctxembed_bert").cache) == len(TEXTS)


def test_changed_tokens_or_text_miss(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir)
    a = nlp.make_doc("New York is big")
    b = spacy.tokens.Doc(nlp.vocab, words=["New York", "is", "big"])
    c = nlp.make_doc("New York is bigger")
    assert len({doc_key(a), doc_key(b), doc_key(c)}) == 3


def test_cache_is_bounded():
    cache = FeatureCache(max_bytes=2000)
    for i in range(50):
        cache.put(i, numpy.zeros((1, 2, 50), dtype="float32"))  # 400 bytes of data each
        assert cache.nbytes <= 2000
    assert len(cache) == 2 and 49 in cache and 48 in cache and 0 not in cache
    cache.put("huge", numpy.zeros((1, 1, 1000), dtype="float32"))  # larger than the budget
    assert "huge" not in cache and cache.nbytes <= 2000


def test_what_goes_in_or_comes_out_is_a_copy():
    # A caller writing into what it put or got (annotations are edited in
    # place) must never change what the next hit serves.
    cache = FeatureCache(max_bytes=2**20)
    stored = numpy.arange(12, dtype="float32").reshape(3, 4)
    cache.put("k", stored)
    stored[:] = -1
    served = cache.get("k")
    numpy.testing.assert_array_equal(served, numpy.arange(12, dtype="float32").reshape(3, 4))
    served[:] = -2
    numpy.testing.assert_array_equal(cache.get("k"), numpy.arange(12, dtype="float32").reshape(3, 4))


def test_many_small_entries_stay_within_the_budget():
    """Only the arrays' data was counted: 8,192 one-token entries under a 1 MB
    budget held 4 MB (the array objects, keys and the LRU's nodes)."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = FeatureCache(max_bytes=2**20)
        for i in range(20_000):
            cache.put((f"model-{i}", bytes(16)), numpy.zeros((1, 1, 32), dtype="float32"))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) < 20_000 and held <= 1.1 * 2**20


def _swapped(shim, factor=1.5):
    """An optimizer's averages for `shim`'s weights, in thinc's key form for PyTorch shims."""
    from thinc.api import torch2xp

    return {f"pytorch_{shim.id}_{name}": torch2xp(value * factor) for name, value in shim._model.state_dict().items()}


def test_use_params_never_serves_entries_of_other_weights(tiny_bert_dir):
    """spaCy evaluates a fine-tuned model under `nlp.use_params(averages)`: inside the
    block the cache served the vectors of the weights before it, and after it the
    vectors of the averaged weights."""
    cached, plain = _nlp(tiny_bert_dir), _nlp(tiny_bert_dir, cache_mb=0)
    shims = [nlp.get_pipe("ctxembed_bert").encoder.shims[0] for nlp in (cached, plain)]
    seen_before, seen_inside = TEXTS[0], TEXTS[1]
    cached(seen_before)
    with cached.use_params(_swapped(shims[0])), plain.use_params(_swapped(shims[1])):
        for text in (seen_before, seen_inside):
            expected = plain(text)._.ctx_layers
            numpy.testing.assert_allclose(cached(text)._.ctx_layers, expected, atol=1e-6)
    for text in (seen_before, seen_inside):
        numpy.testing.assert_allclose(cached(text)._.ctx_layers, plain(text)._.ctx_layers, atol=1e-6)
    assert not numpy.allclose(plain(seen_inside)._.ctx_layers, expected)  # the premise: the weights mattered
    # Averages that do not name the encoder's weights (a frozen encoder's) keep the cache.
    assert len(cached.get_pipe("ctxembed_bert").cache) > 0
    with cached.use_params({("other", "W"): numpy.zeros(1)}):
        assert len(cached.get_pipe("ctxembed_bert").cache) > 0


def test_loading_another_tokenizer_or_elmo_options_never_hits(tiny_bert_dir, tmp_path):
    """The same settings and weights with another tokenizer (here another
    model_max_length: other windows), or ELMo weights with another options file
    (clipping), loaded into a component: its cache served the old vectors."""
    import copy
    import json
    import shutil

    from .elmo_fixture import SMALL, write_elmo_fixture

    text = " ".join(["I ran to the park and then I ran some significance tests ."] * 3)
    short = tmp_path / "short"
    shutil.copytree(tiny_bert_dir, short)
    tokenizer_config = json.loads((short / "tokenizer_config.json").read_text())
    tokenizer_config["model_max_length"] = 16
    (short / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))

    other = copy.deepcopy(SMALL)
    other["lstm"]["cell_clip"] = other["lstm"]["proj_clip"] = 0.05

    def elmo(directory, options=None):
        return _elmo_nlp(*write_elmo_fixture(directory, options=options), 16)  # one seed: the same weights

    for nlp, source in ((_nlp(tiny_bert_dir), _nlp(short)), (elmo(tmp_path / "a"), elmo(tmp_path / "b", other))):
        name = nlp.pipe_names[0]
        before = nlp(text)._.ctx_vectors
        expected = source(text)._.ctx_vectors
        assert not numpy.allclose(before, expected, atol=1e-4)  # the premise: other outputs
        nlp.get_pipe(name).from_bytes(source.get_pipe(name).to_bytes())
        numpy.testing.assert_allclose(nlp(text)._.ctx_vectors, expected, atol=1e-6)


@pytest.mark.parametrize("edit", ["activation", "special tokens"])
def test_loading_the_same_weights_with_another_config_never_hits(minilm_dir, tmp_path, edit):
    """The same weights and tokenizer definition with another config.json (relu for
    GELU) or `split_special_tokens` (in tokenizer_config.json, not in the
    tokenizer's definition): loaded into a component, its cache served the old
    model's vectors (off by 1.6), and the two models' outputs counted as one
    model's for similarity. References: each model alone, without a cache."""
    import json
    import shutil

    text = "Fill in the [MASK] when I ran to the park ."
    other = tmp_path / "other"
    shutil.copytree(minilm_dir, other)
    file, field, value = (("config.json", "hidden_act", "relu") if edit == "activation" else
                          ("tokenizer_config.json", "split_special_tokens", True))
    data = json.loads((other / file).read_text())
    data[field] = value
    (other / file).write_text(json.dumps(data))
    nlp, source = _nlp(minilm_dir), _nlp(other, cache_mb=0)
    before = nlp(text)
    expected = source(text)._.ctx_vectors
    assert not numpy.allclose(before._.ctx_vectors, expected, atol=1e-3)  # the premise: other outputs
    with pytest.raises(ValueError, match="different ctxembed models"):
        before[0].similarity(source(text)[0])
    nlp.get_pipe("ctxembed_bert").from_bytes(source.get_pipe("ctxembed_bert").to_bytes())
    numpy.testing.assert_allclose(nlp(text)._.ctx_vectors, expected, atol=1e-6)


def test_sentences_from_a_user_hook_are_never_cached(tmp_path):
    """ELMo embeds each of `doc.sents`, which a user hook may give; the key holds
    the SENT_START array only, so such docs go past the cache."""
    from spacy.tokens import Doc

    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path)

    cached, fresh = _elmo_nlp(options, weights, 16), _elmo_nlp(options, weights, 0)
    words = ["I", "ran", "home", "then", "I", "slept", "well"]

    def hooked(nlp):
        doc = Doc(nlp.vocab, words=words)
        doc.user_hooks["sents"] = lambda d: iter([d[0:3], d[3:]])
        return doc

    cached(Doc(cached.vocab, words=words))  # the same doc without the hook: cached
    numpy.testing.assert_allclose(cached(hooked(cached))._.ctx_vectors, fresh(hooked(fresh))._.ctx_vectors, atol=1e-6)
    assert len(cached.get_pipe("ctxembed_elmo").cache) == 1


def test_changed_settings_or_weights_never_hit(tiny_bert_dir, tmp_path):
    base = _nlp(tiny_bert_dir).get_pipe("ctxembed_bert")
    other_layers = _nlp(tiny_bert_dir, layers=[0, -1]).get_pipe("ctxembed_bert")
    other_pooling = _nlp(tiny_bert_dir, pooling="max").get_pipe("ctxembed_bert")
    assert len({base._identity, other_layers._identity, other_pooling._identity}) == 3
    # Same settings, other weights: a reload from disk must not hit old entries.
    nlp = _nlp(tiny_bert_dir)
    before = nlp(TEXTS[0])._.ctx_layers
    pipe = nlp.get_pipe("ctxembed_bert")
    identity = pipe._identity
    with torch.no_grad():
        for p in bert_module(pipe.model).parameters():
            p.mul_(1.5)
    nlp.to_disk(tmp_path / "changed")
    pipe.from_disk(tmp_path / "changed" / "ctxembed_bert")
    assert pipe._identity != identity and len(pipe.cache) == 0
    after = nlp(TEXTS[0])._.ctx_layers
    assert not numpy.allclose(after, before)


def test_bad_cache_size():
    nlp = spacy.blank("en")
    with pytest.raises(Exception, match=r"cache_mb = -1"):
        nlp.add_pipe("ctxembed_bert", config={"cache_mb": -1})


def test_no_cache_for_an_encoder_that_reads_another_components_outputs():
    """TrfEncoder pools a transformer's outputs from the doc's user data: a fine-tuned or reloaded
    transformer would have been served its old pooled layers for the same text. A warning, not an error:
    pipelines saved so keep loading, without the cache."""
    config = {"cache_mb": 10, "model": {"encoder": {"@architectures": "spacy-ctxembed.TrfEncoder.v2"}}}
    with pytest.warns(UserWarning, match=r"\[ctxembed_bert\] cache_mb = 10: no cache, the encoder reads another "
                                         r"component's outputs"):
        component = spacy.blank("en").add_pipe("ctxembed_bert", config=config)
    assert component.cache is None and component.cfg["cache_mb"] == 10
    assert spacy.blank("en").add_pipe("ctxembed_bert", config={"cache_mb": 10}).cache is not None


@pytest.mark.parametrize(
    "setting, value", [("layers", [0, -1]), ("pooling", "max"), ("window", 16), ("stride", 8), ("precision", "int8")]
)
def test_every_setting_that_changes_the_vectors_changes_the_identity(tiny_bert_dir, setting, value):
    base = _nlp(tiny_bert_dir).get_pipe("ctxembed_bert")
    other = _nlp(tiny_bert_dir, **{setting: value}).get_pipe("ctxembed_bert")
    assert other._identity != base._identity


def test_sentence_boundaries_are_part_of_the_key(tmp_path):
    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path)

    cached, fresh = _elmo_nlp(options, weights, 16), _elmo_nlp(options, weights, 0)
    words = ["I", "ran", "home", "then", "I", "slept"]

    def doc(nlp, starts):
        return spacy.tokens.Doc(nlp.vocab, words=words, sent_starts=starts)

    one = [True, False, False, False, False, False]
    two = [True, False, False, True, False, False]
    assert doc_key(doc(cached, one)) != doc_key(doc(cached, two))
    first = cached(doc(cached, one))._.ctx_vectors
    second = cached(doc(cached, two))._.ctx_vectors  # same text and tokens, other sentences
    numpy.testing.assert_allclose(first, fresh(doc(fresh, one))._.ctx_vectors, atol=1e-6)
    numpy.testing.assert_allclose(second, fresh(doc(fresh, two))._.ctx_vectors, atol=1e-6)
    assert not numpy.allclose(first, second)


def test_a_doc_edited_under_its_tokens_never_takes_another_docs_entry(tmp_path):
    """`Doc.from_array` with SPACY moves spaces without moving `token.idx` (an
    edit not followed: run the component on the doc again). Keyed by IDX, such
    a doc ("a", "b ", "c", now "a b c") had the key of another doc with that
    text, those lengths and those IDX ("a", " b", "c"), and was served its
    vectors (0.29 off in ELMo, which reads the tokens' characters)."""
    from spacy.attrs import SPACY
    from spacy.tokens import Doc

    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path)
    cached, fresh = _elmo_nlp(options, weights, 16), _elmo_nlp(options, weights, 0)

    def edited(nlp):
        doc = Doc(nlp.vocab, words=["a", "b ", "c"], spaces=[False, True, False])  # "ab  c"
        return doc.from_array([SPACY], numpy.array([[1], [0], [0]], dtype="uint64"))  # "a b c", IDX kept

    other = Doc(cached.vocab, words=["a", " b", "c"], spaces=[False, True, False])
    assert other.text == edited(cached).text and [t.idx for t in other] == [t.idx for t in edited(cached)]
    seen = cached(other)._.ctx_vectors
    expected = fresh(Doc(fresh.vocab, words=["a", "b ", "c"], spaces=[True, False, False]))._.ctx_vectors
    assert not numpy.allclose(seen, expected, atol=1e-3)  # the premise: the two docs' vectors differ
    numpy.testing.assert_allclose(fresh(edited(fresh))._.ctx_vectors, expected, atol=1e-6)
    numpy.testing.assert_allclose(cached(edited(cached))._.ctx_vectors, expected, atol=1e-6)


def test_the_cache_holds_host_arrays(tiny_bert_dir):
    nlp = _nlp(tiny_bert_dir)
    nlp(TEXTS[0])
    cache = nlp.get_pipe("ctxembed_bert").cache
    assert all(isinstance(v, numpy.ndarray) for v in cache._entries.values())
    assert cache.nbytes == sum(v.nbytes + ENTRY_OVERHEAD for v in cache._entries.values())
    with pytest.raises(TypeError, match="host arrays"):
        cache.put("x", torch.zeros(2))


def test_a_saved_pipeline_keeps_its_cache_unless_loaded_without(tiny_bert_dir, tmp_path):
    """`cache_mb` is saved with the pipeline (the shipped training configs set
    it): repeated docs then skip the model at inference too, which a speed
    benchmark over the same docs counts as speed. The README's way to load
    it without, for serving or measuring."""
    _nlp(tiny_bert_dir, cache_mb=16).to_disk(tmp_path / "p")
    for config, forwards in (({}, 1), ({"components": {"ctxembed_bert": {"cache_mb": 0}}}, 2)):
        nlp = spacy.load(tmp_path / "p", config=config)
        calls = _count_forwards(nlp)
        first, again = nlp(TEXTS[0]), nlp(TEXTS[0])
        assert len(calls) == forwards
        numpy.testing.assert_array_equal(first._.ctx_vectors, again._.ctx_vectors)


def test_the_cache_evicts_the_least_recently_read_entry_and_keeps_within_its_bytes():
    value = numpy.zeros(100, dtype="float32")
    entry = value.nbytes + ENTRY_OVERHEAD
    cache = FeatureCache(max_bytes=3 * entry - 1)  # room for two entries, not three
    cache.put("a", value)
    cache.put("b", value)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", value)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 2 * entry <= cache.max_bytes


def test_a_config_that_differs_in_dropout_only_is_the_same_model(tiny_bert_dir, tmp_path):
    """Dropout does not change what a model predicts: a copy of the model whose
    config.json sets other dropout rates gives the same vectors, which may be
    compared with the original's (`similarity`), as the same model's. (Another
    activation is another model: `test_loading_the_same_weights_with_another_config_never_hits`.)"""
    import json
    import shutil

    text = "I ran to the park ."
    other = tmp_path / "other"
    shutil.copytree(tiny_bert_dir, other)
    config = json.loads((other / "config.json").read_text())
    config.update(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.3)
    (other / "config.json").write_text(json.dumps(config))
    a, b = _nlp(tiny_bert_dir)(text), _nlp(other, cache_mb=0)(text)
    numpy.testing.assert_array_equal(a._.ctx_vectors, b._.ctx_vectors)  # the premise: the same outputs
    assert numpy.isfinite(a[0].similarity(b[0]))


def test_an_entry_of_exactly_the_budget_is_kept():
    """The budget is inclusive: an entry whose data plus ENTRY_OVERHEAD is
    exactly `max_bytes` fits (only entries over the budget were tried)."""
    value = numpy.arange(25, dtype="float32")
    cache = FeatureCache(max_bytes=value.nbytes + ENTRY_OVERHEAD)
    cache.put("k", value)
    assert "k" in cache and cache.nbytes == cache.max_bytes
    numpy.testing.assert_array_equal(cache.get("k"), value)
    cache.put("l", numpy.arange(26, dtype="float32"))  # one float over: refused, "k" stays
    assert "l" not in cache and "k" in cache


def test_putting_a_cached_key_again_changes_nothing():
    """A second put of a key already held keeps the first value and counts its
    bytes once (before, no test put the same key twice): counting them again
    would shrink the room the budget leaves and evict entries for nothing."""
    value = numpy.zeros(100, dtype="float32")
    entry = value.nbytes + ENTRY_OVERHEAD
    cache = FeatureCache(max_bytes=2 * entry)
    cache.put("a", value)
    cache.put("a", numpy.ones(100, dtype="float32"))
    assert len(cache) == 1 and cache.nbytes == entry
    numpy.testing.assert_array_equal(cache.get("a"), value)
    cache.put("b", value)  # room for exactly two
    assert "a" in cache and "b" in cache and cache.nbytes == 2 * entry


def test_a_cleared_cache_has_its_whole_budget_again():
    """clear() empties the entries and their byte count: afterwards as many
    entries fit as in a new cache. (Only the entries were looked at before:
    a count left over would evict every new entry at once.)"""
    value = numpy.zeros(100, dtype="float32")
    entry = value.nbytes + ENTRY_OVERHEAD
    cache = FeatureCache(max_bytes=2 * entry)
    cache.put("a", value)
    cache.put("b", value)
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
    cache.put("c", value)
    cache.put("d", value)
    assert "c" in cache and "d" in cache and cache.nbytes == 2 * entry


def test_entries_are_kept_per_device(tiny_bert_dir):
    """Moved to another device (thinc's `model.to_gpu` gives every node the
    device's ops), the pipeline computes again rather than serve entries
    taken on the first: the same weights give other outputs there (TF32)."""
    from thinc.api import NumpyOps

    nlp = _nlp(tiny_bert_dir)
    encoder = nlp.get_pipe("ctxembed_bert").encoder
    calls = _count_forwards(nlp)
    nlp(TEXTS[0])
    host_ops = encoder.ops
    for node in encoder.walk():  # (the ops of device 0; the computation stays on CPU here)
        node.ops = NumpyOps(device_type="gpu", device_id=0)
    nlp(TEXTS[0])
    assert len(calls) == 2  # a miss on the other device
    nlp(TEXTS[0])
    assert len(calls) == 2  # then its own entry
    for node in encoder.walk():
        node.ops = host_ops
    nlp(TEXTS[0])
    assert len(calls) == 2  # and the first device's entry is still there
    assert len(nlp.get_pipe("ctxembed_bert").cache) == 2
