"""Abbreviations spelt out before XTTS reads them: the common ones its own table lacks.

XTTS's tokenizer expands a short list per language ("Dr." -> "doctor", "Mrs." -> "misess", "Fr." ->
"frau"…) and hands everything else to the model as written, so "e.g.", "Prof.", "z.B." or "No. 5"
reach a model that was trained on words: it mumbles letters, or reads the dot as a sentence's end.
Each entry here is spelt out where it stands as a word; the number words ("No.", "p.", "S."…) only
before a number, where they cannot be a sentence's last word ("I said no."). An abbreviation that
often ends a sentence ("etc.") keeps its dot where a sentence ends with it.
"""

from __future__ import annotations

import re

# (abbreviation, words) per language, matched case-insensitively; the words as written mid-sentence,
# with a capital at a sentence's start (XTTS lowercases what it reads: this is for the logs' sake).
WORDS: dict[str, list[tuple[str, str]]] = {
    "en": [("e.g.", "for example"), ("i.e.", "that is"), ("Prof.", "professor"), ("vs.", "versus"),
           ("approx.", "approximately"), ("etc.", "et cetera")],
    "de": [("z.B.", "zum Beispiel"), ("z. B.", "zum Beispiel"), ("d.h.", "das heißt"), ("d. h.", "das heißt"),
           ("bzw.", "beziehungsweise"), ("u.a.", "unter anderem"), ("ca.", "circa"), ("Hr.", "Herr"),
           ("Hrn.", "Herrn"), ("Prof.", "Professor"), ("usw.", "und so weiter")],
    "fr": [("Mlle.", "mademoiselle"), ("Prof.", "professeur"), ("etc.", "et cetera")],
    "es": [("Srta.", "señorita"), ("p. ej.", "por ejemplo"), ("Prof.", "profesor"), ("etc.", "etcétera")],
    "pt": [("Prof.", "professor"), ("p. ex.", "por exemplo"), ("etc.", "etcétera")],
    "it": [("Sig.", "signor"), ("Dott.", "dottor"), ("Prof.", "professor"), ("ecc.", "eccetera")],
    "nl": [("Dhr.", "de heer"), ("Mevr.", "mevrouw"), ("bijv.", "bijvoorbeeld"), ("enz.", "enzovoort"),
           ("Prof.", "professor")],
}
# Spelt out only before a number ("No. 5" -> "number 5", "S. 12" -> "Seite 12").
BEFORE_A_NUMBER: dict[str, list[tuple[str, str]]] = {
    "en": [("No.", "number"), ("Nos.", "numbers"), ("Fig.", "figure"), ("Vol.", "volume"), ("pp.", "pages"),
           ("p.", "page"), ("Ch.", "chapter")],
    "de": [("Nr.", "Nummer"), ("Abb.", "Abbildung"), ("Bd.", "Band"), ("S.", "Seite")],
    "fr": [("No.", "numéro"), ("p.", "page")],
    "es": [("Núm.", "número"), ("p.", "página")],
    "pt": [("p.", "página")],
    "it": [("p.", "pagina")],
    "nl": [("Nr.", "nummer"), ("blz.", "bladzijde")],
}
# Those that often end a sentence: where one does (the text ends, or a capital follows), the words keep
# its dot, or "We had tea, cake, etc. Then we left" would lose a sentence's end.
CAN_END_A_SENTENCE = {"etc.", "usw.", "ecc.", "enz."}


def _pattern(abbreviations: list[tuple[str, str]], after: str) -> re.Pattern[str] | None:
    if not abbreviations:
        return None
    # Longest first, so that "pp." is not read as "p." and a stray "p".
    alternatives = "|".join(re.escape(short) for short, _ in sorted(abbreviations, key=lambda a: -len(a[0])))
    return re.compile(rf"(?<![\w.])({alternatives}){after}", re.IGNORECASE)


_PATTERNS = {language: (_pattern(WORDS.get(language, []), r"(?=\s|$|[,;:)\]])"),
                        _pattern(BEFORE_A_NUMBER.get(language, []), r"(?=\s?\d)"))
             for language in set(WORDS) | set(BEFORE_A_NUMBER)}
_LOOKUP = {language: {short.lower(): words for short, words in [*WORDS.get(language, []),
                                                                  *BEFORE_A_NUMBER.get(language, [])]}
           for language in _PATTERNS}


def spell_out(text: str, language: str) -> str:
    """`text` with the language's abbreviations that XTTS would not expand written as words."""
    words, numbers = _PATTERNS.get(language, (None, None))
    for pattern in (words, numbers):
        if pattern is not None:
            text = pattern.sub(lambda match: _spelt(match, language), text)
    return text


def _spelt(match: re.Match[str], language: str) -> str:
    short = match[1]
    words = _LOOKUP[language][short.lower()]
    before = match.string[:match.start()].rstrip()
    if not before or before[-1] in ".!?":
        words = words[0].upper() + words[1:]
    rest = match.string[match.end():].lstrip()
    if short.lower() in CAN_END_A_SENTENCE and (not rest or rest[0].isupper()):
        return f"{words}."
    return words
