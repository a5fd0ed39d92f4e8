"""The BERT engine's host side: runs of docs prepared ahead, planned per run in numpy,
and `nlp.pipe` predicting the next batch while the last one is annotated.

Overlapping must change the timing only: the vectors are compared bit for bit
with the serial path, and the vectorised helpers with plain per-item
references written here.
"""
import contextlib
import threading
import time
from unittest import mock

import numpy
import pytest
import spacy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spacy_ctxembed.alignment import TokenTable, align_pieces, align_run, doc_alignment
from spacy_ctxembed.batching import computed_ahead, concat_ranges, prefetched, runs_by_size
from spacy_ctxembed.models import bert_runner
from spacy_ctxembed.models.bert import get_runner
from spacy_ctxembed.models.bert_runner import (
    _needs_no_mask,
    _takes_broadcast_mask,
    _top_state_is_last,
    batch_items_for_memory,
    default_batch_items,
)

from .conftest import ctx_config, make_nlp
from .reference import hf_hidden_states, pool, token_pieces

TEXTS = [
    "I ran to the park.",
    "She ran significance tests on the U.S. data, then ran home.",
    "",
    "A much longer text " * 40 + "ends here.",
    "Emails like someone@example.com and URLs like https://example.org/a?b=c split into many pieces.",
    " leading and  double  spaces ",
] * 6


def _runner(nlp):
    return get_runner(nlp.get_pipe("ctxembed_bert").encoder)


@contextlib.contextmanager
def _switched(runner, attribute, value):
    """The runner with one of its engine switches set, restored afterwards."""
    before = getattr(runner, attribute)
    setattr(runner, attribute, value)
    try:
        yield runner
    finally:
        setattr(runner, attribute, before)


@contextlib.contextmanager
def _serial_preparation():
    """The runner's host preparation run in the caller's thread, one run after another."""
    with mock.patch.object(bert_runner, "prefetched", lambda produce, items: map(produce, items)):
        yield


@pytest.fixture(scope="module")
def nlp(tiny_bert_dir):
    # A small budget and window: many forward batches, runs and windows from few docs.
    return make_nlp(tiny_bert_dir, layers=[0, 1, 2], max_batch_items=64, window=24, stride=16)


def test_overlapped_runs_equal_serial_ones_exactly(nlp):
    runner = _runner(nlp)
    docs = [nlp.make_doc(t) for t in TEXTS]
    assert len(list(runs_by_size(docs, runner.max_batch_items * 4 * 4, lambda d: len(d.text)))) > 3
    threads = []
    prepare = runner.prepare

    def prepare_noting_the_thread(run):
        threads.append(threading.current_thread().name)
        return prepare(run)

    with mock.patch.object(runner, "prepare", prepare_noting_the_thread):
        overlapped = runner.embed(docs)
        assert any(name.startswith("ctxembed-prefetch") for name in threads)
        threads.clear()
        with _serial_preparation():
            serial = runner.embed(docs)
        assert set(threads) == {threading.current_thread().name}
    for a, b in zip(overlapped, serial):
        assert torch.equal(a, b)


def test_a_doc_gets_the_same_vectors_in_any_batch(nlp):
    runner = _runner(nlp)
    docs = [nlp.make_doc(t) for t in TEXTS]
    together = runner.embed(docs)
    for doc, expected in zip(docs[:6], together):
        torch.testing.assert_close(runner.embed([doc])[0], expected, atol=1e-5, rtol=1e-5)


def test_threads_share_a_runner_while_it_prefetches(nlp):
    runner = _runner(nlp)
    docs = [nlp.make_doc(t) for t in TEXTS]
    expected = runner.embed(docs)
    results, errors = [], []

    def work():
        try:
            results.append(runner.embed(docs))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for result in results:
        assert all(torch.equal(a, b) for a, b in zip(result, expected))


def _reference_pad(runner, pieces, width):
    ids = numpy.full((len(pieces), width), runner.pad_id, dtype="int64")
    mask = numpy.zeros((len(pieces), width), dtype="int64")
    for i, p in enumerate(pieces):
        row = list(runner.prefix_ids) + list(p) + list(runner.suffix_ids)
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def test_pad_frames_and_pads_like_the_tokenizer(nlp):
    runner = _runner(nlp)
    rng = numpy.random.default_rng(0)
    pieces = [rng.integers(1000, 2000, size=n) for n in (5, 0, 17, 3)]
    # The windows lie in one array of pieces, not in order, with other pieces between them.
    flat = rng.integers(2000, 3000, size=40)
    starts = numpy.array([30, 2, 8, 0])
    for start, p in zip(starts, pieces):
        flat[start : start + len(p)] = p
    ids, mask = runner.pad(flat, starts, numpy.array([len(p) for p in pieces]))
    width = 17 + runner.n_special
    assert ids.shape == (4, width)
    expected_ids, expected_mask = _reference_pad(runner, pieces, width)
    numpy.testing.assert_array_equal(ids, expected_ids)
    numpy.testing.assert_array_equal(mask, expected_mask)


def test_broadcast_mask_gives_the_2d_masks_vectors(nlp):
    runner = _runner(nlp)
    assert runner.broadcast_mask
    docs = [nlp.make_doc(t) for t in TEXTS]
    assert any(b.attention_mask is not None and b.attention_mask.dim() == 3 for b in runner.prepare(docs).batches)
    broadcast = runner.embed(docs)
    with _switched(runner, "broadcast_mask", False):
        assert all(b.attention_mask is None or b.attention_mask.dim() == 2 for b in runner.prepare(docs).batches)
        two_d = runner.embed(docs)
    for a, b in zip(broadcast, two_d):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_broadcast_mask_is_refused_where_the_model_would_ignore_it(tiny_bert_dir):
    """A model that takes a 3-D mask without error but does not apply it
    (here: drops it) must keep the 2-D mask."""
    runner = _runner(make_nlp(tiny_bert_dir))

    class DropsThreeD(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, **kwargs):
            return self.inner(input_ids=input_ids, attention_mask=None if attention_mask.dim() == 3 else attention_mask,
                              **kwargs)

    probe = runner.probe_batch()
    assert _takes_broadcast_mask(runner.runner, *probe)
    assert not _takes_broadcast_mask(DropsThreeD(runner.runner), *probe)


def test_unpadded_batches_go_without_a_mask_and_give_the_masks_vectors(nlp):
    """transformers finds out that an all-ones mask can be dropped with a check on
    the host (a wait for the GPU per batch); an unpadded batch goes without one."""
    runner = _runner(nlp)
    assert runner.unpadded_without_mask
    docs = [nlp.make_doc(t) for t in TEXTS]
    batches = runner.prepare(docs).batches
    assert any(b.attention_mask is None for b in batches) and any(b.attention_mask is not None for b in batches)
    assert all(b.attention_mask is None or not bool(b.attention_mask.all()) for b in batches)
    without = runner.embed(docs)
    with _switched(runner, "unpadded_without_mask", False):
        assert all(b.attention_mask is not None for b in runner.prepare(docs).batches)
        with_mask = runner.embed(docs)
    for a, b in zip(without, with_mask):
        assert torch.equal(a, b)


def test_a_model_that_needs_its_mask_keeps_it(tiny_bert_dir):
    """A model that fails without a mask, or reads no mask as another one (here:
    only the first piece), keeps getting its all-ones mask."""
    runner = _runner(make_nlp(tiny_bert_dir))

    class Wrapped(torch.nn.Module):
        def __init__(self, inner, fails):
            super().__init__()
            self.inner, self.fails = inner, fails

        def forward(self, input_ids, attention_mask, **kwargs):
            if attention_mask is None:
                if self.fails:
                    raise TypeError("attention_mask is required")
                attention_mask = torch.zeros_like(input_ids)
                attention_mask[:, 0] = 1
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    probe = runner.probe_batch()
    assert _needs_no_mask(runner.runner, *probe)
    assert not _needs_no_mask(Wrapped(runner.runner, fails=True), *probe)
    assert not _needs_no_mask(Wrapped(runner.runner, fails=False), *probe)


@pytest.mark.parametrize("layers", [[-1], [0], [1]])
def test_one_selected_layer_runs_without_keeping_every_state(tiny_bert_dir, layers):
    """One layer: the forward pass returns only its state; the vectors equal
    those read from `output_hidden_states` (the path for several layers)."""
    runner = _runner(make_nlp(tiny_bert_dir, layers=layers, max_batch_items=64, window=24, stride=16))
    assert runner.top_state_only
    docs = [spacy.blank("en").make_doc(t) for t in TEXTS]
    asked = []
    forward = runner.runner.forward

    def spy(*args, **kwargs):
        asked.append(kwargs.get("output_hidden_states"))
        return forward(*args, **kwargs)

    runner.runner.forward = spy
    try:
        top_only = runner.embed(docs)
    finally:
        del runner.runner.forward
    assert asked and not any(asked)  # no call kept every layer's states
    with _switched(runner, "top_state_only", False):
        every_state = runner.embed(docs)
    for a, b in zip(top_only, every_state):
        assert torch.equal(a, b)
    assert not _runner(make_nlp(tiny_bert_dir, layers=[0, -1])).top_state_only


def test_top_state_only_is_refused_where_the_model_returns_another_tensor(tiny_bert_dir):
    runner = _runner(make_nlp(tiny_bert_dir))

    class NormsAtTheEnd(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kwargs):
            output = self.inner(**kwargs)
            output.last_hidden_state = torch.nn.functional.layer_norm(output.last_hidden_state, (32,))
            return output

    probe = runner.probe_batch()
    assert _top_state_is_last(runner.runner, *probe, 2)
    assert not _top_state_is_last(NormsAtTheEnd(runner.runner), *probe, 2)
    # A stack that was not cut at the selected layer (as ALBERT's cannot be).
    assert not _top_state_is_last(runner.runner, *probe, 1)


@pytest.mark.parametrize("window", [1, 2])
def test_tiny_windows_in_half_precision_load_and_match_fp32(tiny_bert_dir, window):
    """The load-time probe fits any window, in half precision too."""
    docs = [spacy.blank("en").make_doc(t) for t in TEXTS[:3]]
    bf16 = _runner(make_nlp(tiny_bert_dir, precision="bf16", window=window, stride=1))
    fp32 = _runner(make_nlp(tiny_bert_dir, window=window, stride=1))
    for a, b in zip(bf16.embed(docs), fp32.embed(docs)):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # (torch's CUDA autocast on a CPU-only machine)
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_on_cuda_keeps_cudnn_attention_off_while_it_runs(tiny_bert_dir, precision):
    """cuDNN plans its fused attention per (batch, length) shape, and a corpus's
    windows come in many: half-precision forward passes on CUDA run without
    it, and leave the process's setting as they found it. (Without a GPU
    the CUDA autocast is off; the switch is what is tested here, the GPU
    tests run the forward pass with it.)"""
    runner = _runner(make_nlp(tiny_bert_dir, precision=precision))
    cuda = torch.device("cuda")
    for before in (True, False):
        torch.backends.cuda.enable_cudnn_sdp(before)
        try:
            with runner._precision_context(cuda):
                assert not torch.backends.cuda.cudnn_sdp_enabled()
                with runner._precision_context(cuda):  # (nested: the run-ahead worker and the caller)
                    pass
                assert not torch.backends.cuda.cudnn_sdp_enabled()
            assert torch.backends.cuda.cudnn_sdp_enabled() is before
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
    with runner._precision_context(torch.device("cpu")):  # (no cuDNN on CPU: nothing to switch)
        assert torch.backends.cuda.cudnn_sdp_enabled()
    with _runner(make_nlp(tiny_bert_dir))._precision_context(cuda):  # fp32: cuDNN attention takes no fp32
        assert torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.skipif(not hasattr(torch.amp, "is_autocast_available"), reason="torch >= 2.4 sets autocast by device")
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_fp32_forward_passes_run_without_the_caller_s_autocast(tiny_bert_dir, precision, device_type):
    """`precision` is the one switch: a caller's `torch.autocast` around the
    pipeline must not run an fp32 or 'tf32' encoder in fp16. On CUDA tf32's
    forward passes took TF32 matmuls and kept the caller's autocast. (torch's
    own autocast state is read; set directly, as `torch.autocast("cuda")`
    turns itself off without a GPU.)"""
    runner = _runner(make_nlp(tiny_bert_dir, precision=precision))
    before = torch.get_float32_matmul_precision()
    torch.set_autocast_enabled(device_type, True)
    try:
        with runner._precision_context(torch.device(device_type)):
            assert not torch.is_autocast_enabled(device_type)
            tf32 = precision == "tf32" and device_type == "cuda"
            assert torch.get_float32_matmul_precision() == ("high" if tf32 else before)
        assert torch.is_autocast_enabled(device_type)  # the caller's, as it was
    finally:
        torch.set_autocast_enabled(device_type, False)
    assert torch.get_float32_matmul_precision() == before


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.booleans()), max_size=10),
                          st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6)), max_size=12),
                          st.integers(0, 2)),
                min_size=1, max_size=6), st.booleans())
def test_align_run_equals_aligning_each_doc(docs_spec, with_spaces):
    """Equal to `align_pieces` per doc, less the pairs of whitespace tokens,
    numbered across the run; `doc_alignment` gives each doc's part back."""
    piece_spans, token_spans, spaces, text_lengths = [], [], [], []
    for tokens, pieces, trailing in docs_spec:
        # Tokens: sorted, non-overlapping, with gaps; pieces: any spans inside the text, some empty.
        starts, ends, at = [], [], 0
        for gap, length, _ in tokens:
            at += gap
            starts.append(at)
            at += length + 1
            ends.append(at)
        end = at + trailing  # the text may go on past the last token
        piece_spans.append(numpy.array([(min(s, end), min(s + n, end)) for s, n in pieces],
                                       dtype="int64").reshape(-1, 2))
        token_spans.append((numpy.array(starts, dtype="int64"), numpy.array(ends, dtype="int64")))
        spaces.append(numpy.array([space and with_spaces for _, _, space in tokens], dtype=bool))
        text_lengths.append(end)
    counts = numpy.array([len(s) for s, _ in token_spans])
    table = TokenTable(
        orths=numpy.zeros(counts.sum(), dtype="uint64"), space_after=numpy.zeros(counts.sum(), dtype=bool),
        starts=numpy.concatenate([s for s, _ in token_spans]), ends=numpy.concatenate([e for _, e in token_spans]),
        is_space=numpy.concatenate(spaces), counts=counts, text_lengths=numpy.array(text_lengths),
    )
    piece_counts = numpy.array([len(p) for p in piece_spans])
    together = align_run(numpy.concatenate(piece_spans), piece_counts, table)
    token_offsets = numpy.concatenate(([0], numpy.cumsum(counts)))
    piece_offsets = numpy.concatenate(([0], numpy.cumsum(piece_counts)))
    pairs = []
    for d, (pieces, (starts, ends), space) in enumerate(zip(piece_spans, token_spans, spaces)):
        alone = align_pieces(pieces[:, 0], pieces[:, 1], starts, ends)
        keep = [not space[t] for t in alone.token_index]
        got = doc_alignment(together, token_offsets, piece_offsets, d)
        numpy.testing.assert_array_equal(got.token_index, alone.token_index[keep])
        numpy.testing.assert_array_equal(got.piece_index, alone.piece_index[keep])
        assert (got.n_tokens, got.n_pieces) == (alone.n_tokens, alone.n_pieces)
        pairs += [(t + token_offsets[d], p + piece_offsets[d])
                  for t, p in zip(alone.token_index[keep], alone.piece_index[keep])]
    assert list(zip(together.token_index, together.piece_index)) == pairs
    assert (together.n_tokens, together.n_pieces) == (counts.sum(), piece_counts.sum())


def test_align_run_refuses_a_piece_past_its_text():
    table = TokenTable(orths=numpy.zeros(1, dtype="uint64"), space_after=numpy.zeros(1, dtype=bool),
                       starts=numpy.array([0]), ends=numpy.array([3]), is_space=numpy.zeros(1, dtype=bool),
                       counts=numpy.array([1, 0]), text_lengths=numpy.array([3, 0]))
    align_run(numpy.array([[0, 3]]), numpy.array([1, 0]), table)
    with pytest.raises(ValueError, match="doc 0 of the batch .3 characters. a piece at characters 0-4, past its text"):
        align_run(numpy.array([[0, 4]]), numpy.array([1, 0]), table)
    with pytest.raises(ValueError, match="doc 1 of the batch .0 characters. a piece at characters 0-1"):
        align_run(numpy.array([[0, 3], [0, 1]]), numpy.array([1, 1]), table)


def test_a_tokenizer_whose_offsets_pass_the_text_is_named_with_the_component(tiny_bert_dir):
    """The error of a piece past its doc's text named no component (nor what was wrong with it)."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="emb", config=ctx_config(name=tiny_bert_dir))
    nlp.initialize()
    runner = get_runner(nlp.get_pipe("emb").encoder)
    of_docs = runner.wordpieces.of_docs

    def one_character_on(docs, tokens):
        ids, spans, counts = of_docs(docs, tokens)
        return ids, spans + 1, counts

    with mock.patch.object(runner.wordpieces, "of_docs", one_character_on):
        with pytest.raises(ValueError, match=r"^\[emb\] the wordpiece tokenizer gave doc 0 of the batch .12 "
                                             r"characters. a piece at characters 12-13, past its text: its "
                                             r"tokenizer .\w+. gives offsets that do not fit the text"):
            nlp("A short doc.")


def test_token_table_reads_what_the_tokens_say(nlp):
    """Against the tokens' own attributes, read one by one, with empty docs,
    whitespace tokens and docs that end with and without a space."""
    from spacy.tokens import Doc

    docs = [nlp.make_doc("Hello  world, it's me.\n"), Doc(nlp.vocab, words=[]), nlp.make_doc(""),
            Doc(nlp.vocab, words=["a", " ", "b"], spaces=[True, False, True]), nlp.make_doc("x")]
    table = TokenTable.of_docs(docs)
    tokens = [t for doc in docs for t in doc]
    assert table.orths.tolist() == [t.orth for t in tokens]
    assert table.space_after.tolist() == [bool(t.whitespace_) for t in tokens]
    assert table.starts.tolist() == [t.idx for t in tokens]
    assert table.ends.tolist() == [t.idx + len(t) for t in tokens]
    assert table.is_space.tolist() == [t.is_space for t in tokens]
    assert table.counts.tolist() == [len(doc) for doc in docs]
    assert table.text_lengths.tolist() == [len(doc.text) for doc in docs]
    assert table.offsets.tolist() == [0, *numpy.cumsum([len(doc) for doc in docs]).tolist()]
    # Spaces changed with from_array leave IDX stale: the table follows the text.
    from spacy.attrs import SPACY

    stale = nlp.make_doc("Hello world significance")
    stale.from_array([SPACY], numpy.array([[0], [1], [0]], dtype="uint64"))
    table = TokenTable.of_docs([nlp.make_doc("x "), stale])
    assert table.starts.tolist() == [0, 0, 5, 11] and table.ends.tolist() == [1, 5, 10, 23]
    assert table.text_lengths.tolist() == [2, len(stale.text)] == [2, 23]
    empty = TokenTable.of_docs([])
    assert len(empty.orths) == len(empty.counts) == 0 and empty.offsets.tolist() == [0]


@given(st.lists(st.integers(0, 50), max_size=40), st.integers(1, 120))
def test_runs_by_size_keep_order_and_close_at_the_budget(sizes, budget):
    runs = list(runs_by_size(sizes, budget, lambda n: n))
    assert [n for run in runs for n in run] == sizes
    for run in runs[:-1]:
        assert sum(run) >= budget and sum(run[:-1]) < budget


def test_prefetched_runs_its_worker_in_the_callers_context():
    """Context variables (the component's name for its warnings, Thinc's ops) carry into the worker."""
    import contextvars

    var: contextvars.ContextVar = contextvars.ContextVar("ctxembed_test_var", default="unset")
    var.set("caller")
    assert list(prefetched(lambda n: (n, var.get()), [1, 2, 3])) == [(1, "caller"), (2, "caller"), (3, "caller")]


def test_prefetched_keeps_order_and_raises_the_producers_error():
    assert list(prefetched(lambda n: n * n, [1, 2, 3, 4])) == [1, 4, 9, 16]

    def produce(n):
        if n == 3:
            raise ValueError("bad item 3")
        return n

    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetched(produce, [1, 2, 3, 4]):
            seen.append(value)
    assert seen == [1, 2]


def test_batch_budget_from_free_memory():
    from transformers import BertConfig

    config = BertConfig()  # BERT-base: 12 layers, 768 wide, 12 heads, 3072 inner
    per_piece = 4 * (13 * 768 + 12 * 512 + 3072 + 4 * 768)
    assert batch_items_for_memory(40 * 2**30, config, 512) == min(40 * 2**30 // 4 // per_piece, 65536)
    assert batch_items_for_memory(2**20, config, 512) == 4096  # never below the CPU default
    assert batch_items_for_memory(10**13, config, 512) == 65536  # bounded above


def test_null_budget_is_the_cpu_default(tiny_bert_dir):
    assert _runner(make_nlp(tiny_bert_dir, max_batch_items=None)).max_batch_items == 4096


def test_pipe_gives_the_same_vectors_as_single_docs(nlp):
    docs = list(nlp.pipe(TEXTS[:6], batch_size=6))
    for text, doc in zip(TEXTS[:6], docs):
        numpy.testing.assert_allclose(nlp(text)._.ctx_vectors, doc._.ctx_vectors, atol=1e-5)


@given(st.lists(st.tuples(st.integers(-5, 50), st.integers(0, 6)), max_size=12))
def test_concat_ranges_equals_a_loop(spec):
    starts = numpy.array([s for s, _ in spec], dtype="int64")
    lengths = numpy.array([n for _, n in spec], dtype="int64")
    expected = [s + k for s, n in spec for k in range(n)]
    assert concat_ranges(starts, lengths).tolist() == expected


def test_each_docs_output_owns_its_memory(nlp):
    # One pooling serves a whole run; a doc's output must not be a view into it,
    # or keeping one doc would keep the whole run's memory alive.
    outputs = _runner(nlp).embed([nlp.make_doc(t) for t in TEXTS[:6]])
    for out in outputs:
        assert out.is_contiguous()
        assert out.untyped_storage().nbytes() == out.numel() * out.element_size()


@pytest.fixture
def run_ahead_on(nlp):
    with _switched(nlp.get_pipe("ctxembed_bert"), "run_ahead", True) as component:
        yield component


def _serial_pipe(component, docs, batch_size):
    from spacy.pipeline import TrainablePipe

    return list(TrainablePipe.pipe(component, docs, batch_size=batch_size))


def test_run_ahead_pipe_equals_the_serial_loop_exactly(nlp, run_ahead_on):
    texts = TEXTS * 2
    ahead = [(d.text, d.tensor.copy()) for d in run_ahead_on.pipe((nlp.make_doc(t) for t in texts), batch_size=5)]
    serial = [(d.text, d.tensor.copy()) for d in _serial_pipe(run_ahead_on, [nlp.make_doc(t) for t in texts], 5)]
    assert [t for t, _ in ahead] == texts == [t for t, _ in serial]
    for (_, a), (_, b) in zip(ahead, serial):
        numpy.testing.assert_array_equal(a, b)
    # Through nlp.pipe too, where the stream is spaCy's tokenizer.
    through_nlp = [d.tensor.copy() for d in nlp.pipe(texts, batch_size=5)]
    for a, (_, b) in zip(through_nlp, serial):
        numpy.testing.assert_array_equal(a, b)


def test_run_ahead_pipe_sends_a_failed_batch_to_the_error_handler(nlp, run_ahead_on, monkeypatch):
    predict = run_ahead_on.predict

    def failing(docs):
        if any(doc.text == "FAIL" for doc in docs):
            raise ValueError("this batch fails")
        return predict(docs)

    monkeypatch.setattr(run_ahead_on, "predict", failing)
    texts = ["one", "two", "FAIL", "three", "four", "five"]
    with pytest.raises(ValueError, match="this batch fails"):
        list(nlp.pipe(texts, batch_size=2))
    handled = []
    run_ahead_on.set_error_handler(lambda name, proc, docs, err: handled.append((name, [d.text for d in docs], err)))
    try:
        out = list(nlp.pipe(texts, batch_size=2))
    finally:
        run_ahead_on.set_error_handler(None)
    assert [d.text for d in out] == ["one", "two", "four", "five"]
    assert all(d.tensor.shape == (len(d), 32) for d in out)
    assert [(name, texts_) for name, texts_, _ in handled] == [("ctxembed_bert", ["FAIL", "three"])]


def _run_ahead_threads():
    return [t for t in threading.enumerate() if t.name.startswith("ctxembed-run-ahead")]


def test_run_ahead_pipe_stopped_early_leaves_no_thread(nlp, run_ahead_on):
    stream = nlp.pipe(TEXTS * 3, batch_size=2)
    assert next(stream).tensor.shape[0] > 0
    stream.close()
    for thread in _run_ahead_threads():  # (it ends once the batch in flight is done)
        thread.join(timeout=30)
    assert not _run_ahead_threads()


def test_run_ahead_pipe_closed_during_a_load_does_not_wait_for_it(nlp, run_ahead_on, monkeypatch):
    """A stream dropped while the component loads (the garbage collector can
    close it inside the load, in the loading thread) must not wait for the
    batch in flight, whose prediction waits for the load: that waited for ever."""
    predict, go, calls = run_ahead_on.predict, threading.Event(), []

    def held(docs):
        calls.append(len(docs))
        if len(calls) > 1:  # (the batch in flight waits until the load has begun)
            go.wait(timeout=60)
        return predict(docs)

    monkeypatch.setattr(run_ahead_on, "predict", held)
    stream = nlp.pipe(TEXTS * 3, batch_size=2)
    first = next(stream)  # the next batch is now in flight
    closed = threading.Event()

    def load_and_close():
        with run_ahead_on._gate.loading():
            go.set()  # the worker's prediction now waits for this load
            time.sleep(0.2)
            stream.close()
            closed.set()

    loader = threading.Thread(target=load_and_close, daemon=True)
    loader.start()
    loader.join(timeout=30)
    assert closed.is_set(), "closing the stream inside a load waited for the prediction that waits for the load"
    for thread in _run_ahead_threads():
        thread.join(timeout=30)
    assert not _run_ahead_threads()
    assert first.tensor.shape[0] > 0
    numpy.testing.assert_allclose(nlp(first.text).tensor, first.tensor, atol=1e-6)  # and the pipeline goes on


def test_the_end_of_a_memory_zone_waits_for_the_batch_a_stream_left_in_it_predicts_ahead(nlp, run_ahead_on,
                                                                                         monkeypatch):
    """spaCy's `nlp.memory_zone()` frees the strings and lexemes made in it at its
    end. A stream left inside it (a break, an error in the loop) drops the batch
    its worker predicts ahead without waiting for it: that worker went on
    reading the batch's docs after the zone had freed them (a KeyError from the
    string store, or freed memory)."""
    predict, started, zone_ended, read = run_ahead_on.predict, threading.Event(), threading.Event(), []

    def held(docs):
        if any(doc.text.startswith("Zqxvb") for doc in docs):
            started.set()
            # Held until the zone has ended; only for a moment where its end waits
            # for this batch (the end comes after this wait, whatever its length).
            zone_ended.wait(timeout=0.5)
            try:
                read.append([doc.text for doc in docs])
            except KeyError as err:
                read.append(err)
        return predict(docs)

    monkeypatch.setattr(run_ahead_on, "predict", held)
    texts = ["one two", "three four", "Zqxvb plumfrob", "Zqxvb glorbish"]  # (the last two's strings: new)
    with nlp.memory_zone():
        for _doc in nlp.pipe(texts, batch_size=2):
            assert started.wait(timeout=30)
            break  # the batch of the last two is in flight
    zone_ended.set()
    for thread in _run_ahead_threads():
        thread.join(timeout=30)
    assert read == [texts[2:]]


def test_run_ahead_raises_an_interrupt_of_the_stream_at_once_and_never_waits_for_the_worker():
    """A KeyboardInterrupt of the stream while the worker computes the item
    before it: raised at once (held back for after that item, it was lost where
    the caller stopped there and the garbage collector closed the generator),
    without waiting for the item in flight."""
    started, release = threading.Event(), threading.Event()

    def produce(n):
        if n == 2:
            started.set()
            release.wait(timeout=60)
        return n * 10

    def stream():
        yield 1
        yield 2
        started.wait(timeout=60)
        raise KeyboardInterrupt

    handed_over = []
    try:
        with pytest.raises(KeyboardInterrupt):
            for item, result, _ in computed_ahead(produce, stream()):
                handed_over.append((item, result))
        assert _run_ahead_threads()  # the worker still computes item 2: nobody waited for it
    finally:
        release.set()
    assert handed_over == [(1, 10)]
    for thread in _run_ahead_threads():
        thread.join(timeout=30)
    assert not _run_ahead_threads()


def test_run_ahead_hands_back_errors_and_carries_context():
    import contextvars

    var = contextvars.ContextVar("var", default="unset")
    var.set("caller")

    def produce(n):
        if n == 2:
            raise KeyError("two")
        return (n, var.get())

    out = list(computed_ahead(produce, iter([1, 2, 3])))
    assert [(item, result) for item, result, _ in out] == [(1, (1, "caller")), (2, None), (3, (3, "caller"))]
    assert [type(error) for _, _, error in out] == [type(None), KeyError, type(None)]
    assert list(computed_ahead(produce, iter([]))) == []


def test_run_ahead_raises_the_streams_own_error_after_the_item_before_it():
    def stream():
        yield 1
        yield 2
        raise OSError("the input broke")

    handed_over = []
    with pytest.raises(OSError, match="the input broke"):
        for item, result, _ in computed_ahead(lambda n: n * 10, stream()):
            handed_over.append((item, result))
    assert handed_over == [(1, 10), (2, 20)]  # as a serial loop would have


def test_run_ahead_setting_is_checked_and_tf32_keeps_it_off(nlp, tiny_bert_dir, monkeypatch):
    from thinc.api import NumpyOps

    from spacy_ctxembed.pipeline import component as component_module

    component = nlp.get_pipe("ctxembed_bert")
    for value in ("yes", 1, 0):
        with _switched(component, "run_ahead", value):
            with pytest.raises(ValueError, match=rf"\[ctxembed_bert\] run_ahead = {value!r}: expected True, False"):
                list(nlp.pipe(["a text"]))
    tf32 = make_nlp(tiny_bert_dir, precision="tf32").get_pipe("ctxembed_bert")
    assert not component._runs_ahead() and not tf32._runs_ahead()  # on CPU: off
    monkeypatch.setattr(component_module, "CupyOps", NumpyOps)  # as if these ops were the GPU's
    assert component._runs_ahead()  # on GPU: on by default
    assert not tf32._runs_ahead()  # but not with tf32's process-wide switch
    with _switched(tf32, "run_ahead", True):
        assert tf32._runs_ahead()  # unless asked for


#: The ops that make the host wait for a CUDA device (a tensor's value read on the host).
_HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default",
               "aten.nonzero.default", "aten.equal.default", "aten.masked_select.default"}


def test_embed_waits_for_the_device_only_inside_transformers_own_unpadded_forward(tiny_bert_dir):
    """The device is to be waited for only where outputs are handed over. Counted
    here on CPU, where the same ops run: none in planning, staging, pooling or
    the per-doc copies, and none in a padded batch's forward pass (its
    (batch, 1, length) mask needs no check). An unpadded batch's forward pass
    reads two values on the host inside transformers' BERT (its check for
    padding without a mask, its all-ones mask check): that is not ours to
    remove, and with run-ahead it happens in the worker, not the caller.
    (A dispatch mode sees its own thread only: the runs are prepared in this
    thread here, `overlap` off; they are the same calls either way.)"""
    from torch.utils._python_dispatch import TorchDispatchMode

    runner = _runner(make_nlp(tiny_bert_dir, layers=[0, 1, 2], max_batch_items=256))
    docs = [spacy.blank("en").make_doc(t) for t in ["word " * 600, "word " * 600, "I ran to the park.",
                                                     "Another short one.", "x " * 40]]
    assert {b.attention_mask is None for b in runner.prepare(docs).batches} == {True, False}
    where = ["host"]
    seen = []

    class HostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func) in _HOST_READS:
                seen.append((where[0], str(func)))
            return func(*args, **(kwargs or {}))

    def enter(module, args, kwargs):
        where[0] = "unpadded forward" if kwargs.get("attention_mask") is None else "padded forward"

    def leave(module, args, output):
        where[0] = "host"

    hooks = [runner.runner.register_forward_pre_hook(enter, with_kwargs=True),
             runner.runner.register_forward_hook(leave)]
    try:
        with HostReads(), _serial_preparation():
            runner.embed(docs)
            torch.ones(1).item()  # (the spy's control: a host read it must see)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen[-1] == ("host", "aten._local_scalar_dense.default")
    assert [s for s in seen[:-1] if s[0] != "unpadded forward"] == []


def test_everything_bound_for_a_cuda_device_is_staged_pinned(tiny_bert_dir, monkeypatch):
    """A non-blocking copy from pageable memory is a blocking one: every tensor a
    run stages for the device (the batches, the masks, the pooling index) must be
    pinned (pin_memory faked here, and the runner's device taken for CUDA)."""
    runner = _runner(make_nlp(tiny_bert_dir, max_batch_items=256))
    pinned = set()

    def fake_pin(tensor):
        pinned.add(id(tensor))
        return tensor

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    monkeypatch.setattr(type(runner), "device", property(lambda self: torch.device("cuda", 0)))
    prepared = runner.prepare([spacy.blank("en").make_doc(t) for t in TEXTS[:6]])
    tensors = [t for b in prepared.batches for t in (b.input_ids, b.attention_mask, b.targets, b.sources)
               if t is not None] + list(prepared.pooling.values())
    assert any(b.attention_mask is not None for b in prepared.batches)
    assert tensors and all(id(t) in pinned for t in tensors)


def test_default_budget_on_cuda_follows_free_memory(tiny_bert_dir, monkeypatch):
    runner = _runner(make_nlp(tiny_bert_dir))
    for free in (2**31, 2**33):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args, _free=free, **kwargs: (_free, 2**37))
        expected = batch_items_for_memory(free, runner.encoder.config, 512)
        assert default_batch_items(torch.device("cuda", 0), runner.encoder, 512) == expected
    assert default_batch_items(torch.device("cpu"), runner.encoder, 512) == 4096


def test_prediction_builds_no_autograd_graph(nlp):
    """Prediction runs under inference mode: outside it, the weights (trainable
    by default) would make every output carry an autograd graph holding the
    whole run's activations alive for as long as any doc's vectors are kept.
    Fine-tuning (grad=True) is where a graph belongs."""
    runner = _runner(nlp)
    docs = [nlp.make_doc(t) for t in TEXTS[:6]]
    assert all(p.requires_grad for p in runner.encoder.module.parameters())  # the premise: trainable weights
    for output in runner.embed(docs):
        assert not output.requires_grad and output.grad_fn is None
    assert runner.embed(docs[:1], grad=True)[0].requires_grad


def test_every_forward_batch_stays_within_the_piece_budget(nlp):
    """`max_batch_items` bounds the padded pieces of each forward batch (rows
    times the padded length, special tokens included), counted here from what
    the model is actually called with. Windows of mixed lengths must be packed
    longest first: a batch sized by a short window and padded to a long one
    would pass the budget (on a GPU, out of memory)."""
    runner = _runner(nlp)
    shapes = []
    hook = runner.runner.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        runner.embed([nlp.make_doc(t) for t in TEXTS[:6]])
    finally:
        hook.remove()
    assert any(rows > 1 for rows, _ in shapes) and len({length for _, length in shapes}) > 1  # the premise
    assert max(rows * length for rows, length in shapes) <= runner.max_batch_items == 64


def test_default_budget_on_cuda_is_sized_for_a_framed_full_window(tiny_bert_dir, monkeypatch):
    """With max_batch_items null, a CUDA model's budget is sized for windows of
    the model's full length: its 62 wordpieces plus [CLS] and [SEP], the 64
    positions the tiny model takes (not the window without its special tokens)."""
    runner = _runner(make_nlp(tiny_bert_dir))
    free = 2**28  # a budget between the bounds, where the length counts
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *args, **kwargs: (free, 2**37))
    monkeypatch.setattr(type(runner), "device", property(lambda self: torch.device("cuda", 0)))
    expected = batch_items_for_memory(free, runner.encoder.config, 64)
    assert 4096 < expected < 65536 and expected != batch_items_for_memory(free, runner.encoder.config, 62)
    assert runner.default_budget() == expected


def test_batch_budget_from_free_memory_between_its_bounds():
    """Where the budget is not clamped (16 GiB free for BERT-base): a quarter of
    the free memory over one padded piece's bytes. (`test_batch_budget_from_free_memory`
    asks at 40 GiB, which the upper bound clamps to 65536, so a budget
    that spent all the free memory could not be told from this one there.)"""
    from transformers import BertConfig

    config = BertConfig()  # BERT-base: 12 layers, 768 wide, 12 heads, 3072 inner
    per_piece = 4 * (13 * 768 + 12 * 512 + 3072 + 4 * 768)
    free = 16 * 2**30
    expected = free // 4 // per_piece
    assert 4096 < expected < 65536  # the premise: between the bounds
    assert batch_items_for_memory(free, config, 512) == expected


@pytest.mark.parametrize("window, stride", [(24, 18), (None, 46), (1, 1)])
def test_a_null_stride_is_three_quarters_of_the_window(tiny_bert_dir, window, stride):
    """As BertEncoder.v2 documents it: stride = null starts a window every 3/4
    of the window (at least one piece); window = null is all the tiny model
    takes, 64 positions less [CLS] and [SEP]. The stride sets how much context
    each overlapped piece gets, so another default would give long docs other
    vectors than the documented setting."""
    runner = _runner(make_nlp(tiny_bert_dir, window=window))
    assert (runner.window, runner.stride) == (window or 62, stride)


@pytest.mark.parametrize("tokenizer_limit, window", [(512, 62), (32, 30)])
def test_the_default_window_is_within_both_the_tokenizers_and_the_configs_limit(tiny_bert_dir, tmp_path,
                                                                                 tokenizer_limit, window):
    """The tiny model has 64 positions (config.json); a tokenizer saved with
    another model_max_length (MiniLM's 512, say) must not give it longer
    windows, which index past its position table; a tokenizer that says fewer
    is heeded too. Either way a long doc embeds in windows the model takes."""
    import json
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, model_dir)
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config["model_max_length"] = tokenizer_limit
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    nlp = make_nlp(model_dir, window=None)
    assert _runner(nlp).window == window  # [CLS] and [SEP] take the other 2
    doc = nlp("word " * 200)
    assert doc._.ctx_vectors.shape == (200, 32) and numpy.isfinite(doc._.ctx_vectors).all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_the_forward_pass_under_its_own_autocast_dtype(tiny_bert_dir, precision):
    """'bf16' and 'fp16' are torch autocast in that dtype: the vectors equal
    `transformers` run under `torch.autocast` with the same dtype, not its fp32
    states nor the other half dtype's. (A loose comparison with fp32 cannot tell
    a bf16 pipeline that silently ran in fp32, or in fp16, from one that did not.)"""
    from transformers import AutoModel, AutoTokenizer

    text = "Yesterday afternoon I ran some more significance tests on the new data."
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_bert_dir), AutoModel.from_pretrained(tiny_bert_dir).eval()
    references = {}
    for name, autocast in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with torch.autocast("cpu", dtype=autocast) if autocast is not None else contextlib.nullcontext():
            references[name], offsets = hf_hidden_states(tokenizer, model, text)
    doc = make_nlp(tiny_bert_dir, layers=[-1], precision=precision, store_layers=True)(text)
    pieces = token_pieces(doc, offsets)
    expected = {name: pool(states[-1], pieces, "mean") for name, states in references.items()}
    for other in {"fp32", "bf16", "fp16"} - {precision}:  # the premise: the dtypes' vectors differ
        assert numpy.abs(expected[other] - expected[precision]).max() > 1e-5
    numpy.testing.assert_allclose(doc._.ctx_layers[0], expected[precision], atol=2e-6, rtol=0)
