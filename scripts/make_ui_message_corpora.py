"""Builds two shipped data sets in zoo/data/corpora/ from Django's and Sphinx's translation catalogs.

    pip download --no-deps django==5.2.19 sphinx==8.2.3 -d /tmp/po
    python scripts/make_ui_message_corpora.py /tmp/po/*.whl

The gettext catalogs (.po files; Django BSD-3-Clause, Sphinx BSD-2-Clause) pair each English UI
message (msgid) with its human translation (msgstr). From them:
- ui_messages_en_fr.tsv: English -> French message pairs, Django's and Sphinx's (translation; `zoo train seq2seq`).
- ui_messages_language_id.tsv: messages labelled by language (classification; `zoo train bert`).

Run once by a maintainer; the outputs are committed, nothing downloads at run time. The .po
parser is a few lines of our own because the format's subset used here (msgid/msgstr with
continuation lines, no plurals) does not justify a dependency.
"""

import ast
import random
import re
import sys
import zipfile
from pathlib import Path

LANGUAGES = {"de": "german", "es": "spanish", "fr": "french", "it": "italian", "nl": "dutch", "pt": "portuguese"}
OUT = Path(__file__).resolve().parent.parent / "zoo" / "data" / "corpora"


def parse_po(text):
    """(msgid, msgstr) pairs of a .po file: singular, non-fuzzy, translated entries only."""
    pairs = []
    for entry in text.split("\n\n"):
        if "#, fuzzy" in entry or "msgid_plural" in entry or "msgctxt" in entry:
            continue
        fields, current = {}, None
        for line in entry.splitlines():
            if line.startswith("#"):
                continue
            match = re.match(r'^(msgid|msgstr) (".*")$', line)
            if match:
                current = match.group(1)
                fields[current] = ast.literal_eval(match.group(2))
            elif line.startswith('"') and current:
                fields[current] += ast.literal_eval(line)
        msgid, msgstr = fields.get("msgid", ""), fields.get("msgstr", "")
        if msgid and msgstr:
            pairs.append((msgid, msgstr))
    return pairs


def clean(text):
    return " ".join(text.replace("\t", " ").split())


def translatable(text):
    return not re.search(r"<|\\|\t", text)


def usable(text):
    # Plain sentences only: no format placeholders or markup, which are not language.
    return 2 <= len(text.split()) and not re.search(r"%|\{|<|\\", text)


def read_catalogs(wheel):
    catalogs = {}
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            match = re.search(r"/locale/([a-z]{2})/LC_MESSAGES/[a-z]+\.po$", name)
            if match and match.group(1) in LANGUAGES:
                catalogs.setdefault(match.group(1), []).extend(parse_po(z.read(name).decode("utf-8")))
    return catalogs


def main(django_wheel, sphinx_wheel):
    catalogs = read_catalogs(django_wheel)
    french = catalogs["fr"] + read_catalogs(sphinx_wheel)["fr"]
    pairs = sorted({(clean(a), clean(b)) for a, b in french if translatable(a) and translatable(b)})
    random.Random(0).shuffle(pairs)  # the split takes the file's end: not the alphabet's tail
    with open(OUT / "ui_messages_en_fr.tsv", "w", encoding="utf-8") as f:
        f.write("source\ttarget\n")
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)
    rows = {(clean(a), "english") for pairs_ in catalogs.values() for a, _ in pairs_ if usable(clean(a))}
    for code, language in LANGUAGES.items():
        rows |= {(clean(b), language) for _, b in catalogs[code] if usable(clean(b))}
    rows = sorted(rows)
    random.Random(0).shuffle(rows)  # the split takes the file's end: mix the languages
    with open(OUT / "ui_messages_language_id.tsv", "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        f.writelines(f"{text}\t{label}\n" for text, label in rows)
    print(f"{len(pairs)} en-fr pairs, {len(rows)} labelled sentences")


if __name__ == "__main__":
    django_wheel, sphinx_wheel = sorted(sys.argv[1:3])  # django-*.whl sorts before sphinx-*.whl
    main(django_wheel, sphinx_wheel)
