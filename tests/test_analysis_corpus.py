"""Reading an analysis corpus: text lines, a DocBin, CoNLL-U (documents, sentences, multiword tokens)."""
import re

import pytest
import spacy
from spacy.tokens import Doc, DocBin

from spacy_ctxembed.analysis import AnalysisInputError, read_corpus

CONLLU = """\
# newdoc id = d1
# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\t_\t_\t4\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\t_\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\t_\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No
4.1\tknew\t_\t_\t_\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t_\t_\t4\tpunct\t_\t_

# sent_id = 2
# text = It ran.
1\tIt\tit\tPRON\t_\t_\t2\tnsubj\t_\t_
2\tran\trun\tVERB\t_\t_\t0\troot\t_\tSpaceAfter=No
3\t.\t.\tPUNCT\t_\t_\t2\tpunct\t_\t_

# newdoc id = d2
# sent_id = 3
# text = Bye!
1\tBye\tbye\tINTJ\t_\t_\t0\troot\t_\tSpaceAfter=No
2\t!\t!\tPUNCT\t_\t_\t1\tpunct\t_\t_
"""


def test_conllu_documents_sentences_and_multiword_tokens(tmp_path):
    path = tmp_path / "c.conllu"
    path.write_text(CONLLU, encoding="utf8")
    corpus = read_corpus(path)
    assert corpus.kind == "conllu" and corpus.n_docs == 2
    docs = list(corpus.docs(spacy.blank("en")))
    # the texts are the "# text" lines of each document, joined by a space
    assert [d.text for d in docs] == ["I don't know. It ran.", "Bye!"]
    # surface tokens: the multiword token stays whole, its words and the empty node 4.1 are left out
    assert [t.text for t in docs[0]] == ["I", "don't", "know", ".", "It", "ran", "."]
    assert [s.text for s in docs[0].sents] == ["I don't know.", "It ran."]


def test_conllu_without_documents_gives_a_doc_per_sentence(tmp_path):
    path = tmp_path / "c.conllu"
    path.write_text("1\tHi\t_\t_\t_\t_\t_\t_\t_\t_\n\n1\tYo\t_\t_\t_\t_\t_\t_\t_\t_\n", encoding="utf8")
    assert [d.text for d in read_corpus(path).docs(spacy.blank("en"))] == ["Hi", "Yo"]


def test_conllu_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_text("# text = x\n1\tx\t_\n", encoding="utf8")
    with pytest.raises(AnalysisInputError, match=r"CORPUS .*bad.conllu: line 2: expected 10 tab-separated"):
        read_corpus(path)


@pytest.mark.parametrize("line, message", [
    # spaCy would refuse the empty word (E031) only after the run began, naming neither file nor line
    ("2\t\t_\t_\t_\t_\t_\t_\t_\t_", r"line 2: empty FORM \(column 2\)"),
    # a reversed range would skip every word after it
    ("3-2\txy\t_\t_\t_\t_\t_\t_\t_\t_", r"line 2: bad token id '3-2': a multiword token's range goes from a "
                                              r"lower word id to a higher one"),
    ("2-2\txy\t_\t_\t_\t_\t_\t_\t_\t_", r"line 2: bad token id '2-2': a multiword token's range"),
    ("x-3\txy\t_\t_\t_\t_\t_\t_\t_\t_", r"line 2: bad token id 'x-3'$"),
])
def test_conllu_token_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "bad.conllu"
    words = "\n".join(f"{i}\t{w}\t_\t_\t_\t_\t_\t_\t_\t_" for i, w in [(2, "B"), (3, "C"), (4, "D")])
    path.write_text(f"1\tA\t_\t_\t_\t_\t_\t_\t_\t_\n{line}\n{words}\n", encoding="utf8")
    with pytest.raises(AnalysisInputError, match=r"^CORPUS .*bad.conllu: " + message):
        read_corpus(path)


def test_conllu_lines_split_at_newlines_only(tmp_path):
    """A form may hold U+2028 or U+0085 (str.splitlines would split there and report a bad line); CRLF and
    a byte order mark are no text."""
    path = tmp_path / "c.conllu"
    text = "# text = a\u2028b c\x85d\n1\ta\u2028b\t_\t_\t_\t_\t_\t_\t_\t_\n2\tc\x85d\t_\t_\t_\t_\t_\t_\t_\t_\n"
    path.write_bytes(("\ufeff" + text).replace("\n", "\r\n").encode("utf8"))
    docs = list(read_corpus(path).docs(spacy.blank("en")))
    assert [t.text for t in docs[0]] == ["a\u2028b", "c\x85d"]
    # "\r\r\n": one "\r" is the line ending, the other text (no blank line, which would end the sentence)
    path.write_bytes(text.replace("\n", "\r\r\n", 1).encode("utf8"))
    assert len(list(read_corpus(path).docs(spacy.blank("en")))) == 1


def test_text_lines_and_max_words(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes("\ufeffOne two three.\r\n\n  \nFour five.\r\r\nSix.\n".encode("utf8"))
    corpus = read_corpus(path)
    assert (corpus.kind, corpus.n_docs) == ("text", 3)
    nlp = spacy.blank("en")
    # one "\r" before the "\n" is the line ending (as `embed` reads lines), another is text
    assert [d.text for d in corpus.docs(nlp)] == ["One two three.", "Four five.\r", "Six."]
    # whole docs until the limit is reached
    assert [d.text for d in corpus.docs(nlp, max_words=5)] == ["One two three.", "Four five.\r"]


def test_docbin(tmp_path):
    nlp = spacy.blank("en")
    doc = Doc(nlp.vocab, words=["A", "b", "C", "d"], sent_starts=[True, False, True, False])
    DocBin(docs=[doc, nlp("")]).to_disk(tmp_path / "c.spacy")
    corpus = read_corpus(tmp_path / "c.spacy")
    docs = list(corpus.docs(nlp))
    assert corpus.n_docs == 1 and [s.text for s in docs[0].sents] == ["A b", "C d"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"\n \n", "no docs with text"), (b"ok\n\xff\n", "line 2 is not UTF-8"),
    # the column counts the line's bytes, not the byte order mark
    (b"\xef\xbb\xbfab\xff\n", r"line 1 is not UTF-8 \(byte 0xff at column 3\): re-encode it"),
    # (read as UTF-8, every line was analysed as its bytes: NULs between the letters)
    ("Pretty good.\nSecond.\n".encode("utf-16"), "looks like UTF-16, not UTF-8"),
])
def test_corpus_errors(tmp_path, content, message):
    path = tmp_path / "c.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AnalysisInputError, match=f"CORPUS .*{message}"):
        read_corpus(path)


def test_a_utf16_conllu_corpus_is_refused(tmp_path):
    path = tmp_path / "c.conllu"
    path.write_bytes("# text = Hi\n1\tHi\thi\tINTJ\t_\t_\t0\troot\t_\t_\n\n".encode("utf-16-le"))
    with pytest.raises(AnalysisInputError, match=r"^CORPUS .*c.conllu looks like UTF-16LE, not UTF-8"):
        read_corpus(path)


@pytest.mark.parametrize("name, kind", [
    ("emerging.dev.conll", "a token-per-line file (by its suffix .conll)"), ("x.IOB", "a token-per-line file"),
    ("x.jsonl", "a jsonl file (by its suffix .jsonl)"), ("x.Parquet", "a parquet file"),
])
def test_other_formats_are_refused_not_read_as_text(tmp_path, name, kind):
    """A WNUT-17 .conll file was analysed as text, one "doc" per token row (exit 0,
    a full report), as JSONL was as its JSON syntax."""
    (tmp_path / name).write_bytes(b"@paulwalk\tO\nIt\tO\n")
    expected = rf"^CORPUS .*{re.escape(name)}: {re.escape(kind)}.*, whose lines would be analysed as text"
    with pytest.raises(AnalysisInputError, match=expected):
        read_corpus(tmp_path / name)


def test_suffixes_in_any_case(tmp_path):
    (tmp_path / "c.CONLLU").write_text(CONLLU, encoding="utf8")
    nlp = spacy.blank("en")
    DocBin(docs=[nlp("A b.")]).to_disk(tmp_path / "c.Spacy")
    assert read_corpus(tmp_path / "c.CONLLU").kind == "conllu" and read_corpus(tmp_path / "c.Spacy").kind == "docbin"


def test_unreadable_docbin(tmp_path):
    (tmp_path / "x.spacy").write_bytes(b"nope")
    with pytest.raises(AnalysisInputError, match=r"CORPUS .*x\.spacy: not a readable \.spacy DocBin"):
        read_corpus(tmp_path / "x.spacy")


def test_text_lines_longer_than_the_pipeline_takes_are_named(tmp_path):
    """spaCy's E088 came once the line was reached, after the lines before it were
    embedded, naming neither the file nor the line (`analyze` checks up front)."""
    path = tmp_path / "c.txt"
    path.write_bytes(b"short one\n\n" + b"x" * 61 + b"\nshort two\n" + b"y " * 40 + b"\n")
    corpus = read_corpus(path)
    nlp = spacy.blank("en")
    nlp.max_length = 60
    with pytest.raises(AnalysisInputError, match=re.escape(
            f"CORPUS {path}: line 3 has 61 characters, more than the nlp.max_length (60) of the pipeline p, "
            "as does 1 more line; split them into shorter lines")):
        corpus.check_line_lengths(nlp.max_length, "the pipeline p")
    corpus.check_line_lengths(80, "the pipeline p")  # (the longest line has 80 characters)
    # Made into docs as they are reached: with --max-words the lines past the limit are never checked.
    assert [d.text for d in corpus.docs(nlp, max_words=1)] == ["short one"]
    with pytest.raises(AnalysisInputError, match=r"line 3 has 61 characters.*of the pipeline p; split it"):
        list(corpus.docs(nlp, max_words=3, pipeline="the pipeline p"))


def test_a_corpus_made_from_a_list_of_texts_numbers_them():
    """`Corpus` is public: made from texts without line numbers it gave no docs."""
    from pathlib import Path

    from spacy_ctxembed.analysis.corpus import Corpus

    corpus = Corpus(Path("x.txt"), "text", ["A line.", "x" * 70, "Another one."], 3)
    nlp = spacy.blank("en")
    assert [d.text for d in corpus.docs(nlp)][::2] == ["A line.", "Another one."]
    with pytest.raises(AnalysisInputError, match=r"x.txt: line 2 has 70 characters"):
        corpus.check_line_lengths(60, "the pipeline p")


def test_max_words_stops_once_the_limit_is_reached_exactly(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"One two three.\nFour five.\nSix.\n")
    nlp = spacy.blank("en")
    corpus = read_corpus(path)
    assert [len(d) for d in corpus.docs(nlp)] == [4, 3, 2]
    assert [d.text for d in corpus.docs(nlp, max_words=4)] == ["One two three."]
    assert [d.text for d in corpus.docs(nlp, max_words=7)] == ["One two three.", "Four five."]
    assert [d.text for d in corpus.docs(nlp, max_words=8)] == ["One two three.", "Four five.", "Six."]


def test_only_the_files_byte_order_mark_is_dropped(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfOne.\n\xef\xbb\xbfTwo.\n")
    assert [d.text for d in read_corpus(path).docs(spacy.blank("en"))] == ["One.", "\ufeffTwo."]


def test_conllu_sentences_before_the_first_newdoc_are_a_document(tmp_path):
    """A file whose first sentences come before any "# newdoc" line (a header
    left out, or files concatenated) still has document structure: those
    sentences make the first document, and each "# newdoc" starts the next.
    Before, every file tried opened with "# newdoc" or had none at all."""
    path = tmp_path / "c.conllu"
    row = "{}\t{}\t_\t_\t_\t_\t_\t_\t_\t_\n"
    path.write_text(row.format(1, "Hi") + "\n" + row.format(1, "there") + "\n# newdoc\n" + row.format(1, "Yo") + "\n"
                    + row.format(1, "again") + "\n", encoding="utf8")
    corpus = read_corpus(path)
    assert corpus.n_docs == 2
    docs = list(corpus.docs(spacy.blank("en")))
    assert [d.text for d in docs] == ["Hi there", "Yo again"]
    assert [[s.text for s in d.sents] for d in docs] == [["Hi", "there"], ["Yo", "again"]]


def test_a_newdoc_before_a_blank_line_still_starts_a_document(tmp_path):
    """A "# newdoc" block set apart by a blank line (and blank lines doubled) starts the next
    document: the blank line used to clear the flag, so with every "# newdoc" so placed the file
    read as one doc per sentence, and a sentence lost its document's context."""
    path = tmp_path / "c.conllu"
    row = "{}\t{}\t_\t_\t_\t_\t_\t_\t_\t_\n"
    path.write_text("# newdoc id = a\n\n" + row.format(1, "Hi") + "\n\n" + row.format(1, "there") + "\n"
                    + "# newdoc id = b\n\n\n" + row.format(1, "Yo") + "\n" + row.format(1, "again") + "\n",
                    encoding="utf8")
    corpus = read_corpus(path)
    assert corpus.n_docs == 2
    docs = list(corpus.docs(spacy.blank("en")))
    assert [[s.text for s in d.sents] for d in docs] == [["Hi", "there"], ["Yo", "again"]]


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_a_conllu_corpus_that_is_not_utf8_names_the_line_and_column(tmp_path, bom):
    path = tmp_path / "c.conllu"
    # "\xe9" is Latin-1 "é", not the start of a UTF-8 character: the 6th byte of line 3
    path.write_bytes(bom + b"# text = Caf\xc3\xa9\n1\tOk\t_\t_\t_\t_\t_\t_\t_\t_\n2\tCaf\xe9\t_\t_\t_\t_\t_\t_\t_\t_\n")
    with pytest.raises(AnalysisInputError, match=rf"^CORPUS {re.escape(str(path))}: line 3 is not UTF-8 "
                                                 r"\(byte 0xe9 at column 6\): re-encode it, e.g. iconv"):
        read_corpus(path)


def test_a_corpus_that_is_a_directory_is_refused(tmp_path):
    with pytest.raises(AnalysisInputError, match=rf"^CORPUS {re.escape(str(tmp_path))}: not a file \(expected a text "
                                                 r"file, a .spacy DocBin or a .conllu file\)$"):
        read_corpus(tmp_path)
