"""Where the components keep their outputs on a doc, and how they follow its tokens.

Storage. Each component's output is kept with the character spans of the
tokens it was computed for, in one dict under the user-data key
``("._.", "ctxembed:<id>", start_char, end_char)``: the key spaCy uses for a
span extension of the whole doc. spaCy shifts such keys itself in
`Span.as_doc(copy_user_data=True)` and `Doc.from_docs`, and `doc.copy()`,
pickling, `Doc.to_bytes` and `DocBin(store_user_data=True)` keep them, so the
outputs always know which characters their rows belong to. The id is new
with each store written: `Doc.from_docs` gathers the parts' keys in one dict,
and two parts whose shifted spans are equal (cuts of two sources of one
length, or of one doc annotated again between the cuts) would otherwise
share a key, one store silently replacing the other and its tokens reading
the other's rows. (Stores saved before had the name "ctxembed": still read.)

Reading. `doc._.ctx_outputs`, `doc._.ctx_vectors`, `doc._.ctx_layers` and the
vector hooks are computed from the store for the doc's tokens *now*, by
character overlap with the tokens the output was computed for:

- a token with the same span as an embedded token gets exactly its row;
- a token made by merging gets the mean of the rows of the embedded tokens
  it covers (of those that have a vector);
- a token made by splitting gets the row of the token it came from;
- a token that covers embedded tokens, none with a vector, gets zeros and
  `has_vector == False`;
- a token that covers no embedded token at all (a part of a `Doc.from_docs`
  doc whose outputs were not in its user data) has no output: reading the
  primary vectors (and `doc._.ctx_outputs`, where no output covers it) is
  an error, never a silent "no vector".

So retokenizing never shifts a vector onto another token, and every output
has one row per token. Each output also records what made it (its
`signature`: the model and settings, from the component): joined docs whose
outputs of one name come from different models (or have different widths)
cannot be read as one output, and `similarity` compares vectors of one
space only.

`doc.tensor` is spaCy's own: its retokenizer resizes it by its own rule (a
merge keeps the last row of the merged tokens, a split zeros its pieces). A
ctxembed component replaces it only while it is the array a ctxembed
component set, or what spaCy made of that (`tensor.tensor_source`): another
component's (spaCy's tok2vec, whose listeners read it) is left alone.

`Span.as_doc()` without `copy_user_data` shares the source's hooks but not
its user data; the hooks then find the source's store through the hooks
dict, and place the new doc's text in it. A non-primary component keeps
that pointer up to date and leaves the other hooks alone.
"""
from .extensions import (
    drop_outputs,
    get_outputs,
    install_extensions,
    read_output,
    restore_vectors,
    span_as_doc,
    stored_signature,
    write_outputs,
)
from .hooks import similarity
from .store import (
    ENCODER_WEIGHTS,
    SOURCE_HOOK,
    STORE,
    MissingOutputs,
    UnplacedOutputs,
    is_store_key,
    name_stores_by_content,
    signature_fields,
)
from .views import uncovered_error

__all__ = [
    "ENCODER_WEIGHTS",
    "SOURCE_HOOK",
    "STORE",
    "MissingOutputs",
    "UnplacedOutputs",
    "drop_outputs",
    "get_outputs",
    "install_extensions",
    "is_store_key",
    "name_stores_by_content",
    "read_output",
    "restore_vectors",
    "signature_fields",
    "similarity",
    "span_as_doc",
    "stored_signature",
    "uncovered_error",
    "write_outputs",
]
