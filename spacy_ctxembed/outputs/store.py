"""The stores: where a doc keeps its outputs, and what they say of what made them.

A store is one dict in the doc's user data, under a key of its own
(`store_key`; the package's docstring says why the key is a span
extension's); it holds each component's output with the character spans and
words of the tokens it was computed for, and its signature. Signatures are
compared field by field (`signatures_agree`): outputs of one name from
different models are never read as one.
"""
import hashlib
import os
from typing import Any, Dict, List, Optional, Tuple, cast

import numpy
from spacy.tokens import Doc
from thinc.api import get_array_module

STORE = "ctxembed"
#: The user-hooks entry that points to the store of the doc the hooks were set on.
SOURCE_HOOK = "spacy_ctxembed.source"


class MissingOutputs(ValueError):
    """A doc has the ctxembed hooks but no outputs that can be placed."""


class UnplacedOutputs(MissingOutputs):
    """A joined doc's outputs cannot be placed on its characters (see `placement._own_regions`)."""


def store_key(n_chars: int, start: int = 0, ident: Optional[str] = None) -> tuple:
    """A new user-data key for a store for a doc of `n_chars` characters (from
    `start`, for a shifted one), unique to that store (see the package's
    docstring): by `ident`, else a random id. Random, not counted: a counter
    would repeat in the processes of `nlp.pipe(n_process=...)`."""
    return ("._.", f"{STORE}:{ident or os.urandom(8).hex()}", start, start + n_chars)


def is_store_key(key: Any) -> bool:
    """Whether a user-data key is a ctxembed store's (also as saved before ids: "ctxembed")."""
    return (isinstance(key, tuple) and len(key) == 4 and key[0] == "._." and isinstance(key[1], str)
            and (key[1] == STORE or key[1].startswith(STORE + ":")))


def spans_whole(key: tuple, n_chars: int) -> bool:
    """Whether a store's key spans a whole doc of `n_chars` characters (is not shifted)."""
    return key[2] == 0 and key[3] == n_chars


def user_data_of(doc: Doc) -> Dict[Any, Any]:
    # spaCy's stub types user_data by str; its keys are tuples too (extensions).
    return cast(Dict[Any, Any], doc.user_data)


def doc_stores(doc: Doc, checked: bool = True) -> List[Tuple[tuple, Dict[str, Any]]]:
    """The stores in `doc`'s user data, in character order. (All of them: a
    joined part's shifted key can equal the whole doc's key by chance, a part
    cut from a source as long as the joined doc.) `checked`: each refused
    where it is not as the components write it (`check_store`); unchecked
    only to drop them."""
    found = [
        (k, v) for k, v in user_data_of(doc).items()
        if is_store_key(k) and isinstance(v, dict)
    ]
    if checked:
        for key, store in found:
            check_store(key, store)
    return sorted(found, key=lambda item: item[0][2])


def check_store(key: tuple, store: Dict[str, Any]) -> None:
    """Refuse a store that is not as the components write it: one row per
    stored token in every array, rows of floats, and a primary that it holds.
    A store edited by hand in `doc.user_data` (vectors cut or stacked,
    replaced by a list or by another dtype), or a DocBin written so, was read
    as it was: a doc's `ctx_vectors` with more or fewer rows than tokens,
    `doc.vector` the mean of those rows, or an error from deep in numpy
    that named nothing."""
    problem = store_problem(store)
    if problem is not None:
        raise ValueError(
            f"the ctxembed outputs in doc.user_data[{key!r}] are not as a ctxembed component writes them: "
            f"{problem}, so their rows cannot be read as the doc's tokens' vectors (was the user data edited "
            "by hand?). Delete that entry and run the ctxembed component on the doc again"
        )


def store_problem(store: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a store (`check_store`); None: nothing."""
    outputs = store.get("outputs")
    if not isinstance(outputs, dict):
        return f"its 'outputs' are {shown_value(outputs)}, not a dict of outputs"
    for name, output in outputs.items():
        problem = _output_problem(output)
        if problem is not None:
            return f"output {name!r}: {problem}"
    primary = store.get("primary")
    # (A primary whose parts clashed, joined from docs of different models, is held as a clash.)
    if primary is not None and primary not in outputs and primary not in (store.get("clashes") or {}):
        return f"it names {primary!r} as its primary output, which it does not hold"
    return None


def _output_problem(output: Any) -> Optional[str]:
    """What is wrong with one stored output (`check_store`); None: nothing."""
    if not isinstance(output, dict) or any(field not in output for field in ("starts", "ends", "vectors")):
        return f"{shown_value(output)} is not a dict with 'starts', 'ends' and 'vectors'"
    if numpy.ndim(output["starts"]) != 1:
        return f"'starts' is {shown_value(output['starts'])}, not one offset per stored token"
    signature = output.get("signature")
    if signature is not None and not isinstance(signature, str):  # (read field by field: `signature_fields`)
        return f"'signature' is {shown_value(signature)}, not a string of 'key=value' fields"
    n_tokens = len(output["starts"])
    # (field, dimensions, the axis of the stored tokens); orths and layers may be None.
    for field, ndim, axis in (("ends", 1, 0), ("orths", 1, 0), ("vectors", 2, 0), ("layers", 3, 1)):
        array: Any = output.get(field)
        if array is None and field in ("orths", "layers"):
            continue
        if not hasattr(array, "shape") or not hasattr(array, "dtype"):  # (numpy or cupy)
            return f"'{field}' is {shown_value(array)}, not an array"
        if len(array.shape) != ndim or array.shape[axis] != n_tokens:
            return (f"'{field}' has shape {tuple(array.shape)}, where its {n_tokens} stored tokens ('starts') "
                    f"need {ndim} dimensions and {n_tokens} rows on axis {axis}")
        if field in ("vectors", "layers") and array.dtype.kind != "f":
            return f"'{field}' has dtype {array.dtype}, not floats"
    return None


def shown_value(value: Any) -> str:
    """`value` for a message: its repr, or where that is long, its type ("a dict")."""
    shown = repr(value)
    return shown if len(shown) <= 40 else f"a {type(value).__name__}"


def give_ids(doc: Doc) -> None:
    """Give the stores saved before keys had ids (named "ctxembed") one, so
    that cuts of this doc joined with others' keep their stores apart."""
    data = user_data_of(doc)
    for key in [k for k in data if is_store_key(k) and k[1] == STORE]:
        data[store_key(key[3] - key[2], key[2])] = data.pop(key)


def name_stores_by_content(doc: Doc) -> None:
    """Key each store in `doc`'s user data by a digest of its content rather
    than the random id it was written with: the same outputs then serialize to
    the same bytes (`embed` run again writes the same files), and stores that
    differ still never share a key. For host docs about to be saved (arrays
    read here: numpy, as `embed`'s writer makes them first)."""
    data = user_data_of(doc)
    for key, store in doc_stores(doc):
        digest = hashlib.blake2b(repr((key[2], key[3], store.get("primary"), store.get("tensor_set"),
                                       store.get("conflict"), store.get("clashes"))).encode("utf8"),
                                 digest_size=16)
        for name in sorted(store["outputs"]):
            output = store["outputs"][name]
            digest.update(repr((name, output.get("signature"))).encode("utf8"))
            for field in ("starts", "ends", "orths", "vectors", "layers"):
                array = output.get(field)
                if array is not None:
                    array = numpy.ascontiguousarray(array)
                    digest.update(repr((field, array.dtype.str, array.shape)).encode("utf8"))
                    digest.update(array.tobytes())
        named = store_key(key[3] - key[2], key[2], ident=digest.hexdigest())
        if named != key:
            data[named] = data.pop(key)


#: The signature field that fingerprints the encoder's weights alone, next to
#: "weights" (encoder and combiner): a head that mixes the layers reads the
#: encoder's outputs, which no combiner shapes. Absent from signatures written
#: by earlier versions, which are then held to "weights" as they were.
ENCODER_WEIGHTS = "encoder_weights"


def signature_fields(signature: str) -> Dict[str, str]:
    """A signature's fields ("key=value; ...", `pipeline.signature.output_signature`)."""
    return dict(part.partition("=")[::2] for part in signature.split("; "))


def signatures_agree(signatures: List[str]) -> bool:
    """Whether the signatures say one model made the outputs. Only the fields
    that both of a pair have count: earlier versions wrote fewer (no weights)."""
    fields = [signature_fields(s) for s in dict.fromkeys(signatures)]
    return all(a[key] == b[key] for i, a in enumerate(fields) for b in fields[i + 1:] for key in a.keys() & b.keys())


def merged_signature(signatures: List[str]) -> str:
    """Signatures that agree, as one with every field any of them has: an
    earlier version's (the config's paths, no tokenizer) and a newer one's
    say different things of one model, and neither may be dropped."""
    fields: Dict[str, str] = {}
    for signature in signatures:
        fields.update(signature_fields(signature))
    return "; ".join(f"{key}={value}" for key, value in fields.items())


def signature_difference(a: str, b: str) -> str:
    """What differs between two signatures ("key=value; ..."), for messages: the
    fields both have (`signatures_agree`: a field only one has says nothing)."""
    fields_a, fields_b = signature_fields(a), signature_fields(b)
    differ = [f"{k} {fields_a[k]} vs {fields_b[k]}" for k in fields_a if k in fields_b and fields_a[k] != fields_b[k]]
    return "; ".join(differ) if differ else f"{a!r} vs {b!r}"


def read_only(array):
    """A host array that is stored or read through the hooks, made read-only:
    `token.vector` is a view of a stored row, and `v = token.vector; v /= norm`
    would rewrite it for every later read (spans, similarity, listeners)
    without a word. (cupy arrays have no such flag.)"""
    if isinstance(array, numpy.ndarray):
        array.flags.writeable = False
    return array


def concat(arrays: List[Any], axis: int, on_host: bool = False):
    """The arrays joined along `axis`; on the host if `on_host` or if they are
    not all of one type (numpy cannot take cupy arrays, and a GPU doc joined
    with a host doc is no reason to move the host's part to the GPU)."""
    if on_host or len({type(a) for a in arrays}) > 1:
        arrays = [to_numpy(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0]
    xp = get_array_module(arrays[0])
    return xp.concatenate(arrays, axis=axis)


def to_numpy(array):
    if array is None or isinstance(array, numpy.ndarray):
        return array
    return array.get() if hasattr(array, "get") else numpy.asarray(array)
