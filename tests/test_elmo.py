"""ctxembed_elmo against the float64 NumPy reference, and its contract."""
import copy
import pickle
import shutil

import h5py
import numpy
import pytest
import spacy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spacy.tokens import Doc, DocBin

from spacy_ctxembed import restore_vectors
from spacy_ctxembed.models.elmo_chars import char_ids, distinct_words, sentence_char_ids
from spacy_ctxembed.models.elmo_net import build_bilm
from spacy_ctxembed.models.elmo_weights import ElmoFileError, read_options, read_weights

from .conftest import ctx_config, send_random_gradients
from .elmo_fixture import SMALL, write_elmo_fixture
from .elmo_reference import ReferenceElmo
from .elmo_reference import char_ids as reference_char_ids
from .packaging import assert_packages_and_loads

ATOL = 1e-5


@pytest.fixture(scope="module")
def elmo_files(tmp_path_factory):
    return write_elmo_fixture(tmp_path_factory.mktemp("elmo"))


@pytest.fixture(scope="module")
def reference(elmo_files):
    return ReferenceElmo(*elmo_files)


def elmo_nlp(files, sentencizer=False, **settings):
    nlp = spacy.blank("en")
    if sentencizer:
        nlp.add_pipe("sentencizer")
    config = ctx_config(store_layers=True, options_file=str(files[0]), weight_file=str(files[1]), **settings)
    nlp.add_pipe("ctxembed_elmo", config=config)
    nlp.initialize()
    return nlp


@pytest.fixture(scope="module")
def nlp_elmo(elmo_files):
    return elmo_nlp(elmo_files)


def _words(doc_or_span):
    return [t.text for t in doc_or_span if not t.is_space]


def test_every_layer_matches_reference(nlp_elmo, reference):
    doc = nlp_elmo("The cat sat on the mat with naïve café owners 😀 .")
    expected = reference(_words(doc))
    assert doc._.ctx_layers.shape == (3, len(doc), 16)
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=ATOL, rtol=0)
    numpy.testing.assert_allclose(doc._.ctx_vectors, expected.mean(axis=0), atol=ATOL, rtol=0)
    numpy.testing.assert_array_equal(doc.tensor, doc._.ctx_vectors)


def test_fixture_makes_clipping_happen(nlp_elmo, reference):
    reference.clipped = {"cell": 0, "proj": 0}
    reference("a fairly long sentence so that the cell state has time to grow past its clip".split())
    assert reference.clipped["cell"] > 0 and reference.clipped["proj"] > 0


def test_layer_selection_and_scalar_mix(elmo_files, reference):
    doc = elmo_nlp(elmo_files, layers=[2, 0], combine="concat")("Two words here")
    expected = reference(_words(doc))
    numpy.testing.assert_allclose(doc._.ctx_vectors, numpy.concatenate([expected[2], expected[0]], axis=1), atol=ATOL)
    mixed = elmo_nlp(elmo_files, combine="scalar_mix")("Two words here")
    numpy.testing.assert_allclose(mixed._.ctx_vectors, expected.mean(axis=0), atol=ATOL)


@pytest.mark.parametrize("layers", [[0], [1], [1, 0], [-1]])
def test_layers_above_the_deepest_selected_are_not_run(elmo_files, reference, monkeypatch, layers):
    # A layer depends only on those below it: [0] needs no biLSTM, [1] its first layer only.
    from spacy_ctxembed.models.elmo_net import BiLstm

    run = []
    original = BiLstm._run_layer
    monkeypatch.setattr(BiLstm, "_run_layer", lambda self, layer, *a: run.append(layer) or original(self, layer, *a))
    doc = elmo_nlp(elmo_files, layers=layers)("Two words here and a few more")
    numpy.testing.assert_allclose(doc._.ctx_layers, reference(_words(doc))[layers], atol=ATOL, rtol=0)
    assert sorted(set(run)) == list(range(max(layer % 3 for layer in layers)))


def test_sentences_are_embedded_on_their_own(elmo_files, reference):
    nlp = elmo_nlp(elmo_files, sentencizer=True)
    doc = nlp("I ran to the park. Then I ran significance tests!  Done.")
    sents = list(doc.sents)
    assert len(sents) == 3
    for sent in sents:
        words = [t for t in sent if not t.is_space]
        expected = reference([t.text for t in words])
        numpy.testing.assert_allclose(doc._.ctx_layers[:, [t.i for t in words]], expected, atol=ATOL)
    # Without boundaries the whole doc is one sequence.
    whole = elmo_nlp(elmo_files)(doc.text)
    numpy.testing.assert_allclose(whole._.ctx_layers[:, [t.i for t in whole if not t.is_space]],
                                  reference(_words(whole)), atol=ATOL)


def test_whitespace_tokens_stay_out(nlp_elmo, reference):
    doc = nlp_elmo("Hello   world\n\nagain")
    spaces = [t for t in doc if t.is_space]
    assert spaces and all(not t.has_vector and not t.vector.any() for t in spaces)
    numpy.testing.assert_allclose(doc._.ctx_layers[:, [t.i for t in doc if not t.is_space]],
                                  reference(["Hello", "world", "again"]), atol=ATOL)


def test_batch_independence_and_determinism(elmo_files):
    nlp = elmo_nlp(elmo_files)
    texts = ["short one", "a much longer sentence with quite a few more words in it than the others",
             "x", "medium length sentence here", ""]
    alone = [nlp(t)._.ctx_layers for t in texts]
    together = [d._.ctx_layers for d in nlp.pipe(texts, batch_size=5)]
    reversed_order = [d._.ctx_layers for d in nlp.pipe(texts[::-1], batch_size=5)][::-1]
    again = [nlp(t)._.ctx_layers for t in texts]
    for a, b, c, d in zip(alone, together, reversed_order, again):
        numpy.testing.assert_allclose(b, a, atol=ATOL, rtol=0)
        numpy.testing.assert_allclose(c, a, atol=ATOL, rtol=0)
        numpy.testing.assert_array_equal(d, a)


def test_compiled_step_matches_the_reference_and_stays_deterministic(elmo_files, reference):
    # torch.compile (inductor on CPU here) fuses the gates: the clipping and
    # the projection must stay exact, against the float64 reference too.
    eager = elmo_nlp(elmo_files)
    nlp = elmo_nlp(elmo_files, compile=True)
    texts = ["a fairly long sentence so that the cell state has time to grow past its clip and then some more",
             "short one", "x", "The cat sat on the mat with naïve café owners 😀 .", "", "medium length sentence here"]
    docs = list(nlp.pipe(texts, batch_size=6))
    again = list(nlp.pipe(texts, batch_size=6))
    for text, doc, repeat in zip(texts, docs, again):
        numpy.testing.assert_allclose(doc._.ctx_layers, reference(_words(doc)), atol=ATOL, rtol=0)
        numpy.testing.assert_allclose(doc._.ctx_layers, eager(text)._.ctx_layers, atol=ATOL, rtol=0)
        numpy.testing.assert_array_equal(repeat._.ctx_layers, doc._.ctx_layers)
        numpy.testing.assert_allclose(nlp(text)._.ctx_layers, doc._.ctx_layers, atol=ATOL, rtol=0)


def test_compiled_step_compiles_a_few_graphs_then_never_again(elmo_files):
    # The step sees a different number of running rows at nearly every step,
    # and new batch shapes with every batch: one dynamic graph must serve them
    # all. Fed views of changing strides, dynamo compiled a graph per layout
    # until its recompile limit, then ran the step uncompiled, silently.
    import random

    import torch._dynamo

    torch._dynamo.reset()
    nlp = elmo_nlp(elmo_files, compile=True)
    rng = random.Random(0)
    vocab = "the cat sat on a mat and then ran off quickly".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 40))) for _ in range(120)]
    list(nlp.pipe(texts[:16], batch_size=16))  # warm-up: the few graphs it needs
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch_size in (104, 7, 1):
            list(nlp.pipe(texts[16:], batch_size=batch_size))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("projection_rows", [1, 3, 7])
def test_rows_finishing_in_later_projection_chunks_match_the_reference(
    elmo_files, reference, monkeypatch, projection_rows, compiled
):
    # The input projections run a chunk of time steps at a time
    # (PROJECTION_ROWS // batch of them): chunks that start with fewer rows
    # running, and rows that finish inside a later chunk, against the
    # float64 reference (the default 512 gives these sentences one chunk).
    from spacy_ctxembed.models import elmo_net

    monkeypatch.setattr(elmo_net, "PROJECTION_ROWS", projection_rows)
    nlp = elmo_nlp(elmo_files, compile=compiled)
    texts = ["a b c d e f g h i j k l", "one two three", "x", "p q r s t u v", "m n o p q r s t u v w"]
    for doc in nlp.pipe(texts, batch_size=len(texts)):
        numpy.testing.assert_allclose(doc._.ctx_layers, reference(_words(doc)), atol=ATOL, rtol=0)


def test_v2_configs_still_load_and_run_eagerly(elmo_files, reference):
    from spacy_ctxembed.models.elmo_net import lstm_step

    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config={"model": {"encoder": {
        "@architectures": "spacy-ctxembed.ElmoEncoder.v2",
        "options_file": str(elmo_files[0]), "weight_file": str(elmo_files[1])}}, "store_layers": True})
    nlp.initialize()
    assert nlp.get_pipe("ctxembed_elmo").encoder.shims[0].step is lstm_step
    doc = nlp("Two words here")
    numpy.testing.assert_allclose(doc._.ctx_layers, reference(_words(doc)), atol=ATOL, rtol=0)


def test_char_ids():
    assert list(char_ids("a")[:4]) == [259, 98, 260, 261]
    assert list(char_ids("<S>")[:4]) == [259, 257, 260, 261]
    assert list(char_ids("</S>")[:4]) == [259, 258, 260, 261]
    long_word = "é" * 30  # 60 bytes: cut at 48, and the last é is not cut in half
    ids = char_ids(long_word)
    assert len(ids) == 50 and ids[0] == 259 and ids[49] == 260 and ids[48] == 0xA9 + 1
    emoji = "😀" * 13  # 52 bytes: the 13th emoji is cut after 0 of its 4 bytes, the 12th whole
    assert list(char_ids(emoji)) == reference_char_ids(emoji)
    cut = "ab" + "😀" * 12  # 50 bytes: cut at 48 keeps the first 2 of the last emoji's 4 bytes (F0 9F)
    assert list(char_ids(cut)) == reference_char_ids(cut)
    assert list(char_ids(cut)[47:50]) == [0xF0 + 1, 0x9F + 1, 259 + 1]
    for word in ["", "ü", "中文", "<S>", "</S>", "x" * 100, "\u0000"]:
        assert list(char_ids(word)) == reference_char_ids(word)
    wrapped = sentence_char_ids(["hi"])
    assert wrapped.shape == (3, 50)
    assert list(wrapped[0]) == reference_char_ids("<S>") and list(wrapped[2]) == reference_char_ids("</S>")


@pytest.mark.parametrize("text", ["", "   ", "Word", "<S> and </S> as words", "x" * 80 + " ok",
                                  "中文 😀😀😀😀😀😀😀😀😀😀😀😀😀 émoji", "\u0000\u0007 control"])
def test_odd_input(nlp_elmo, reference, text):
    doc = nlp_elmo(text)
    assert doc._.ctx_vectors.shape == (len(doc), 16)
    words = _words(doc)
    if words:
        numpy.testing.assert_allclose(doc._.ctx_layers[:, [t.i for t in doc if not t.is_space]],
                                      reference(words), atol=ATOL)


def test_5000_token_sentence(nlp_elmo):
    doc = nlp_elmo(" ".join(["word", "other", "thing"] * 1667))
    assert doc._.ctx_vectors.shape == (5001, 16)
    assert numpy.isfinite(doc._.ctx_vectors).all() and doc._.ctx_vectors.any(axis=1).all()


def test_round_trips(elmo_files, tmp_path):
    options_copy, weights_copy = tmp_path / "o.json", tmp_path / "w.hdf5"
    shutil.copy(elmo_files[0], options_copy)
    shutil.copy(elmo_files[1], weights_copy)
    nlp = elmo_nlp((options_copy, weights_copy), combine="scalar_mix")
    original = nlp("It was nice out when I ran to the park")
    nlp.to_disk(tmp_path / "pipeline")
    options_copy.unlink()
    weights_copy.unlink()
    assert (tmp_path / "pipeline" / "ctxembed_elmo" / "model" / "weights.hdf5").is_file()
    loaded = spacy.load(tmp_path / "pipeline")
    doc = loaded(original.text)
    numpy.testing.assert_allclose(doc._.ctx_layers, original._.ctx_layers, atol=1e-6)
    numpy.testing.assert_array_equal(pickle.loads(pickle.dumps(doc))[3].vector, doc[3].vector)
    copy = Doc(loaded.vocab).from_bytes(doc.to_bytes())
    numpy.testing.assert_array_equal(restore_vectors(copy)[3].vector, doc[3].vector)
    DocBin(docs=[doc], store_user_data=True).to_disk(tmp_path / "d.spacy")
    back = restore_vectors(next(DocBin().from_disk(tmp_path / "d.spacy").get_docs(loaded.vocab)))
    numpy.testing.assert_array_equal(back[3].vector, doc[3].vector)
    from_bytes = spacy.blank("en")
    from_bytes.add_pipe("ctxembed_elmo", config=ctx_config(store_layers=True, combine="scalar_mix"))
    from_bytes.from_bytes(nlp.to_bytes())
    numpy.testing.assert_allclose(from_bytes(original.text)._.ctx_layers, original._.ctx_layers, atol=1e-6)


@pytest.mark.slow
def test_spacy_package(elmo_files, tmp_path):
    assert_packages_and_loads(elmo_nlp(elmo_files), "ctxembed_elmo/model/weights.hdf5", "I ran to the park", tmp_path)


def _broken(tmp_path, elmo_files, edit):
    options, weights = tmp_path / "options.json", tmp_path / "weights.hdf5"
    shutil.copy(elmo_files[0], options)
    shutil.copy(elmo_files[1], weights)
    edit(options, weights)
    return options, weights


def _rewrite_dataset(name, shape):
    def edit(options, weights):
        with h5py.File(weights, "a") as f:
            del f[name]
            if shape is not None:
                f[name] = numpy.zeros(shape, dtype="float32")
    return edit


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda o, w: w.unlink(), r"weight_file = .*weights.hdf5': no such file"),
        (lambda o, w: o.unlink(), r"options_file = .*options.json': no such file"),
        (lambda o, w: w.write_bytes(w.read_bytes()[:2000]), r"cannot be read as HDF5"),
        (lambda o, w: w.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 500), r"cannot be read as HDF5"),
        (lambda o, w: w.write_bytes(b"not hdf5 at all"), r"cannot be read as HDF5"),
        (_rewrite_dataset("char_embed", None), r"not an ELMo weight file \(dataset 'char_embed' is missing\)"),
        (_rewrite_dataset("CNN_proj/W_proj", None),
         r"dataset 'CNN_proj/W_proj' is missing \(expected shape \(16, 8\)\)"),
        (_rewrite_dataset("RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0", (16, 32)),
         r"dataset 'RNN_1/RNN/MultiRNNCell/Cell1/LSTMCell/W_0' has shape \(16, 32\), expected \(16, 64\)"),
        (lambda o, w: o.write_text(o.read_text().replace('"projection_dim": 8', '"projection_dim": 10')),
         r"dataset 'CNN/W_cnn_0'|has shape .* expected .*from the options"),
        (lambda o, w: o.write_text("{not json"), r"not ELMo options"),
    ],
    ids=["no-weights", "no-options", "truncated", "corrupt-header", "not-hdf5", "no-char-embed",
         "missing-dataset", "wrong-shape", "options-disagree", "bad-options"],
)
def test_file_errors(tmp_path, elmo_files, edit, pattern):
    options, weights = _broken(tmp_path, elmo_files, edit)
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(options), weight_file=str(weights)))
    with pytest.raises(ElmoFileError, match=pattern):
        nlp.initialize()


@pytest.mark.parametrize("swap", ["swapped", "options-twice"])
def test_swapped_files_are_named_as_swapped(elmo_files, swap):
    """The two file settings side by side are easily swapped, or one path given
    for both: the errors said "not UTF-8 text: can't decode byte 0x89" and
    "file signature not found", not which file was which."""
    options, weights = elmo_files
    given = {"options_file": str(weights), "weight_file": str(options)} if swap == "swapped" else \
        {"options_file": str(options), "weight_file": str(options)}
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(**given))
    setting, found = ("options_file", "an HDF5 file") if swap == "swapped" else ("weight_file", "JSON text")
    with pytest.raises(ElmoFileError) as err:
        nlp.initialize()
    message = str(err.value)
    assert message.startswith(f"[ctxembed_elmo] {setting} = {given[setting]!r}: ")
    assert found in message and "were the two swapped?" in message


def test_settings_errors(elmo_files):
    with pytest.raises(Exception, match=r"ctxembed_elmo.model.encoder -> compile.*'yes' is not"):
        elmo_nlp(elmo_files, compile="yes")
    with pytest.raises(Exception, match=r"layers = \[0, 3\].*index 3 is out of range"):
        elmo_nlp(elmo_files, layers=[0, 3])
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_elmo")
    with pytest.raises(Exception, match=r"options_file = None: set it to the path"):
        nlp.initialize()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "ran", "the", "park", "<S>", "</S>", "ünï", "x" * 60]), max_size=7),
                min_size=1, max_size=5))
def test_distinct_words_against_a_dict(sentences):
    """Each position points at its own char ids; each distinct word (padding's zeros too) appears once."""
    time = max(len(s) for s in sentences) + 1
    batch = numpy.zeros((len(sentences), time, 50), dtype="int64")
    for row, words in enumerate(sentences):
        for t, word in enumerate(words):
            batch[row, t] = char_ids(word)
    words, positions = distinct_words(batch)
    assert positions.shape == (len(sentences), time)
    numpy.testing.assert_array_equal(words[positions], batch)
    expected = {tuple(r) for r in batch.reshape(-1, 50).tolist()}
    assert len(words) == len(expected) == len({tuple(r) for r in words.tolist()})
    # In lexicographic order, as torch.unique(dim=0) gives them (the CNN's batches stay as they were).
    assert [tuple(r) for r in words.tolist()] == sorted(expected)


# The character convolutions of the full-size configuration (char_dim 16, filter
# widths 1..7 with up to 1024 filters) and of the tiny fixture's (char_dim 4).
CONV_SHAPES = [(16, width, n) for width, n in [(1, 32), (2, 32), (3, 64), (4, 128), (5, 256), (6, 512), (7, 1024)]]
CONV_SHAPES += [(4, 1, 4), (4, 2, 4), (4, 3, 8)]


@pytest.mark.parametrize("char_dim, width, n_filters", CONV_SHAPES)
def test_unfolded_convolution_equals_conv1d(char_dim, width, n_filters):
    """The CUDA path's convolution (unfold + matmul, which follows the matmul
    precision, not cuDNN's TF32 default) against F.conv1d, here on CPU tensors."""
    import torch
    import torch.nn.functional as F

    from spacy_ctxembed.models.elmo_net import conv1d_unfolded

    generator = torch.Generator().manual_seed(width * 1000 + n_filters)
    # Scaled as the fixture's weights: embeddings ~N(0, 1), kernels ~N(0, 1/(width * char_dim)).
    inputs = torch.randn((64, char_dim, 50), generator=generator)
    weight = torch.randn((n_filters, char_dim, width), generator=generator) / (width * char_dim) ** 0.5
    bias = torch.randn((n_filters,), generator=generator) * 0.1
    out = conv1d_unfolded(inputs, weight, bias)
    expected = F.conv1d(inputs.double(), weight.double(), bias.double())
    assert out.shape == expected.shape == (64, n_filters, 50 - width + 1)
    # To 1e-6 of the outputs' scale (|out| up to ~6): an absolute 1e-6 is a few
    # float32 ulps there, which fp32 F.conv1d itself is off by (2.5e-6 at most
    # here). A wrong layout would be off by O(1), TF32 by ~1e-3.
    scale = float(expected.abs().max())
    numpy.testing.assert_allclose(out.double().numpy(), expected.numpy(), atol=1e-6 * scale, rtol=0)


def test_a_batch_outputs_are_freed_before_the_next_batch_runs(elmo_files, monkeypatch):
    """Each biLM batch's outputs (every layer, padding included) are dropped once
    copied out: alive while the next batch runs, they would add a batch's worth
    to the peak memory."""
    import weakref

    nlp = elmo_nlp(elmo_files, max_batch_items=12)
    net = nlp.get_pipe("ctxembed_elmo").encoder.shims[0].get_net()
    run_batch = net.forward
    outputs: list = []
    alive_at_call = []

    def forward(*args, **kwargs):
        alive_at_call.append(sum(ref() is not None for ref in outputs))
        layers = run_batch(*args, **kwargs)
        outputs.extend(weakref.ref(layer) for layer in layers)
        return layers

    monkeypatch.setattr(net, "forward", forward)
    texts = ["one two three", "four five six seven", "eight nine", "ten eleven twelve thirteen", "fourteen"]
    docs = list(nlp.pipe(texts, batch_size=len(texts)))
    assert len(alive_at_call) > 2  # several batches, or nothing was tested
    assert alive_at_call == [0] * len(alive_at_call)
    monkeypatch.undo()
    for text, doc in zip(texts, docs):  # and the outputs are still each doc's own
        numpy.testing.assert_allclose(doc._.ctx_layers, nlp(text)._.ctx_layers, atol=ATOL, rtol=0)


def test_each_docs_output_owns_its_memory(nlp_elmo):
    # One array serves all the docs of a call: a doc's output must not be a view
    # into it, or keeping one doc would keep them all. A single doc's output is
    # that array itself.
    shim = nlp_elmo.get_pipe("ctxembed_elmo").encoder.shims[0]
    texts = ["The cat sat on the mat", "", "Two words", "Hello   world\n\nagain"]
    for docs in ([nlp_elmo.make_doc(t) for t in texts], [nlp_elmo.make_doc(texts[0])]):
        outputs = shim.embed(docs, False)
        for doc, out in zip(docs, outputs):
            assert out.shape == (3, len(doc), 16) and out.is_contiguous()
            assert out.untyped_storage().nbytes() == out.numel() * out.element_size()


@pytest.mark.parametrize("lstm, cnn", [({"cell_clip": 2.0, "proj_clip": 0.5}, {}), ({}, {"activation": "tanh"})],
                         ids=["clips-differ", "tanh"])
def test_options_the_fixture_leaves_at_one_value_match_the_reference(tmp_path, lstm, cnn):
    # The fixture's cell_clip and proj_clip are both 3 and its activation relu (as
    # the released files'): a biLM that clipped the cell state with proj_clip (or
    # the projection with cell_clip), or that ignored `activation`, passed every test.
    options = copy.deepcopy(SMALL)
    options["lstm"].update(lstm)
    options["char_cnn"].update(cnn)
    files = write_elmo_fixture(tmp_path / "elmo", options)
    reference = ReferenceElmo(*files)
    doc = elmo_nlp(files)("a long sentence so that the cell state has time to grow past its clip")
    expected = reference(_words(doc))
    if lstm:  # both clips bind
        assert reference.clipped["cell"] > 0 and reference.clipped["proj"] > 0
    numpy.testing.assert_allclose(doc._.ctx_layers, expected, atol=ATOL, rtol=0)


def test_the_bilm_takes_a_batch_in_any_length_order(nlp_elmo, reference):
    # `embed` hands the biLM its sentences longest first, so its internal sort is
    # the identity there: a wrong un-sort (the permutation itself instead of its
    # inverse) went unseen. Shortest first here, and a length tie.
    net = nlp_elmo.get_pipe("ctxembed_elmo").encoder.shims[0].get_net()
    sentences = [["x"], ["one", "two"], ["a", "b", "c", "d", "e"], ["p", "q"], ["m", "n", "o", "p"]]
    wrapped = [sentence_char_ids(words) for words in sentences]
    lengths = numpy.array([len(w) for w in wrapped])
    char_ids = numpy.zeros((len(wrapped), lengths.max(), 50), dtype="int64")
    for row, ids in enumerate(wrapped):
        char_ids[row, : len(ids)] = ids
    words, positions = distinct_words(char_ids)
    with torch.inference_mode():
        layers = net(torch.from_numpy(words), torch.from_numpy(positions), torch.from_numpy(lengths))
    got = numpy.stack([layer.numpy() for layer in layers])  # (3, batch, time, 16)
    for row, words_of_row in enumerate(sentences):
        numpy.testing.assert_allclose(got[:, row, 1 : 1 + len(words_of_row)], reference(words_of_row),
                                      atol=ATOL, rtol=0)


def test_a_trainable_bilstm_sends_back_the_gradient_of_its_forward_pass(elmo_files):
    # The trainable biLM's gradient against a float64 central difference of its own
    # forward pass (which the reference tests check), along random directions: a
    # path cut from the graph (a skip connection detached, say) still lets every
    # weight move, so the training tests pass, with a wrong gradient.
    options = read_options(elmo_files[0], component="t")
    bilstm = build_bilm(options, read_weights(elmo_files[1], options, component="t"), trainable=True).bilstm.double()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([6, 3])
    shape = (2, 6, options.projection_dim)
    tokens = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.3
    real = (torch.arange(6)[None, :] < lengths[:, None])[:, :, None].double()  # padding's outputs are unspecified
    weights = [torch.randn((2, 6, 2 * options.projection_dim), generator=generator, dtype=torch.float64) * real
               for _ in range(options.n_layers)]

    def loss(x):
        return sum((layer * w).sum() for layer, w in zip(bilstm(x, lengths), weights))

    x = tokens.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(x), x)
    eps = 1e-6
    for _ in range(3):
        direction = torch.randn(shape, generator=generator, dtype=torch.float64) * real
        with torch.no_grad():
            numeric = (loss(tokens + eps * direction) - loss(tokens - eps * direction)) / (2 * eps)
        assert float((grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-5, abs=1e-7)


def _in_released_layout(grads, options):
    """The biLM's gradients (by state-dict name) in the layout of the weights
    file, as the reference reads it: written out here from the format
    description, not with the package's `released_layout`."""
    P = options.projection_dim
    out = {"char_embed": grads["char_cnn.char_embed"], "CNN_proj/W_proj": grads["char_cnn.proj_w"],
           "CNN_proj/b_proj": grads["char_cnn.proj_b"]}
    for i in range(len(options.filters)):
        out[f"CNN/W_cnn_{i}"] = grads[f"char_cnn.conv_w_{i}"].transpose(2, 1, 0)[None]  # (1, width, char_dim, n)
        out[f"CNN/b_cnn_{i}"] = grads[f"char_cnn.conv_b_{i}"]
    for k in range(options.n_highway):
        for name in ("W_carry", "W_transform", "b_carry", "b_transform"):
            out[f"CNN_high_{k}/{name}"] = grads[f"char_cnn.high_{k}_{name}"]
    for layer in range(options.n_layers):
        for direction in range(2):
            prefix = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            w_x, w_h = grads[f"bilstm.w_x_{layer}"][direction], grads[f"bilstm.w_h_{layer}"][direction]
            assert w_x.shape[0] == P
            out[f"{prefix}/W_0"] = numpy.concatenate([w_x, w_h])  # rows: [input; previous output]
            out[f"{prefix}/B"] = grads[f"bilstm.b_{layer}"][direction, 0]
            out[f"{prefix}/W_P_0"] = grads[f"bilstm.w_p_{layer}"][direction]
    return out


def test_a_trainable_elmo_sends_each_weight_the_gradient_of_the_reference(elmo_files):
    """What a trained ctxembed_elmo's listeners send back, as the gradient of
    every biLM weight (character embeddings, convolutions, highway,
    projection, both LSTM layers), against float64 central differences of the
    NumPy reference (`elmo_reference`) along a random direction per group of
    weights, over docs with several sentences and whitespace tokens, two
    listeners (of the layers and of the scalar mix's vectors) and the scalar
    mix. The test above checks the biLSTM's gradient for its inputs only: a
    character CNN or an output write cut from the graph still lets the LSTM
    weights move, so the training tests pass, with a wrong gradient."""
    from spacy.training import Example

    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("ctxembed_elmo", config=ctx_config(options_file=str(elmo_files[0]), weight_file=str(elmo_files[1]),
                                                    trainable=True, combine="scalar_mix"))
    listeners = {"tagger_a": (True, 0.5), "tagger_b": (False, 1.0)}  # (mix_layers, grad_factor)
    for name, (mix_layers, factor) in listeners.items():
        tok2vec = {"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 8, "mix_layers": mix_layers,
                   "grad_factor": factor}
        nlp.add_pipe("tagger", name=name, config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": tok2vec}})
    docs = [nlp.get_pipe("sentencizer")(nlp.make_doc(text))
            for text in ["The cat  sat. On the mat\n\nwith naïve café owners !", "Short", "Another one , longer ."]]
    examples = [Example.from_dict(doc, {"tags": ["X"] * len(doc)}) for doc in docs]
    nlp.initialize(lambda: examples)
    component = nlp.get_pipe("ctxembed_elmo")
    s, gamma = numpy.array([-0.5, 0.2, 0.8]), 1.4
    component.combiner.set_param("s", s.astype("f"))
    component.combiner.set_param("gamma", numpy.array([gamma], dtype="f"))
    component.update(examples)
    sent = {name: d_outputs for name, (_, d_outputs) in send_random_gradients(nlp, listeners, docs).items()}
    shim = component.encoder.shims[0]
    # (A weight the gradient did not reach has none: zero, which the check below refuses.)
    grads = _in_released_layout({k: numpy.zeros(tuple(p.shape)) if p.grad is None else p.grad.double().numpy()
                                 for k, p in shim._model.named_parameters()},
                                shim.get_options())

    reference = ReferenceElmo(*elmo_files)
    mix = numpy.exp(s) / numpy.exp(s).sum()

    def loss():
        total = 0.0
        for i, doc in enumerate(docs):
            layers = numpy.zeros((3, len(doc), 16))
            for sentence in doc.sents:
                words = [t for t in sentence if not t.is_space]
                layers[:, [t.i for t in words]] = reference([t.text for t in words])
            vectors = gamma * numpy.tensordot(mix, layers, axes=(0, 0))
            total += sum(factor * ((layers if mix_layers else vectors) * sent[name][i]).sum()
                         for name, (mix_layers, factor) in listeners.items())
        return total

    rng = numpy.random.default_rng(1)
    weights, eps = reference.w, 1e-5
    groups = {"characters": ["char_embed"], "convolutions": ["CNN/"], "highway": ["CNN_high_"],
              "projection": ["CNN_proj"], "lstm 0": ["Cell0"], "lstm 1": ["Cell1"]}
    for group, marks in groups.items():
        direction = {k: rng.standard_normal(w.shape) for k, w in weights.items() if any(m in k for m in marks)}
        if "char_embed" in direction:
            direction["char_embed"][0] = 0  # (the padding row, the reference's own)
        numeric = []
        for sign in (1, -1):
            reference.w = {k: w + sign * eps * direction[k] if k in direction else w for k, w in weights.items()}
            numeric.append(loss())
        analytic = sum(float((grads[k] * v).sum()) for k, v in direction.items())
        assert analytic == pytest.approx((numeric[0] - numeric[1]) / (2 * eps), rel=1e-4), group


def test_spans_and_the_doc_around_whitespace_tokens(nlp_elmo):
    # Whitespace tokens have no vector (zero rows): a span or doc with a word has
    # one, its vector the mean of its words' rows only; a span of whitespace alone has none.
    doc = nlp_elmo("Hello   world\n\nagain")
    assert [t.is_space for t in doc] == [False, True, False, True, False]
    rows = numpy.asarray(doc._.ctx_vectors, dtype="float64")
    for start, end in [(0, 2), (1, 3), (0, 5), (1, 4)]:
        span = doc[start:end]
        words = [t.i for t in span if not t.is_space]
        assert span.has_vector
        numpy.testing.assert_allclose(span.vector, rows[words].mean(axis=0), rtol=1e-6, atol=1e-7)
    assert not doc[1:2].has_vector and not doc[1:2].vector.any()
    assert doc.has_vector
    numpy.testing.assert_allclose(doc.vector, rows[[0, 2, 4]].mean(axis=0), rtol=1e-6, atol=1e-7)


def test_a_deep_copy_of_the_encoder_gives_the_same_layers(nlp_elmo):
    """spaCy's replace_listeners deep-copies the encoder (`ElmoShim.__deepcopy__`):
    the copy holds the biLM and the selected layers, and gives the same output."""
    encoder = nlp_elmo.get_pipe("ctxembed_elmo").encoder
    doc = nlp_elmo.make_doc("I ran to the park .")
    copied = copy.deepcopy(encoder)
    expected = encoder.predict([doc])[0]
    got = copied.predict([doc])[0]
    assert got.shape[:2] == expected.shape[:2] == (3, 6)
    numpy.testing.assert_array_equal(got, expected)


def test_an_uninitialized_elmo_encoder_says_to_initialize():
    """An encoder run before nlp.initialize() (which loads the weights) names that step."""
    from spacy_ctxembed.models.elmo import ElmoEncoder

    nlp = spacy.blank("en")
    with pytest.raises(ValueError, match=r"^\[ctxembed_elmo\] the biLM has no weights yet: call nlp\.initialize\(\) "
                                         r"first$"):
        ElmoEncoder().predict([nlp.make_doc("A doc.")])


def test_serialized_files_need_both_the_options_and_the_weights():
    """The serialized biLM holds exactly options.json + weights.hdf5: one alone (or an extra file) is refused."""
    from spacy_ctxembed.models.elmo import ElmoShim

    shim = ElmoShim({"options_file": None, "weight_file": None, "layers": [0, 1, 2], "max_batch_items": 4096,
                     "trainable": False, "compile": False})
    assert shim.saved_files_problem({"options.json": b"", "weights.hdf5": b""}) == ""
    for files in ({"options.json": b""}, {"weights.hdf5": b""}, {"options.json": b"", "weights.hdf5": b"", "x": b""},
                  ["options.json", "weights.hdf5"]):
        assert shim.saved_files_problem(files) == "the serialized biLM does not hold options.json + weights.hdf5"


def test_the_elmo_factory_keeps_its_encoder_lr_scale(elmo_files):
    """`encoder_lr_scale` of ctxembed_elmo reaches the component (as ctxembed_bert's does)."""
    nlp = spacy.blank("en")
    component = nlp.add_pipe("ctxembed_elmo", config=ctx_config(
        options_file=str(elmo_files[0]), weight_file=str(elmo_files[1]), encoder_lr_scale=0.25))
    assert component.cfg["encoder_lr_scale"] == 0.25


def test_the_signature_tells_apart_options_over_the_same_weights(tmp_path):
    """Two biLMs of the same weights whose options differ (the LSTM's clipping)
    give other vectors: their outputs' signatures differ, so that a listener or
    `.similarity()` never takes one's vectors for the other's."""
    options = copy.deepcopy(SMALL)
    options["lstm"]["cell_clip"] = options["lstm"]["proj_clip"] = 0.05
    a = elmo_nlp(write_elmo_fixture(tmp_path / "a"))
    b = elmo_nlp(write_elmo_fixture(tmp_path / "b", options=options))
    text = "I ran to the park and then I ran home ."
    assert not numpy.allclose(a(text)._.ctx_vectors, b(text)._.ctx_vectors, atol=1e-4)  # the premise
    assert a.get_pipe("ctxembed_elmo").signature != b.get_pipe("ctxembed_elmo").signature


def test_char_ids_of_a_token_with_a_lone_surrogate_drop_it():
    """Not seen before: a str that UTF-8 cannot encode (a lone surrogate, which Python
    strings and so spaCy tokens can hold). The format encodes with errors="ignore":
    the surrogate is left out, the rest of the token kept (not replaced by "?")."""
    word = "a\ud800b" + "\udfff"
    expected = [258, ord("a"), ord("b"), 259] + [260] * 46
    assert list(char_ids(word)) == [i + 1 for i in expected]
    assert list(char_ids(word)) == reference_char_ids(word)


def test_sentences_of_a_user_hook_are_followed_and_must_hold_each_word_once(nlp_elmo, reference):
    """spaCy's own boundaries (SENT_START) cut a doc into sentences; a user hook
    (`doc.user_hooks["sents"]`) need not. Its sentences are followed where they
    hold every word once (whitespace between them may be left out); a word in
    two sentences took the context of whichever was written last, one in none
    got no vector, both silently: refused."""
    component = nlp_elmo.get_pipe("ctxembed_elmo")

    def with_sents(*bounds):
        doc = nlp_elmo.make_doc("a b c\n\nd e f")  # "\n\n" is token 3
        doc.user_hooks["sents"] = lambda d: iter([d[start:end] for start, end in bounds])
        return doc

    doc = component(with_sents((0, 3), (4, 7)))
    numpy.testing.assert_allclose(doc._.ctx_layers[:, :3], reference(["a", "b", "c"]), atol=ATOL, rtol=0)
    numpy.testing.assert_allclose(doc._.ctx_layers[:, 4:], reference(["d", "e", "f"]), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"^\[ctxembed_elmo\] doc\.user_hooks\['sents'\]: token 2 \('c'\) is in 2 "
                                         r"sentences \(1 word\(s\) in all not in exactly one\)"):
        component(with_sents((0, 4), (2, 7)))
    with pytest.raises(ValueError, match=r"token 1 \('b'\) is in no sentence \(3 word\(s\) in all"):
        component(with_sents((0, 1), (3, 4), (5, 7)))


def test_the_elmo_files_may_be_given_under_the_home_directory(elmo_files, reference, monkeypatch):
    """As BERT's `name` does, the files' paths expand "~": they were read as
    under a folder named "~" (no such file)."""
    assert elmo_files[0].parent == elmo_files[1].parent
    monkeypatch.setenv("HOME", str(elmo_files[0].parent))
    nlp = elmo_nlp([f"~/{elmo_files[0].name}", f"~/{elmo_files[1].name}"])
    numpy.testing.assert_allclose(nlp("The cat sat")._.ctx_layers, reference(["The", "cat", "sat"]), atol=ATOL, rtol=0)
