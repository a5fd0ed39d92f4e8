"""Long docs: windows, and tokens in a window's owned middle matching a run of that window alone."""
import numpy
import torch

from .conftest import bert_module, make_nlp
from .reference import pool, token_pieces

WORDS = ("the quick brown fox jumps over lazy dogs while researchers ran significance tests "
         "on unbelievably heterogeneous datasets , hypothesizing counterintuitive results .").split()


def _text(n_words, seed=0):
    rng = numpy.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=n_words))


def test_windowed_tokens_match_their_window_run_alone(minilm_dir, hf_reference):
    tokenizer, model = hf_reference
    window, stride = 128, 64
    nlp = make_nlp(minilm_dir, window=window, stride=stride)
    text = _text(400)
    doc = nlp(text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    n = len(ids)
    assert n > 3 * window
    pieces = token_pieces(doc, offsets)
    starts = list(range(0, n - window, stride)) + [n - window]
    window_states = {}
    for s in starts:
        input_ids = torch.tensor([[tokenizer.cls_token_id] + ids[s : s + window] + [tokenizer.sep_token_id]])
        with torch.no_grad():
            window_states[s] = model(input_ids=input_ids).last_hidden_state[0, 1:-1].double().numpy()
    checked = 0
    for t, ps in enumerate(pieces):
        if not ps:
            continue
        # The spec's rule: the token's vector comes from the window where it has the
        # most context on both sides. Check tokens whose best window wins clearly.
        context = {s: min(min(ps) - s, s + window - 1 - max(ps)) for s in starts
                   if s <= min(ps) and max(ps) < s + window}
        ranked = sorted(context.values(), reverse=True)
        if len(ranked) > 1 and ranked[0] - ranked[1] < 8:
            continue
        best = max(context, key=context.get)
        expected = pool(window_states[best], [[p - best for p in ps]], "mean")[0]
        numpy.testing.assert_allclose(doc._.ctx_vectors[t], expected, atol=1e-4, rtol=0)
        checked += 1
    assert checked > len(doc) // 3


def test_no_truncation_and_no_length_warning(minilm_dir, capfd, caplog):
    nlp = make_nlp(minilm_dir)
    doc = nlp(_text(1500, seed=1))
    assert doc._.ctx_vectors.shape == (len(doc), 384)
    covered = doc._.ctx_vectors.any(axis=1)
    assert covered.all()
    out, err = capfd.readouterr()
    assert "longer than the specified maximum" not in out + err + caplog.text


def test_20000_word_doc_in_bounded_batches(tiny_bert_dir):
    budget = 1024
    nlp = make_nlp(tiny_bert_dir, max_batch_items=budget)
    module = bert_module(nlp.get_pipe("ctxembed_bert").model)
    seen = []
    hook = module.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        doc = nlp(_text(20_000, seed=2))
    finally:
        hook.remove()
    assert len(doc) == 20_000
    assert doc._.ctx_vectors.shape == (20_000, 32)
    assert doc._.ctx_vectors.any(axis=1).all()
    assert len(seen) > 10
    assert max(rows * cols for rows, cols in seen) <= budget


def test_batched_docs_equal_one_at_a_time(minilm_dir):
    nlp = make_nlp(minilm_dir, window=96, stride=48, max_batch_items=700)
    texts = [_text(n, seed=n) for n in (3, 250, 40, 0, 120, 7)]
    together = [d._.ctx_vectors for d in nlp.pipe(texts, batch_size=6)]
    alone = [nlp(t)._.ctx_vectors for t in texts]
    for a, b in zip(together, alone):
        numpy.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_one_token_longer_than_a_window_pools_each_piece_from_the_window_that_owns_it(minilm_dir, hf_reference):
    """A custom tokenizer (or `Doc(words=...)`) may give one token of 2,000
    characters, 310 pieces: more than a window and than the overlap, so the
    windows are cut inside it. Its vector is the mean over its pieces of each
    piece's state in the window that owns it (the middle of each overlap: the
    left window on a tie), against `transformers` on those windows. Only
    tokens that win their window clearly were checked against `transformers`
    before, and the 5,000-character tokens of test_odd_input for their shape."""
    from spacy.tokens import Doc

    tokenizer, model = hf_reference
    window, stride = 64, 40
    nlp = make_nlp(minilm_dir, window=window, stride=stride)
    long_token = ("significance." * 200)[:2000]
    doc = nlp(Doc(nlp.vocab, words=[long_token], spaces=[False]))
    ids = tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]
    n = len(ids)
    assert n > 4 * window
    starts = list(range(0, n - window, stride)) + [n - window]
    owned = numpy.zeros((n, 384))
    for s in starts:
        input_ids = torch.tensor([[tokenizer.cls_token_id] + ids[s : s + window] + [tokenizer.sep_token_id]])
        with torch.no_grad():
            states = model(input_ids=input_ids).last_hidden_state[0, 1:-1].double().numpy()
        for p in range(s, s + window):
            # The window where piece p has the most context on both sides; the earlier one on a tie.
            best = max((w for w in starts if w <= p < w + window), key=lambda w: (min(p - w, w + window - 1 - p), -w))
            if best == s:
                owned[p] = states[p - s]
    numpy.testing.assert_allclose(doc._.ctx_vectors[0], owned.mean(axis=0), atol=1e-4, rtol=0)
