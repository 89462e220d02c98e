"""Reading token-tagged text for named-entity recognition: CoNLL columns and .jsonl.

A CoNLL file has one token per line, its fields separated by whitespace (tabs or spaces), the tag
in the last field unless `tag_column` (0-based) names another, and a blank (or whitespace-only)
line between sentences; `-DOCSTART-` lines are skipped (CoNLL-2003). A .jsonl file has one
sentence per line: an object with `tokens` and `tags`, two lists of strings of the same length.

Tags are BIO (IOB2): `O`, or `B-TYPE` / `I-TYPE`. A tag of another scheme (BIOES's `S-`/`E-`,
a bare `PER`) is refused with its file and line; an `I-` tag that does not continue an entity of
its type starts one, as conlleval and seqeval read it. Every problem is a DataError naming the
file and the line.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.data.text import jsonl_records
from zoo.errors import DataError

DEFAULT_TAGGED = Path(__file__).parent / "corpora" / "wnut17_train.conll"
TAG = re.compile(r"O|[BI]-\S+")
DOCSTART = "-DOCSTART-"


@dataclass
class TaggedData:
    """Sentences of tokens with one tag each; `lines` are their first lines in `source`."""

    tokens: list  # [[str]]
    tags: list  # [[str]]
    source: str = ""
    lines: list = None

    def __len__(self):
        return len(self.tokens)

    def subset(self, indices):
        return TaggedData([self.tokens[i] for i in indices], [self.tags[i] for i in indices], self.source,
                          [self.lines[i] for i in indices])


def _check_tag(path, line, tag):
    if not TAG.fullmatch(tag):
        raise DataError(f"{path}, line {line}: tag {tag!r} is not BIO (IOB2): expected O, B-TYPE or I-TYPE")
    return tag


def _read_conll(path, text, tag_column):
    sentences, tokens, tags, first = [], [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if tokens:
                sentences.append((tokens, tags, first))
            tokens, tags, first = [], [], None
            continue
        column = len(fields) - 1 if tag_column is None else tag_column
        if len(fields) < 2 or column >= len(fields) or column == 0:
            where = "a token and a tag" if tag_column is None else f"a tag in column {tag_column}"
            raise DataError(f"{path}, line {number}: {len(fields)} field(s), expected {where} "
                            "(CoNLL: TOKEN ... TAG, sentences separated by blank lines)")
        tokens.append(fields[0])
        tags.append(_check_tag(path, number, fields[column]))
        first = first or number
    if tokens:
        sentences.append((tokens, tags, first))
    return sentences


def _read_jsonl(path, text):
    sentences = []
    for number, record in jsonl_records(path, text, ["tokens", "tags"], string_fields=[]):
        tokens, tags = record["tokens"], record["tags"]
        for field, values in (("tokens", tokens), ("tags", tags)):
            if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
                raise DataError(f"{path}, line {number}: {field!r} must be a list of non-empty strings")
        if len(tokens) != len(tags):
            raise DataError(f"{path}, line {number}: {len(tokens)} tokens but {len(tags)} tags")
        if tokens:
            sentences.append((tokens, [_check_tag(path, number, tag) for tag in tags], number))
    return sentences


def read_tagged(path, tag_column=None):
    """The sentences of a CoNLL file (any suffix but .jsonl) or a .jsonl file as TaggedData."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}; give a CoNLL or .jsonl file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({e.reason})") from None
    if not text.strip():
        raise DataError(f"{path}: is empty (no sentences)")
    if path.suffix == ".jsonl":
        if tag_column is not None:
            raise DataError(f"{path}: --tag-column is for CoNLL files; a .jsonl file has `tokens` and `tags`")
        sentences = _read_jsonl(path, text)
    else:
        sentences = _read_conll(path, text, tag_column)
    if not sentences:
        raise DataError(f"{path}: holds no sentences")
    tokens, tags, lines = (list(column) for column in zip(*sentences))
    return TaggedData(tokens, tags, str(path), lines)


def tag_names(data):
    """The tag set of the training data: O, then B- and I- of each entity type, types sorted (an
    I- tag is listed for every type even if the data never continues one)."""
    types = sorted({tag[2:] for sentence in data.tags for tag in sentence if tag != "O"})
    if not types:
        raise DataError(f"{data.source}: every token is tagged O; a tagger needs at least one entity type")
    return ["O"] + [f"{prefix}-{name}" for name in types for prefix in "BI"]


def encode_tags(data, names):
    """Each sentence's tags as int32 indices into `names`; a DataError names the line of a tag
    `names` lacks (an entity type absent from the training data)."""
    index = {name: i for i, name in enumerate(names)}
    encoded = []
    for tags, line in zip(data.tags, data.lines):
        unknown = next((tag for tag in tags if tag not in index), None)
        if unknown is not None:
            raise DataError(f"{data.source}, sentence at line {line}: tag {unknown!r} does not occur in the "
                            f"training data (tags: {', '.join(names)})")
        encoded.append(np.array([index[tag] for tag in tags], dtype=np.int32))
    return encoded


def split_tagged(data, val_fraction=0.1, seed=0):
    """A deterministic (train, validation) split of the sentences (file order kept in each)."""
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    take = int(round(len(data) * val_fraction))
    if not 0 < take < len(data):
        raise DataError(f"{data.source}: {len(data)} sentences leave none for "
                        f"{'validation' if take == 0 else 'training'} at fraction {val_fraction}")
    chosen = set(np.random.default_rng(seed).permutation(len(data))[:take].tolist())
    return (data.subset([i for i in range(len(data)) if i not in chosen]), data.subset(sorted(chosen)))
