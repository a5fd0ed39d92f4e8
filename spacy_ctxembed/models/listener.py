"""`spacy-ctxembed.ContextualListener.v1`: contextual features for any spaCy component.

A tok2vec-compatible architecture (docs in, one vector per token out) for
`tagger`, `parser`, `ner`, `morphologizer`, `textcat`, ... It reads the layers
that an upstream `ctxembed_bert` / `ctxembed_elmo` / `ctxembed_from_trf`
component stored on the docs (`store_layers = true`), learns its own scalar mix
of them (ELMo eq. 1: each task gets its own weights and gamma), optionally
concatenates spaCy's `MultiHashEmbed` features, and projects to `width`.

The upstream embedder is frozen: in training it is listed in both
`frozen_components` and `annotating_components`, so it annotates the docs and is
never updated.
"""
from typing import List, Optional

from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Linear, Model, chain, concatenate, with_array
from thinc.types import Floats2d

from ..layers.read_ctx_layers import read_ctx_layers
from ..layers.scalar_mix import ScalarMix


@registry.architectures("spacy-ctxembed.ContextualListener.v1")
def ContextualListener(
    *,
    width: int,
    n_layers: int,
    upstream_width: int,
    embed: Optional[Model[List[Doc], List[Floats2d]]] = None,
) -> Model[List[Doc], List[Floats2d]]:
    """Learned layer mix (+ optional static features) -> projection to `width`.

    n_layers: how many layers the upstream stores (len of its `layers` setting).
    upstream_width: the width of each upstream layer (384 for all-MiniLM-L6-v2,
        1024 for the full-size ELMo).
    embed: e.g. `spacy.MultiHashEmbed.v2`, concatenated to the mix.
    """
    mix: Model[List[Doc], List[Floats2d]] = chain(
        read_ctx_layers(n_layers, upstream_width), ScalarMix(n_layers=n_layers)
    )
    features = mix if embed is None else concatenate(mix, embed)
    n_in = upstream_width + (_output_width(embed) if embed is not None else 0)
    inner: Model[List[Doc], List[Floats2d]] = chain(features, with_array(Linear(nO=width, nI=n_in)))
    return Model("contextual_listener", forward, init=init, layers=[inner], dims={"nO": width})


def forward(model: Model, docs: List[Doc], is_train: bool):
    return model.layers[0](docs, is_train)


def _output_width(model: Model) -> int:
    """The output width of `model`, from the last layer that already knows it
    (a chain such as MultiHashEmbed only sets its own `nO` in `init`)."""
    if model.has_dim("nO") is True:
        return model.get_dim("nO")
    for layer in reversed(model.layers):
        try:
            return _output_width(layer)
        except ValueError:
            continue
    raise ValueError(f"cannot tell the output width of {model.name!r}: give it an nO")


def init(model: Model, X=None, Y=None) -> None:
    # spaCy initialises downstream components on docs the upstream has not
    # annotated yet, so every dim comes from the config, not from X.
    model.layers[0].initialize()
