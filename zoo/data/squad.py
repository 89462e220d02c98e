"""Reading extractive question answering data: SQuAD v1.1 JSON.

A file is {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}, as SQuAD v1.1, XQuAD and MLQA ship it. Every answer must stand
in its context at `answer_start` (a character offset); one that does not, a missing field, a
question without an answer or an empty file is a DataError naming the file, the line of the
question (found by its id) and the question's id.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import DataError

DEFAULT_SQUAD = Path(__file__).parent / "corpora" / "xquad_en.json"


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list  # [(text, character offset in context)]; the first is the one trained on


def _line_of(text, qid):
    """The line of the file that holds question `qid` (JSON parsers give no line numbers)."""
    match = re.search(r'"id"\s*:\s*' + re.escape(json.dumps(qid)), text)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _field(record, name, kind, where):
    value = record.get(name) if isinstance(record, dict) else None
    if not isinstance(value, kind):
        shown = {str: "a string", list: "a list", int: "an integer"}[kind]
        raise DataError(f"{where}: {name!r} must be {shown}")
    return value


def read_squad(path):
    """The questions of a SQuAD v1.1 JSON file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'is a directory' if path.is_dir() else 'no such file'}; give a SQuAD v1.1 .json file")
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    if not text.strip():
        raise DataError(f"{path}: is empty")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    questions = []
    for a, article in enumerate(_field(document, "data", list, f"{path}: the top level")):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            for q, item in enumerate(_field(paragraph, "qas", list, where)):
                qid = item.get("id") if isinstance(item, dict) else None
                line = _line_of(text, qid) if isinstance(qid, str) else None
                at = f"{path}, line {line} (question {qid})" if line else f"{where}.qas[{q}]"
                qid = _field(item, "id", str, at)
                question = _field(item, "question", str, at)
                answers = []
                for answer in _field(item, "answers", list, at):
                    answer_text = _field(answer, "text", str, at)
                    start = _field(answer, "answer_start", int, at)
                    if context[start:start + len(answer_text)] != answer_text or not answer_text.strip():
                        raise DataError(f"{at}: the answer {answer_text!r} is not at offset {start} of its context "
                                        f"(which has {context[start:start + len(answer_text)]!r} there)")
                    answers.append((answer_text, start))
                if not answers or not question.strip():
                    raise DataError(f"{at}: a question needs a text and at least one answer")
                questions.append(Question(qid, question, context, answers))
    if not questions:
        raise DataError(f"{path}: holds no questions")
    return questions


def split_squad(questions, val_fraction=0.1, seed=0):
    """A deterministic (train, validation) split by context: a paragraph's questions all go to the
    same side, so validation contexts are never trained on."""
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    contexts = list(dict.fromkeys(q.context for q in questions))
    take = int(round(len(contexts) * val_fraction))
    if not 0 < take < len(contexts):
        raise DataError(f"{len(contexts)} contexts leave none for {'validation' if take == 0 else 'training'} at "
                        f"fraction {val_fraction}")
    chosen = {contexts[i] for i in np.random.default_rng(seed).permutation(len(contexts))[:take]}
    return [q for q in questions if q.context not in chosen], [q for q in questions if q.context in chosen]
