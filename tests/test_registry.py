"""Every advertised name resolves, through the entry points as spaCy finds them."""
import configparser
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import spacy
from spacy.util import registry

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"


def _advertised():
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    groups = parser["options.entry_points"]
    return {
        group: [line.split("=")[0].strip() for line in groups[group].strip().splitlines()]
        for group in groups
    }


ADVERTISED = _advertised()

#: Every public name, listed by hand: a released name must never disappear.
NAMES = {
    "spacy_factories": ["ctxembed_bert", "ctxembed_elmo", "ctxembed_from_trf"],
    "spacy_architectures": [
        "spacy-ctxembed.Embedder.v2", "spacy-ctxembed.BertEncoder.v2", "spacy-ctxembed.ElmoEncoder.v3",
        "spacy-ctxembed.TrfEncoder.v2", "spacy-ctxembed.ContextualListener.v2", "spacy-ctxembed.ContextualTok2Vec.v3",
        # replaced by v3 (which keeps the component's encoder_lr_scale), still loading
        "spacy-ctxembed.ContextualTok2Vec.v2",
        # released in 0.2
        "spacy-ctxembed.ElmoEncoder.v2",
        # released in 0.1
        "spacy-ctxembed.BertEmbedder.v1", "spacy-ctxembed.ElmoEmbedder.v1", "spacy-ctxembed.TrfPooler.v1",
        "spacy-ctxembed.ContextualListener.v1",
    ],
    # thinc's registry of layers reads the group "thinc_layers" (spaCy's take "spacy_*")
    "thinc_layers": ["spacy-ctxembed.MeanLayers.v1", "spacy-ctxembed.ConcatLayers.v1", "spacy-ctxembed.ScalarMix.v1"],
    # docs embedded once, for `spacy train` without their upstream
    "spacy_readers": ["spacy-ctxembed.EmbeddedCorpus.v1"],
}


def test_advertised_names_are_the_listed_ones():
    assert {group: sorted(names) for group, names in ADVERTISED.items()} == {
        group: sorted(names) for group, names in NAMES.items()
    }


REGISTRIES = {"spacy_factories": "factories", "spacy_architectures": "architectures", "thinc_layers": "layers",
              "spacy_readers": "readers"}


def test_registered_names_are_the_listed_ones():
    """What the code registers is what is listed and advertised: a new
    `@registry.architectures("spacy-ctxembed...")` left out of setup.cfg would
    load only where something imported the package first."""
    import spacy_ctxembed  # noqa: F401 - registers its names

    for group in ("spacy_architectures", "thinc_layers", "spacy_readers"):
        registered = {name for name in getattr(registry, REGISTRIES[group]).get_all()
                      if name.startswith("spacy-ctxembed.")}
        assert registered == set(NAMES[group]), group
    # (The package's own: tests register components of names like "ctxembed_test_...".)
    ours = {name for name, func in registry.factories.get_all().items()
            if getattr(func, "__module__", "").split(".")[0] == "spacy_ctxembed"}
    assert {name for name in spacy.blank("en").factory_names if name in ours} == set(NAMES["spacy_factories"])
    assert ours == set(NAMES["spacy_factories"])


@pytest.mark.parametrize("group", sorted(ADVERTISED))
def test_entry_points_installed(group):
    installed = {ep.name for ep in entry_points(group=group)}
    assert set(ADVERTISED[group]) <= installed


@pytest.mark.parametrize("group, name", [(g, n) for g, names in ADVERTISED.items() for n in names])
def test_name_resolves(group, name):
    if group == "spacy_factories":
        # spaCy reads the factory entry points when a Language is created.
        assert spacy.blank("en").has_factory(name)
    assert callable(registry.get(REGISTRIES[group], name))


def test_factories_work_without_importing_the_package():
    code = (
        # The user's code never imports spacy_ctxembed; spaCy finds it by entry point.
        "import sys, spacy; assert 'spacy_ctxembed' not in sys.modules; nlp = spacy.blank('en'); "
        "[nlp.add_pipe(f) for f in ('ctxembed_bert', 'ctxembed_from_trf')]; "
        "print(nlp.pipe_names)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "ctxembed_bert" in out


def test_layers_resolve_without_importing_the_package():
    """A config that names only a combiner (`@layers`) resolves where nothing has
    imported the package: thinc finds it by entry point. (The group was
    "spacy_layers", which nothing reads: such a config failed with E893.)"""
    code = (
        "import sys; from thinc.api import Config, registry; "
        "model = registry.resolve(Config().from_str('[m]\\n@layers = \"spacy-ctxembed.ScalarMix.v1\"'))['m']; "
        "assert 'spacy_ctxembed' in sys.modules; print(model.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "scalar_mix"


def test_importing_the_package_leaves_transformers_unloaded():
    """transformers takes a while to import; it loads when a model does."""
    code = "import sys, spacy_ctxembed; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("factory", ["ctxembed_bert", "ctxembed_elmo"])
def test_encoder_defaults_are_the_factory_defaults(factory):
    """A config block that leaves a setting out gets the registered function's
    default; it must be the one the factory's DEFAULT_CONFIG documents
    (BertEncoder.v2 had max_batch_items 4096 where the docs said null: a block
    without it never sized its batches from free GPU memory)."""
    import inspect

    from spacy.util import load_config_from_str

    from spacy_ctxembed.pipeline import factories

    block = load_config_from_str(getattr(factories, f"{factory.split('_')[1].upper()}_DEFAULT_CONFIG"))
    encoder = dict(block[factory]["model"]["encoder"])
    function = registry.architectures.get(encoder.pop("@architectures"))
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
    assert set(encoder) == set(defaults)
    assert {name: list(v) if isinstance(v, tuple) else v for name, v in defaults.items()} == encoder
