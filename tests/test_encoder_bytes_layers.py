"""An encoder's bytes record the layers it selected: a copy of the encoder inside
another component (`nlp.replace_listeners`) whose `layers` were edited in the
saved config.cfg is refused by name, not loaded under the weights trained on
top of it (the component's own check never sees that copy)."""
import shutil

import numpy
import pytest
import spacy
import srsly
from spacy.training import Example
from spacy.util import load_config

from spacy_ctxembed.errors import SettingError

from .conftest import ctx_config
from .elmo_fixture import write_elmo_fixture

WORDS = ["I", "ran", "to", "the", "park"]
TAGS = ["PRON", "VERB", "ADP", "DET", "NOUN"]
TEXT = " ".join(WORDS)
SAVED = [1, 2]  # both encoders have 3 layers: [-2, -1] is the same selection, [2, 1] another


@pytest.fixture(scope="module", params=["ctxembed_bert", "ctxembed_elmo"])
def saved(request, tiny_bert_dir, tmp_path_factory):
    """A pipeline whose tagger holds its own copy of the encoder, saved; its tok2vec output of TEXT."""
    factory = request.param
    root = tmp_path_factory.mktemp(factory)
    if factory == "ctxembed_bert":
        settings = {"name": tiny_bert_dir}
    else:
        options, weights = write_elmo_fixture(root / "elmo")
        settings = {"options_file": str(options), "weight_file": str(weights)}
    spacy.util.fix_random_seed(0)
    nlp = spacy.blank("en")
    nlp.add_pipe(factory, config=ctx_config(layers=SAVED, **settings))
    nlp.add_pipe("tagger", config={"model": {"@architectures": "spacy.Tagger.v2", "tok2vec": {
        "@architectures": "spacy-ctxembed.ContextualListener.v2", "width": 16}}})
    nlp.initialize(lambda: [Example.from_dict(nlp.make_doc(TEXT), {"words": WORDS, "tags": TAGS})])
    nlp.replace_listeners(factory, "tagger", ["model.tok2vec"])
    tok2vec = nlp.get_pipe("tagger").model.get_ref("tok2vec")
    mixes = [node for node in tok2vec.walk() if node.name == "scalar_mix"]
    assert mixes
    for mix in mixes:  # a mix as training might leave it: which layer is which matters
        mix.set_param("s", numpy.asarray([2.0, -2.0], dtype="f"))
    path = root / "pipeline"
    nlp.to_disk(path)
    return factory, path, tok2vec.predict([nlp(TEXT)])[0]


def _edited(saved_path, tmp_path, layers, architecture=None, **settings):
    """A copy of the saved pipeline, the `layers` (and `settings`) of the tagger's encoder edited in config.cfg
    (and with `architecture`, the copy's head as that release wrote it)."""
    path = tmp_path / "edited"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(saved_path, path)
    config = load_config(path / "config.cfg")
    tok2vec = config["components"]["tagger"]["model"]["tok2vec"]
    if architecture == "spacy-ctxembed.ContextualTok2Vec.v2":  # (v2 had no encoder_lr_scale)
        assert tok2vec.pop("encoder_lr_scale") == 1.0
    tok2vec["@architectures"] = architecture or tok2vec["@architectures"]
    encoder = tok2vec["embedder"]["encoder"]
    assert encoder["layers"] == SAVED
    encoder.update(layers=layers, **settings)
    config.to_disk(path / "config.cfg")
    return path


def _tok2vec_output(nlp):
    return nlp.get_pipe("tagger").model.get_ref("tok2vec").predict([nlp(TEXT)])[0]


def test_edited_layers_of_a_replaced_listeners_encoder_are_refused(saved, tmp_path):
    factory, saved_path, original = saved
    path = _edited(saved_path, tmp_path, [2, 1])
    with pytest.raises(SettingError, match=(
            r"^\[ContextualTok2Vec\] embedder.encoder.layers = \[2, 1\]: the encoder was saved for layers \[1, 2\] "
            r"\(the weights trained "
            r"on top of this encoder are for those\), but the config's layers select \[2, 1\]: put back the "
            r"layers it was saved with, or train again$")):
        spacy.load(path)
    # The same layers spelled from the top load, with the same outputs.
    path = _edited(saved_path, tmp_path, [-2, -1])
    numpy.testing.assert_array_equal(_tok2vec_output(spacy.load(path)), original)


def test_bytes_without_the_layers_still_load(saved, tmp_path):
    """Bytes written before the layers were recorded load as they did: unchecked."""
    factory, saved_path, original = saved
    path = _edited(saved_path, tmp_path, SAVED)
    model_file = path / "tagger" / "model"
    msg = srsly.msgpack_loads(model_file.read_bytes())
    recorded = []
    for node_shims in msg["shims"]:
        for i, data in enumerate(node_shims):
            shim_msg = srsly.msgpack_loads(data)
            recorded.append(shim_msg.pop("layers"))
            node_shims[i] = srsly.msgpack_dumps(shim_msg)
    assert recorded == [SAVED]
    model_file.write_bytes(srsly.msgpack_dumps(msg))
    numpy.testing.assert_array_equal(_tok2vec_output(spacy.load(path)), original)
    config = load_config(path / "config.cfg")
    config["components"]["tagger"]["model"]["tok2vec"]["embedder"]["encoder"]["layers"] = [2, 1]
    config.to_disk(path / "config.cfg")
    assert _tok2vec_output(spacy.load(path)).shape == original.shape


@pytest.mark.parametrize("saved", ["ctxembed_bert"], indirect=True)  # (ELMo has no pooling)
@pytest.mark.parametrize("architecture", ["spacy-ctxembed.ContextualTok2Vec.v3", "spacy-ctxembed.ContextualTok2Vec.v2"])
def test_edited_pooling_of_a_replaced_listeners_encoder_is_refused(saved, tmp_path, architecture):
    """The bytes record the pooling too: the tagger was trained on mean-pooled vectors.
    The copy in a head of v2 (what replace_listeners made before v3) was not taken
    for a copy, and loaded the edit unchecked."""
    factory, saved_path, original = saved
    path = _edited(saved_path, tmp_path, SAVED, architecture, pooling="last")
    with pytest.raises(SettingError, match=(
            r"^\[ContextualTok2Vec\] embedder.encoder.pooling = 'last': the encoder was saved with pooling = 'mean', "
            r"and what was trained "
            r"on those vectors \(the component that nlp.replace_listeners gave this copy of the encoder\) reads "
            r"them: put back "
            r"pooling = 'mean', or train again$")):
        spacy.load(path)
    path = _edited(saved_path, tmp_path, SAVED, architecture, pooling="mean")
    numpy.testing.assert_array_equal(_tok2vec_output(spacy.load(path)), original)
