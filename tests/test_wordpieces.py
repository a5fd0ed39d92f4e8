"""The runner's wordpieces equal what the `transformers` tokenizer itself returns.

The runner calls the Rust tokenizer behind a fast tokenizer directly (a private
copy, truncation and padding off); the reference is the `transformers` call
`tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)`.
"""
import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spacy_ctxembed.models.wordpieces import Wordpieces

TEXTS = [
    "I ran to the park.",
    "",
    "   ",
    "Naïve café owners   didn't\tlike   \"unbelievably\" long-winded résumés!\n\nNew paragraph.",
    "[CLS] special [SEP] tokens [MASK] inside [PAD] the text [UNK]",
    "Emoji 🙂🙃 and CJK 漢字かな and a control char \x07 and combining e\u0301.",
    "word " * 300,  # past the saved tokenizer's truncation at 128 pieces
]


def _reference(tokenizer, texts):
    encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return encoding["input_ids"], encoding["offset_mapping"]


def _per_text(pieces, texts):
    """`pieces.flat(texts)` cut back into texts: (ids, spans), one array each a text."""
    ids, spans, counts = pieces.flat(texts)
    assert len(counts) == len(texts) and len(ids) == len(spans) == counts.sum()
    cuts = numpy.cumsum(counts)[:-1]
    return numpy.split(ids, cuts), numpy.split(spans, cuts)


def _assert_equal_to_transformers(tokenizer, texts):
    ids, spans = _per_text(Wordpieces(tokenizer), texts)
    expected_ids, expected_spans = _reference(tokenizer, texts)
    assert len(ids) == len(spans) == len(texts)
    for got, expected in zip(ids, expected_ids):
        assert got.dtype == numpy.int64
        numpy.testing.assert_array_equal(got, numpy.asarray(expected, dtype="int64"))
    for got, expected in zip(spans, expected_spans):
        assert got.shape == (len(expected), 2)
        numpy.testing.assert_array_equal(got, numpy.asarray(expected, dtype="int64").reshape(-1, 2))


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def test_equals_transformers_on_odd_texts(minilm_tokenizer):
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(minilm_tokenizer.name_or_path)
    assert fresh.backend_tokenizer.truncation is not None  # what the private copy must undo
    pieces = Wordpieces(fresh)
    assert pieces._backend is not None
    assert len(_per_text(pieces, TEXTS)[0][-1]) == 300
    assert fresh.backend_tokenizer.truncation is not None  # the tokenizer itself is left as it was
    _assert_equal_to_transformers(fresh, TEXTS)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=5))
def test_equals_transformers_on_any_text(minilm_tokenizer, texts):
    _assert_equal_to_transformers(minilm_tokenizer, texts)


def test_no_texts(minilm_tokenizer):
    assert [len(a) for a in Wordpieces(minilm_tokenizer).flat([])] == [0, 0, 0]


def test_byte_level_bpe_with_truncation_and_padding_saved():
    """A RoBERTa-style byte-level BPE whose saved state truncates and pads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"]))
    backend.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0), trim_offsets=True)
    backend.enable_truncation(8)
    backend.enable_padding(length=8, pad_token="<pad>", pad_id=2)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    _assert_equal_to_transformers(tokenizer, TEXTS)
    assert len(Wordpieces(tokenizer).flat(["word " * 50])[0]) > 8


def test_a_tokenizer_that_changes_batch_encoding_goes_through_transformers(minilm_tokenizer):
    from transformers import BertTokenizerFast

    class AppendsAWord(BertTokenizerFast):
        def _batch_encode_plus(self, batch_text_or_text_pairs, *args, **kwargs):
            return super()._batch_encode_plus([t + " park" for t in batch_text_or_text_pairs], *args, **kwargs)

    tokenizer = AppendsAWord.from_pretrained(minilm_tokenizer.name_or_path)
    assert Wordpieces(tokenizer)._backend is None
    _assert_equal_to_transformers(tokenizer, ["I ran to the", "Naïve café"])
    assert len(Wordpieces(tokenizer).flat(["I ran"])[0]) == 3  # the override ran


def test_split_special_tokens_and_added_tokens(minilm_tokenizer):
    from transformers import AutoTokenizer

    texts = ["a [CLS] in the text, and [MASK] too", "ctxembed and newword are added words"]
    splitting = AutoTokenizer.from_pretrained(minilm_tokenizer.name_or_path, split_special_tokens=True)
    assert Wordpieces(splitting)._backend is not None
    _assert_equal_to_transformers(splitting, texts)
    added = AutoTokenizer.from_pretrained(minilm_tokenizer.name_or_path)
    added.add_tokens(["ctxembed", "newword"])
    _assert_equal_to_transformers(added, texts)
    assert Wordpieces(added).flat(texts[1:])[0][0] == added.convert_tokens_to_ids("ctxembed")


def test_roberta_tokenizer_is_read_directly(tmp_path):
    """RoBERTa's tokenizer class overrides batch encoding only to refuse
    pretokenized input: the direct path serves it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.model.save(str(tmp_path))
    tokenizer = RobertaTokenizerFast(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    assert Wordpieces(tokenizer)._backend is not None
    _assert_equal_to_transformers(tokenizer, TEXTS)


def test_a_tokenizer_that_changes_its_call_goes_through_transformers(minilm_tokenizer):
    """A tokenizer class may change encoding in `__call__` as well as in
    `_batch_encode_plus`: the Rust tokenizer behind it would skip that, so it
    is called through `transformers`, and its pieces are what it returns
    there; for no texts too (no pieces, not an error)."""
    from transformers import BertTokenizerFast

    class AppendsAWordInItsCall(BertTokenizerFast):
        def __call__(self, text=None, *args, **kwargs):
            if isinstance(text, (list, tuple)):
                text = [t + " park" for t in text]
            return super().__call__(text, *args, **kwargs)

    tokenizer = AppendsAWordInItsCall.from_pretrained(minilm_tokenizer.name_or_path)
    _assert_equal_to_transformers(tokenizer, ["I ran to the", "Naïve café"])
    assert len(Wordpieces(tokenizer).flat(["I ran"])[0]) == 3  # the override ran
    ids, spans, counts = Wordpieces(tokenizer).flat([])
    assert (ids.shape, spans.shape, counts.shape) == ((0,), (0, 2), (0,))
