"""Each bad setting fails early, with the setting and the value in the message."""
import json
import warnings

import pytest
import spacy
from spacy.util import registry

from spacy_ctxembed.errors import SettingError, first_line
from spacy_ctxembed.models.hf_loading import load_encoder

from .conftest import ctx_config, make_nlp


def _add(config, name="ctxembed_bert"):
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(**config))
    return nlp


@pytest.mark.parametrize(
    "config, pattern",
    [
        ({"pooling": "avg"}, r"^\[bert_a\] pooling = 'avg'.*'mean'"),
        ({"layers": []}, r"^\[bert_a\] layers = \[\]"),
        ({"layers": [0, "1"]}, r"^\[bert_a\] layers = \[0, '1'\]"),
        ({"precision": "fp8"}, r"^\[bert_a\] precision = 'fp8'"),
        ({"window": 0}, r"^\[bert_a\] window = 0: expected an integer number of wordpieces >= 1"),
        ({"max_batch_items": "10"}, r"^\[bert_a\] max_batch_items = '10': expected an integer >= 1 or null, got str"),
        ({"cache_mb": "10"}, r"^\[bert_a\] cache_mb = '10': expected an integer number of megabytes"),
        ({"cache_mb": -1}, r"^\[bert_a\] cache_mb = -1: expected an integer number of megabytes.* >= 0"),
    ],
)
def test_errors_at_add_pipe_name_the_component(config, pattern):
    with pytest.raises(SettingError, match=pattern):
        _add(config, name="bert_a")


@pytest.mark.parametrize(
    "config, pattern",
    [({"store_layers": "yes"}, r"store_layers.*'yes' is not"), ({"trainable": 1}, r"trainable.*1 is not")],
)
def test_wrong_types_are_caught_by_spacys_config_validation(config, pattern):
    with pytest.raises(Exception, match=pattern):
        _add(config, name="bert_a")


def test_a_models_warnings_name_the_component_instance(tiny_bert_dir):
    """A layer selected twice is found by the encoder, which knows only its
    factory's name: two components so set gave one `[ctxembed_bert]` warning
    under Python's default filter. Each names itself, as its errors do; the
    naming ends with the component's call (a third, initialized outside any,
    is the factory's)."""
    nlp = spacy.blank("en")
    for name in ("bert_a", "bert_b"):
        nlp.add_pipe("ctxembed_bert", name=name, config=ctx_config(name=str(tiny_bert_dir), layers=[1, 1]))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        nlp.initialize()
        from spacy_ctxembed.models.bert_runner import BertRunner
        from spacy_ctxembed.models.hf_loading import load_encoder

        BertRunner(load_encoder(tiny_bert_dir, component="ctxembed_bert"), {**nlp.get_pipe("bert_a").encoder.shims[
            0].settings})
    said = [str(w.message).split(":")[0] for w in record if "more than once" in str(w.message)]
    assert said == ["[bert_a] layers = [1, 1]", "[bert_b] layers = [1, 1]", "[ctxembed_bert] layers = [1, 1]"]


def test_layer_out_of_range_at_initialize(minilm_dir):
    nlp = _add({"layers": [0, 7], "name": minilm_dir})
    with pytest.raises(SettingError, match=r"layers = \[0, 7\].*index 7 is out of range.*-7 \.\. 6"):
        nlp.initialize()


def test_a_layer_selected_twice_is_warned_of_and_saved_pipelines_so_keep_loading(minilm_dir, tmp_path):
    """`[1, 1]` concatenated one layer twice, or weighted it double in the
    mean; `[-1, 6]` of MiniLM's 7 hidden states is the same layer twice. Said
    where it was silent; a warning, so that pipelines saved so still load."""
    repeated = (r", so its vector counts more than once \(concatenated again, or weighted more in a mean or a mix\); "
                "select")
    with pytest.warns(UserWarning, match=r"^\[ctxembed_bert\] layers = \[1, 1\]: 1 is given more than once" + repeated):
        nlp = make_nlp(minilm_dir, layers=[1, 1], combine="concat")
    assert nlp("a b")._.ctx_vectors.shape == (2, 2 * 384)
    nlp.to_disk(tmp_path / "saved")
    with pytest.warns(UserWarning, match=r"layers = \[1, 1\]: 1 is given more than once"):
        assert spacy.load(tmp_path / "saved")("a b")._.ctx_vectors.shape == (2, 2 * 384)
    with pytest.warns(UserWarning, match=r"^\[ctxembed_bert\] layers = \[-1, 6\]: -1 and 6 both select layer 6 "
                                         r"\(the model has 7 layers, counting its embedding \(token\) layer as 0\)"
                                         + repeated):
        make_nlp(minilm_dir, layers=[-1, 6])
    from .elmo_fixture import write_elmo_fixture

    options, weights = write_elmo_fixture(tmp_path)
    with pytest.warns(UserWarning, match=r"^\[ctxembed_elmo\] layers = \[0, -3\]: 0 and -3 both select layer 0"):
        spacy.blank("en").add_pipe("ctxembed_elmo", config=ctx_config(
            options_file=str(options), weight_file=str(weights), layers=[0, -3])).initialize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_nlp(minilm_dir, layers=[-1, 5])


def test_window_larger_than_model(minilm_dir):
    nlp = _add({"name": minilm_dir, "window": 600}, name="bert_a")
    with pytest.raises(SettingError, match=r"^\[bert_a\] window = 600.*at most 510"):
        nlp.initialize()


def test_missing_model_directory(tmp_path):
    missing = str(tmp_path / "no-such-model")
    nlp = _add({"name": missing})
    with pytest.raises(SettingError, match=r"name = '.*no-such-model': no such model directory"):
        nlp.initialize()


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_name_is_refused_not_read_as_the_default(name):
    """`--paths.bert_model ""` loaded the embedded MiniLM, silently, while the config named no model."""
    nlp = _add({"name": name}, name="bert_a")
    with pytest.raises(SettingError, match=rf"^\[bert_a\] name = '{name}': empty: give a model directory or hub "
                                           "name, or null for the embedded all-MiniLM-L6-v2"):
        nlp.initialize()


def test_a_name_that_is_a_file_is_named_as_such(tiny_bert_dir, tmp_path, monkeypatch):
    """A model's config.json given as `name` was said to be "no such model directory"
    (or, relative, "not in the local Hugging Face cache"). A bare name is a hub name,
    even where a file in the working directory has it."""
    monkeypatch.chdir(tiny_bert_dir.parent)
    for name in (str(tiny_bert_dir / "config.json"), f"{tiny_bert_dir.name}/config.json"):
        nlp = _add({"name": name}, name="bert_a")
        with pytest.raises(SettingError, match=r"^\[bert_a\] name = '.*config.json': a file, not a model directory"):
            nlp.initialize()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "some-hub-model").write_text("not a model")
    with pytest.raises(SettingError, match=r"^\[bert_a\] name = 'some-hub-model': not a local directory and not "
                                           "in the local Hugging Face cache"):
        _add({"name": "some-hub-model"}, name="bert_a").initialize()


def test_hub_name_not_in_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    nlp = _add({"name": "some-org/never-downloaded"})
    with pytest.raises(SettingError, match=r"name = 'some-org/never-downloaded'.*never downloaded at run time"):
        nlp.initialize()


def test_model_that_is_not_an_encoder(tmp_path, minilm_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=30522)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    nlp = _add({"name": tmp_path})
    with pytest.raises(SettingError, match=r"name = .*model_type 'gpt2' is not an encoder"):
        nlp.initialize()


def test_tokenizer_that_is_not_fast(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=8)).save_pretrained(tmp_path)
    # CTRL's tokenizer exists only as a slow (Python) tokenizer.
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2, "UNK": 3}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CTRLTokenizer"}))
    nlp = _add({"name": tmp_path})
    with pytest.raises(SettingError, match=r"name = .*CTRLTokenizer\) is not a fast tokenizer"):
        nlp.initialize()


def test_tokenizer_with_more_pieces_than_the_embeddings(tmp_path, minilm_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=1000)).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    nlp = _add({"name": tmp_path})
    with pytest.raises(SettingError, match=r"name = .*the tokenizer gives ids up to 30521 but the model's input "
                                           r"embeddings have 1000 rows \(29522 pieces beyond them"):
        nlp.initialize()


def test_tokenizer_check_skips_a_model_without_input_embeddings(minilm_dir, tmp_path):
    from transformers import AutoTokenizer

    from spacy_ctxembed.models.hf_loading import _check_tokenizer_fits, _Where

    class Unsaid:
        def get_input_embeddings(self):
            raise NotImplementedError

    _check_tokenizer_fits(AutoTokenizer.from_pretrained(minilm_dir), Unsaid(), _Where("c", "name", tmp_path))


@pytest.mark.parametrize("family,pattern", [
    # Funnel Transformer pools its sequence between blocks: some states are shorter than the input.
    ("funnel", r"model_type 'funnel' does not give one hidden state per layer for every input piece: for 9 "
               r"pieces it gives 5 states of lengths \[9, 9, 5, 9, 9\], where 3 \(num_hidden_layers \+ 1\)"),
    # FNet mixes tokens by Fourier transforms and takes no mask.
    ("fnet", r"model_type 'fnet' takes no attention_mask, so the padding of batched windows cannot be masked"),
    # BROS needs each piece's box: its forward pass raised transformers' own error, naming no component.
    ("bros", r"model_type 'bros' failed on a short probe text \(\d+ pieces\), given as input_ids and "
             r"attention_mask, the only inputs its windows get \(ValueError: "),
])
def test_models_without_one_state_per_piece_are_refused(tmp_path, minilm_dir, family, pattern):
    from transformers import AutoTokenizer, BrosConfig, BrosModel, FNetConfig, FNetModel, FunnelConfig, FunnelModel

    model = {
        "bros": lambda: BrosModel(BrosConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64)),
        "funnel": lambda: FunnelModel(FunnelConfig(vocab_size=30522, block_sizes=[1, 1], num_decoder_layers=1,
                                                   d_model=32, n_head=2, d_head=16, d_inner=64)),
        "fnet": lambda: FNetModel(FNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                             intermediate_size=64)),
    }[family]()
    model.save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    nlp = _add({"name": tmp_path})
    with pytest.raises(SettingError, match="name = .*" + pattern):
        nlp.initialize()


def test_stride_larger_than_window(tiny_bert_dir):
    with pytest.raises(SettingError, match=r"stride = 40: must not exceed window \(30\)"):
        make_nlp(tiny_bert_dir, window=30, stride=40)
    # Both given: known at add_pipe (it was said only at initialize).
    with pytest.raises(SettingError, match=r"^\[bert_a\] stride = 40: must not exceed window \(30\)"):
        _add({"name": tiny_bert_dir, "window": 30, "stride": 40}, name="bert_a")


def test_a_scalar_mix_n_layers_that_contradicts_the_layers_is_refused():
    # It was accepted and then sized by the layers, and the saved pipeline
    # failed to load with a message about the layers.
    # The error names the component (it named the architecture, Embedder.v2: with two
    # embedders in a pipeline, which one was not said).
    config = ctx_config(layers=[-1, -2, -3])
    config["model"]["combiner"] = {"@layers": "spacy-ctxembed.ScalarMix.v1", "n_layers": 5}
    with pytest.raises(SettingError, match=r"^\[bert_a\] combiner.n_layers = 5: the encoder's layers select 3"):
        spacy.blank("en").add_pipe("ctxembed_bert", name="bert_a", config=config)
    with pytest.raises(SettingError, match=r"^\[ctxembed_bert\] combiner.n_layers = 5: the encoder's layers select 3"):
        spacy.blank("en").add_pipe("ctxembed_bert", config=config)
    config["model"]["combiner"]["n_layers"] = 3
    spacy.blank("en").add_pipe("ctxembed_bert", config=config)


@pytest.mark.parametrize("value, pattern", [
    ("3", r"'3': expected an integer number of layers >= 1, got str"),
    (0, r"0: expected an integer number of layers >= 1$"),
])
def test_a_scalar_mix_n_layers_that_is_not_a_count_is_refused_as_such(value, pattern):
    """`n_layers = "3"` (config text) was refused as a count that differs from the layers' 3."""
    config = ctx_config(layers=[-1, -2, -3])
    config["model"]["combiner"] = {"@layers": "spacy-ctxembed.ScalarMix.v1", "n_layers": value}
    with pytest.raises(SettingError, match=rf"^\[bert_a\] combiner\.n_layers = {pattern}"):
        spacy.blank("en").add_pipe("ctxembed_bert", name="bert_a", config=config)


@pytest.mark.parametrize("architecture", ["ContextualListener.v2", "ContextualTok2Vec.v3", "ContextualTok2Vec.v2"])
@pytest.mark.parametrize("settings, pattern", [
    ({"width": 0}, r"width = 0: expected an integer width >= 1"),
    ({"width": "16"}, r"width = '16': expected an integer width >= 1, got str"),
    # A string from a config file: "0" counted as non-zero and failed at the first update.
    ({"grad_factor": "0"}, r"grad_factor = '0': expected a number"),
    ({"grad_factor": float("nan")}, r"grad_factor = nan: expected a number"),
    ({"mix_layers": "false"}, r"mix_layers = 'false': expected true or false"),
])
def test_listener_settings_are_checked_by_name(architecture, settings, pattern):
    from spacy.util import registry

    build = registry.architectures.get(f"spacy-ctxembed.{architecture}")
    arguments = {"width": 8, **settings}
    if "Tok2Vec" in architecture:
        arguments["embedder"] = None  # (checked before it is used)
    with pytest.raises(SettingError, match=rf"^\[{architecture}\] {pattern}"):
        build(**arguments)


def test_layers_of_any_sequence_are_taken_in_python(tiny_bert_dir):
    """In Python, `layers` may be any sequence of integers (a range): only a string or
    another single value is kept as given, for the error to name."""
    from spacy.util import registry

    from spacy_ctxembed.pipeline.component import ContextualEmbedder

    build = registry.architectures.get("spacy-ctxembed.BertEncoder.v2")
    settings = dict(name=str(tiny_bert_dir), pooling="mean", window=None, stride=None, max_batch_items=None,
                    precision="fp32", trainable=True)
    encoder = build(layers=range(-2, 0), **settings)
    assert encoder.shims[0].settings["layers"] == [-2, -1]
    embedder = registry.architectures.get("spacy-ctxembed.Embedder.v2")(
        encoder=encoder, combiner=registry.layers.get("spacy-ctxembed.MeanLayers.v1")())
    ContextualEmbedder(spacy.blank("en").vocab, embedder, "x")
    mix = registry.architectures.get("spacy-ctxembed.Embedder.v2")(
        encoder=build(layers=range(-2, 0), **settings), combiner=registry.layers.get("spacy-ctxembed.ScalarMix.v1")(
            n_layers=3))
    with pytest.raises(SettingError, match=r"^\[x\] combiner.n_layers = 3: the encoder's layers select 2"):
        ContextualEmbedder(spacy.blank("en").vocab, mix, "x")  # (the count is known from a range too)
    with pytest.raises(SettingError, match=r"^\[x\] layers = '-1': expected a non-empty list of integers"):
        embedder = registry.architectures.get("spacy-ctxembed.Embedder.v2")(
            encoder=build(layers="-1", **settings), combiner=registry.layers.get("spacy-ctxembed.MeanLayers.v1")())
        ContextualEmbedder(spacy.blank("en").vocab, embedder, "x")


@pytest.mark.parametrize("architecture", ["ContextualTok2Vec.v3", "ContextualTok2Vec.v2"])
def test_a_copied_embedders_scalar_mix_n_layers_is_checked_by_the_architecture_that_holds_it(architecture):
    from spacy.util import registry

    encoder = registry.architectures.get("spacy-ctxembed.BertEncoder.v2")(
        name=None, layers=[-1, -2], pooling="mean", window=None, stride=None, max_batch_items=None,
        precision="fp32", trainable=True)
    combiner = registry.layers.get("spacy-ctxembed.ScalarMix.v1")(n_layers=3)
    embedder = registry.architectures.get("spacy-ctxembed.Embedder.v2")(encoder=encoder, combiner=combiner)
    build = registry.architectures.get(f"spacy-ctxembed.{architecture}")
    with pytest.raises(SettingError, match=rf"^\[{architecture}\] embedder\.combiner\.n_layers = 3: the encoder's "
                                           "layers select 2"):
        build(embedder=embedder, width=8)


@pytest.mark.parametrize("architecture", ["ContextualTok2Vec.v3", "ContextualTok2Vec.v2"])
@pytest.mark.parametrize("encoder, setting, value, pattern", [
    ("BertEncoder.v2", "precision", "bogus", r"expected one of 'fp32'"),
    ("BertEncoder.v2", "window", 0, r"expected an integer number of wordpieces >= 1"),
    ("ElmoEncoder.v3", "max_batch_items", 0, r"expected an integer >= 1"),
])
def test_a_copied_embedders_encoder_settings_are_checked_by_the_architecture_that_holds_it(
        architecture, encoder, setting, value, pattern):
    """A saved pipeline's config.cfg edited in a replace_listeners copy's
    embedder: `precision = "bogus"` ran in fp32, `window = 0` as no window and
    ELMo's `max_batch_items = 0` as none, where the component refuses them."""
    from spacy.util import registry

    settings = {"layers": [-1], "max_batch_items": None, "trainable": True}
    if encoder == "BertEncoder.v2":
        settings.update(name=None, pooling="mean", window=None, stride=None, precision="fp32")
    else:
        settings.update(options_file=None, weight_file=None)
    settings[setting] = value
    embedder = registry.architectures.get("spacy-ctxembed.Embedder.v2")(
        encoder=registry.architectures.get(f"spacy-ctxembed.{encoder}")(**settings),
        combiner=registry.layers.get("spacy-ctxembed.MeanLayers.v1")())
    with pytest.raises(SettingError, match=rf"^\[ContextualTok2Vec\] embedder\.encoder\.{setting} = {value!r}: "
                                           rf"{pattern}"):
        registry.architectures.get(f"spacy-ctxembed.{architecture}")(embedder=embedder, width=8)


_BERT_ENCODER = {"@architectures": "spacy-ctxembed.BertEncoder.v2", "name": None}
_HASH_CNN = {"@architectures": "spacy.HashEmbedCNN.v2", "width": 16, "depth": 1, "embed_size": 100, "window_size": 1,
             "maxout_pieces": 2, "subword_features": True, "pretrained_vectors": None}


@pytest.mark.parametrize("model, setting, shown", [
    (_BERT_ENCODER, "model", "'ctxembed-bert-encoder'"),
    ({"@layers": "spacy-ctxembed.MeanLayers.v1"}, "model", "'mean_layers'"),
    ({"@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}, "model", "'contextual_listener_v2'"),
    (_HASH_CNN, "model", r"'extract_features>>.*\.\.\.'"),
    ({"@architectures": "spacy-ctxembed.Embedder.v2", "encoder": _HASH_CNN,
      "combiner": {"@layers": "spacy-ctxembed.MeanLayers.v1"}}, r"model\.encoder", r"'extract_features>>.*\.\.\.'"),
])
def test_a_model_that_is_not_an_embedder_is_refused_at_add_pipe(model, setting, shown):
    """An encoder or a combiner alone, a listener or a spaCy tok2vec as the
    component's model failed as thinc's "not enough values to unpack" at
    add_pipe, or as a missing reference at initialize."""
    nlp = spacy.blank("en")
    with pytest.raises(SettingError, match=rf"^\[emb\] {setting} = {shown}: expected a"):
        nlp.add_pipe("ctxembed_bert", name="emb", config={"model": model})


@pytest.mark.parametrize("architecture", ["ContextualTok2Vec.v3", "ContextualTok2Vec.v2"])
def test_a_copy_whose_embedder_is_not_an_embedder_is_refused(architecture):
    from spacy.util import registry

    encoder = registry.resolve({"x": _BERT_ENCODER})["x"]
    with pytest.raises(SettingError, match=rf"^\[{architecture}\] embedder = 'ctxembed-bert-encoder': expected a "
                                           r"spacy-ctxembed\.Embedder\.v2 block"):
        registry.architectures.get(f"spacy-ctxembed.{architecture}")(embedder=encoder, width=8)


def _tagger_over_a_copy(tiny_bert_dir, *, elmo_dir=None, **encoder):
    """A tagger (named pos) over a ContextualTok2Vec.v3 copy of an embedder, initialized:
    of BERT, or with `elmo_dir` of the ELMo fixture written there."""
    from spacy.training import Example

    if elmo_dir is None:
        block = {"@architectures": "spacy-ctxembed.BertEncoder.v2", "name": str(tiny_bert_dir)}
    else:
        from .elmo_fixture import write_elmo_fixture

        options, weights = write_elmo_fixture(elmo_dir)
        block = {"@architectures": "spacy-ctxembed.ElmoEncoder.v3", "options_file": str(options),
                 "weight_file": str(weights)}
    embedder = {"@architectures": "spacy-ctxembed.Embedder.v2", "combiner": {"@layers": "spacy-ctxembed.MeanLayers.v1"},
                "encoder": {**block, "layers": [1, 2], **encoder}}
    nlp = spacy.blank("en")
    nlp.add_pipe("tagger", name="pos", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualTok2Vec.v3", "width": 16, "embedder": embedder}}})
    words, tags = ["I", "ran", "to", "the", "park"], ["PRON", "VERB", "ADP", "DET", "NOUN"]
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(" ".join(words)), {"words": words, "tags": tags})])
    return nlp


@pytest.mark.parametrize("encoder, pattern", [
    ({"layers": [9]}, r"layers = \[9\]: index 9 is out of range"),
    ({"window": 1000}, r"window = 1000: the model takes at most 62 wordpieces"),
    ({"window": 8, "stride": 100}, r"stride = 100: must not exceed window \(8\)"),
    ({"name": "/no/such/model"}, r"name = '/no/such/model': no such model directory"),
])
def test_a_copys_checks_against_its_model_name_the_copy_not_a_component_that_is_not_there(
        tiny_bert_dir, encoder, pattern):
    """The checks that need the loaded model said `[ctxembed_bert] layers = [9]`
    of a copy in a tagger: the listening component does not rename them, and
    no such component is in the pipeline."""
    with pytest.raises(SettingError, match=rf"^\[ContextualTok2Vec\] embedder\.encoder\.{pattern}"):
        _tagger_over_a_copy(tiny_bert_dir, **encoder)


def test_a_saved_copy_edited_to_a_window_its_model_cannot_take_names_the_copy(tiny_bert_dir, tmp_path):
    from thinc.api import Config

    _tagger_over_a_copy(tiny_bert_dir).to_disk(tmp_path / "saved")
    config = Config().from_disk(tmp_path / "saved" / "config.cfg", interpolate=False)
    config["components"]["pos"]["model"]["tok2vec"]["embedder"]["encoder"]["window"] = 1000
    config.to_disk(tmp_path / "saved" / "config.cfg")
    with pytest.raises(SettingError, match=(
            r"^\[ContextualTok2Vec\] embedder\.encoder\.window = 1000: the model takes at most 62 wordpieces .*"
            r"\(the encoder saved in the model of a component whose listener replace_listeners replaced with its "
            r"own copy\)$")):
        spacy.load(tmp_path / "saved")


@pytest.mark.parametrize("elmo, damage, pattern", [
    (False, "empty", r": the serialized encoder holds no model files$"),
    (True, "empty", r": the serialized biLM does not hold options\.json \+ weights\.hdf5$"),
    (False, "escaping", r": refusing to unpack '\.\./x'$"),
    (True, "options", r" = '<serialized encoder>/options\.json': "),
], ids=["bert-empty", "elmo-empty", "bert-escaping", "elmo-options"])
def test_a_saved_copys_damaged_bytes_name_the_copy(tiny_bert_dir, tmp_path, elmo, damage, pattern):
    """Errors in a copy's saved bytes name the copy's block (what the tagger
    saved), not `[ctxembed_bert] model` of a component that is not there, nor
    a `model` setting of the block, which has none."""
    import srsly

    _tagger_over_a_copy(tiny_bert_dir, elmo_dir=tmp_path / "elmo" if elmo else None).to_disk(tmp_path / "saved")
    model_file = tmp_path / "saved" / "pos" / "model"
    msg = srsly.msgpack_loads(model_file.read_bytes())
    (index,) = [i for i, shims in enumerate(msg["shims"]) if shims]
    saved = srsly.msgpack_loads(msg["shims"][index][0])
    files = saved["elmo_files" if elmo else "hf_files"]
    if damage == "empty":
        files.clear()
    elif damage == "escaping":
        files["../x"] = b""
    else:
        files["options.json"] = b"{not json"
    msg["shims"][index][0] = srsly.msgpack_dumps(saved)
    model_file.write_bytes(srsly.msgpack_dumps(msg))
    with pytest.raises(ValueError, match=r"^\[ContextualTok2Vec\] embedder\.encoder" + pattern):
        spacy.load(tmp_path / "saved")


@pytest.mark.parametrize("elmo", [False, True], ids=["bert", "elmo"])
def test_a_components_damaged_bytes_name_its_model(tiny_bert_dir, tmp_path, elmo):
    """The same errors of a component's own bytes name the instance's `model`."""
    import srsly

    if elmo:
        from .elmo_fixture import write_elmo_fixture

        options, weights = write_elmo_fixture(tmp_path)
        factory, config = "ctxembed_elmo", ctx_config(options_file=str(options), weight_file=str(weights))
    else:
        factory, config = "ctxembed_bert", ctx_config(name=str(tiny_bert_dir))
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, name="emb_a", config=config)
    nlp.initialize()
    msg = srsly.msgpack_loads(nlp.get_pipe("emb_a").to_bytes())
    model = srsly.msgpack_loads(msg["model"])
    (index,) = [i for i, shims in enumerate(model["shims"]) if shims]
    model["shims"][index][0] = srsly.msgpack_dumps({"elmo_files" if elmo else "hf_files": {}})
    msg["model"] = srsly.msgpack_dumps(model)
    with pytest.raises(ValueError, match=r"^\[emb_a\] model: the serialized (encoder|biLM) "):
        nlp.get_pipe("emb_a").from_bytes(srsly.msgpack_dumps(msg))


def test_v1_listener_sizes_are_checked_by_name():
    from spacy.util import registry

    build = registry.architectures.get("spacy-ctxembed.ContextualListener.v1")
    with pytest.raises(SettingError, match=r"^\[ContextualListener.v1\] upstream_width = 0: expected an integer"):
        build(width=8, n_layers=2, upstream_width=0)


def test_weights_of_another_width_are_named_as_such(tiny_bert_dir, tmp_path, minilm_dir):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(tmp_path, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path)
    narrow = make_nlp(tmp_path).get_pipe("ctxembed_bert").to_bytes()
    nlp = make_nlp(tiny_bert_dir)
    with pytest.raises(SettingError, match=r"^\[ctxembed_bert\] bytes = '\d+ bytes': saved for a model of other "
                                           r"dimensions than this component's config builds \(.*from 32 to 16"):
        nlp.get_pipe("ctxembed_bert").from_bytes(narrow)


def test_tokenizer_one_piece_beyond_the_embeddings_is_refused(tmp_path, minilm_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    highest = max(tokenizer.get_vocab().values())
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=highest)).save_pretrained(tmp_path)  # one row short: ids 0..highest-1
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(SettingError, match=rf"the tokenizer gives ids up to {highest} but the model's input "
                                           rf"embeddings have {highest} rows \(1 pieces beyond them"):
        load_encoder(tmp_path, component="bert_a")


def test_a_model_that_gives_fewer_hidden_states_than_its_layers_is_refused(tiny_bert_dir, monkeypatch):
    from transformers import BertModel

    forward = BertModel.forward

    def one_state_short(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        if output.hidden_states is not None:
            output.hidden_states = output.hidden_states[:-1]
        return output

    monkeypatch.setattr(BertModel, "forward", one_state_short)
    with pytest.raises(SettingError, match=r"model_type 'bert' does not give one hidden state per layer for every "
                                           r"input piece: for (\d+) pieces it gives 2 states of lengths "
                                           r"\[\1, \1\], where 3 \(num_hidden_layers \+ 1\)"):
        load_encoder(tiny_bert_dir, component="bert_a")


def test_a_bert_configured_as_a_causal_decoder_is_refused(tiny_bert_dir, tmp_path):
    import json
    import shutil

    d = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, d)
    config = json.loads((d / "config.json").read_text())
    config["is_decoder"] = True  # BertModel then masks attention causally: not an encoder's states
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(SettingError, match=r"^\[bert_a\] name = .*model_type 'bert' is not an encoder"):
        load_encoder(d, component="bert_a")


@pytest.mark.parametrize("layers", [[True], [0, False], (1, True)])
def test_booleans_are_not_layer_indices(layers):
    """Python's bool is an int: `layers = [true]` reaching the check outside spaCy's
    config validation (an encoder built in Python) must not be read as layer 1."""
    from spacy_ctxembed.settings import check_layers

    with pytest.raises(SettingError, match=r"^\[c\] layers = .*: expected a non-empty list of integers$"):
        check_layers("c", layers)
    check_layers("c", [0, -1])  # (integers pass)


@pytest.mark.parametrize("setting", ["store_layers", "set_doc_tensor", "primary"])
def test_the_component_built_in_python_checks_its_flags(tiny_bert_dir, setting):
    """spaCy's config validation refuses `store_layers = "yes"`; the component
    built directly (a subclass, a custom factory) checks it too, by name."""
    from spacy_ctxembed.pipeline.component import ContextualEmbedder

    nlp = spacy.blank("en")
    model = nlp.add_pipe("ctxembed_bert", config=ctx_config(name=tiny_bert_dir)).model
    with pytest.raises(SettingError, match=rf"^\[emb\] {setting} = 'yes'"):
        ContextualEmbedder(nlp.vocab, model, "emb", **{setting: "yes"})


def test_first_line_cuts_only_a_line_longer_than_its_limit():
    """A line of exactly `limit` characters is kept whole; one character more is cut to
    `limit`, the ellipsis included."""
    assert first_line(ValueError("a" * 200 + "\nmore"), limit=200) == "ValueError: " + "a" * 200
    assert first_line(ValueError("a" * 201), limit=200) == "ValueError: " + "a" * 197 + "..."
    assert first_line(ValueError("  \n"), limit=200) == "ValueError"
    assert first_line(KeyError("x"), typed=False) == "'x'"


@pytest.mark.parametrize("architecture", ["ContextualListener.v2", "ContextualTok2Vec.v3"])
def test_a_boolean_is_not_an_integer_setting(architecture):
    """Python's True is the int 1: `width = true` in a config is refused by name, not built 1 wide."""
    build = registry.architectures.get(f"spacy-ctxembed.{architecture}")
    arguments = {"width": True}
    if "Tok2Vec" in architecture:
        arguments["embedder"] = None  # (checked before it is used)
    with pytest.raises(SettingError, match=rf"^\[{architecture}\] width = True: expected an integer width >= 1, "
                                           "got bool"):
        build(**arguments)


@pytest.mark.parametrize("setting, value, pattern", [
    ("pooling", "avg", r"pooling = 'avg': expected one of"),
    ("precision", "bogus", r"precision = 'bogus': expected one of 'fp32'"),
])
def test_an_encoder_used_on_its_own_checks_its_settings_when_initialized(tiny_bert_dir, setting, value, pattern):
    """BertEncoder.v2 built and initialized outside a ctxembed component (as a
    Thinc layer in user code): no component or architecture checked its
    settings, so initializing it must, rather than load the weights and run
    with a pooling or precision that does not exist."""
    from spacy.util import registry

    encoder = registry.architectures.get("spacy-ctxembed.BertEncoder.v2")(name=str(tiny_bert_dir), **{setting: value})
    with pytest.raises(SettingError, match=pattern):
        encoder.initialize()


@registry.layers("test_errors.first_layer.v1")
def _first_layer():
    """A combiner of a user's own, of the right signature: each doc's first layer."""
    from thinc.api import Model

    return Model("first_layer", lambda model, X, is_train: ([x[0] for x in X], lambda dY: dY))


@pytest.mark.parametrize("combiner, refused", [
    ({"@layers": "reduce_mean.v1"}, r"\(AttributeError: 'list' object has no attribute 'data'\)"),
    ({"@layers": "Linear.v1", "nO": 4}, r"\(TypeError: .*expected numpy.ndarray, got list"),
    ({"@layers": "test_errors.first_layer.v1"}, None),
])
def test_a_combiner_of_another_signature_is_named_at_initialize(tiny_bert_dir, combiner, refused):
    """A thinc layer that does not map layer stacks to vectors, set as the
    combiner, failed at the first doc, deep in thinc, naming neither the
    component nor the setting; a user's combiner that does is run."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="bert_a",
                 config={"model": {"encoder": {"name": str(tiny_bert_dir)}, "combiner": combiner}})
    if refused is None:
        nlp.initialize()
        assert nlp("two words")._.ctx_vectors.shape == (2, 32)
        return
    with pytest.raises(SettingError, match=r"^\[bert_a\] model\.combiner = '[a-z_]+': expected a combiner that maps "
                                           r"each doc's layers .*" + refused):
        nlp.initialize()


@registry.layers("test_errors.layer_stack.v1")
def _layer_stack():
    """A user's combiner that runs, but returns each doc's stack of layers as it is (3 dimensions)."""
    from thinc.api import Model

    return Model("layer_stack", lambda model, X, is_train: (list(X), lambda dY: dY))


@registry.layers("test_errors.one_row.v1")
def _one_row():
    """A user's combiner that runs, but returns one row per doc (its first token's first layer)."""
    from thinc.api import Model

    return Model("one_row", lambda model, X, is_train: ([x[0, :1] for x in X], lambda dY: dY))


@pytest.mark.parametrize("combiner, got", [
    ("test_errors.layer_stack.v1", r"\[\(3, 2, 32\)\]"),
    ("test_errors.one_row.v1", r"\[\(1, 32\)\]"),
])
def test_a_combiner_that_runs_but_gives_no_row_per_token_is_named_at_initialize(tiny_bert_dir, combiner, got):
    """A user's combiner that runs without an error, but returns other than one
    vector per token (the layer stack itself, one row per doc), is refused at
    initialize, with the shapes it gave, before a doc gets such vectors."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="bert_a", config={"model": {
        "encoder": {"name": str(tiny_bert_dir), "layers": [0, 1, 2]}, "combiner": {"@layers": combiner}}})
    with pytest.raises(SettingError, match=r"^\[bert_a\] model\.combiner = '[a-z_]+': expected a combiner that maps "
                                           r"each doc's layers .*; given the layers of one doc of 2 tokens it "
                                           r"returned " + got + "$"):
        nlp.initialize()


@pytest.mark.parametrize("combiner, refused", [
    ({"@layers": "reduce_mean.v1"}, r"\(AttributeError: 'list' object has no attribute 'data'\)"),
    # (Linear needs the width to initialize: refused when the component is, at the first doc.)
    ({"@layers": "Linear.v1", "nO": 4}, r"and that initializes before the upstream transformer's width is known .*"
                                        r"\(ValueError: Cannot get dimension 'nI' for model 'linear'"),
    ({"@layers": "test_errors.first_layer.v1"}, None),
])
def test_a_combiner_of_another_signature_is_named_at_the_first_doc_of_from_trf(tiny_bert_dir, combiner, refused):
    """ctxembed_from_trf added to a pipeline initialized without it learns its
    width at its first doc, after `initialize` checked what it could: a combiner
    of another signature then failed there, deep in thinc, naming neither the
    component nor the setting. It is tried once the width is known, once."""
    from unittest import mock

    from spacy_ctxembed.pipeline import component

    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}}})
    nlp.initialize()
    nlp.add_pipe("ctxembed_from_trf", name="pooled", config={"model": {"combiner": combiner}})
    if refused is None:
        with mock.patch.object(component, "check_combiner_output", wraps=component.check_combiner_output) as checked:
            assert nlp("two words")._.ctx_vectors.shape == (2, 32)
            assert [d._.ctx_vectors.shape for d in nlp.pipe(["one", "and three more"])] == [(1, 32), (3, 32)]
        assert checked.call_count == 1  # (once for the width, not at each batch)
        return
    with pytest.raises(SettingError, match=r"^\[pooled\] model\.combiner = '[a-z_]+': expected a combiner that maps "
                                           r"each doc's layers .*" + refused):
        nlp("two words")


def test_the_package_combiners_are_not_tried_at_the_first_doc_of_from_trf(tiny_bert_dir):
    """The check at the first doc costs nothing for this package's combiners: never run."""
    from unittest import mock

    from thinc.api import Model

    nlp = spacy.blank("en")
    nlp.add_pipe("transformer", config={"model": {
        "@architectures": "spacy-transformers.TransformerModel.v3", "name": str(tiny_bert_dir),
        "tokenizer_config": {"use_fast": True}}})
    nlp.initialize()
    nlp.add_pipe("ctxembed_from_trf", name="pooled", config=ctx_config("scalar_mix", layers=[-1]))
    combiner = nlp.get_pipe("pooled").combiner
    with mock.patch.object(Model, "predict", autospec=True, side_effect=Model.predict) as ran:
        assert nlp("two words")._.ctx_vectors.shape == (2, 32)
    assert [call.args[0] for call in ran.call_args_list].count(combiner) == 1  # (the doc's own batch only)


def test_fp16_on_cpu_is_warned_of_once_bf16_and_fp32_are_not(tiny_bert_dir):
    """fp16 autocast on CPU runs MiniLM several times slower than fp32 (and not
    exactly), silently; bf16 there runs at fp32's speed and is not warned of."""
    nlp = spacy.blank("en")
    nlp.add_pipe("ctxembed_bert", name="bert_a", config=ctx_config(name=tiny_bert_dir, precision="fp16"))
    with pytest.warns(UserWarning, match=r"^\[bert_a\] precision = 'fp16': the encoder is on the CPU, where float16 "
                                         r"autocast runs several times slower than 'fp32'.* Use 'fp32' on CPU") as seen:
        nlp.initialize()
        nlp("two words")
    assert sum("precision = 'fp16'" in str(w.message) for w in seen) == 1
    for precision in ("fp32", "bf16"):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            make_nlp(tiny_bert_dir, precision=precision)("two words")
        assert not [w for w in seen if "precision" in str(w.message)]


@pytest.mark.parametrize("value, shown", [(float("inf"), "inf"), (float("nan"), "nan"), (float("-inf"), "-inf")])
def test_a_number_that_is_not_finite_is_named_as_such(value, shown):
    """A float setting that is inf or nan (`grad_factor = NaN` in a config file) is
    refused as not finite: the message said "got float" of a float, as if its
    type were the problem."""
    build = registry.architectures.get("spacy-ctxembed.ContextualListener.v2")
    with pytest.raises(SettingError) as refused:
        build(width=8, grad_factor=value)
    message = str(refused.value)
    assert message.startswith(f"[ContextualListener.v2] grad_factor = {shown}: expected a number")
    assert message.endswith("got a float that is not finite")


def test_a_bert_encoder_run_before_it_is_initialized_says_so():
    """The encoder used outside a component (in a model of one's own) and run before
    `initialize`: it holds no weights, and says so, naming the component kind and the
    call, rather than failing on a missing runner."""
    from spacy.util import registry

    encoder = registry.architectures.get("spacy-ctxembed.BertEncoder.v2")(
        name=None, layers=[-1], pooling="mean", window=None, stride=None, max_batch_items=None,
        precision="fp32", trainable=True)
    with pytest.raises(ValueError, match=r"^\[ctxembed_bert\] the encoder has no weights yet: call "
                                         r"nlp\.initialize\(\) first$"):
        encoder.predict([spacy.blank("en")("one two")])
