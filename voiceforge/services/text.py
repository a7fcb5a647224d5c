"""Text preparation for XTTS: Unicode clean-up and sentence chunks under the language's limit."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from voiceforge.errors import Unprocessable
from voiceforge.services.languages import CHAR_LIMITS

# Sentence ends; the split keeps the punctuation with its sentence. Applied after NFKC, which has
# made CJK's fullwidth ？！；，： ASCII. A sentence end followed by a space (Latin, Cyrillic, the danda
# । ॥ of Devanagari, Arabic's ؟ ؛), also with a closing quote or bracket between them ('"Stop." He
# left.'); CJK's 。 and, since CJK leaves no space after them, ? ! ; before a letter of a script other
# than ASCII's ("好?我"; not "a?b" in a URL).
_ENDS = ".!?…。！？；;।॥؟؛"
_CLOSERS = "\"'”“’»)\\]"
SENTENCE_END = re.compile(rf"(?:(?<=[{_ENDS}])|(?<=[{_ENDS}][{_CLOSERS}]))\s+|(?<=[。！？；])"
                          r"|(?<=[!?;])(?=[^\W\d_\x00-\x7f])")
# Abbreviations that stand before a name or a phrase, and so essentially never end a sentence, per
# language, as written and without their last dot. Cut after one at a chunk's end, "Dr." was spoken
# alone with a sentence's falling tune and a pause before "Smith". XTTS spells most titles out itself
# (coqui's tokenizer.py `_abbreviations`: "Dr." is "doctor", "Sra." "señora"), so the model reads
# "doctor Smith" in one breath; the rest ("Prof.", "e.g.", "z.B.") reach it with their dot, read inside
# a sentence rather than as its end. Not all of XTTS' table: "Co.", "Ltd.", "Esq." and names' suffixes
# ("Jr.", English "Sr.") often end a sentence, as do "etc." and units ("ms.", "hr."), hence the case:
# only a capital first letter is also taken for a small one ("E.g.").
ABBREVIATIONS: dict[str, frozenset[str]] = {
    "en": frozenset({"Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Rev", "Capt", "Lt", "Sgt", "vs", "e.g", "i.e"}),
    "de": frozenset({"Hr", "Hrn", "Fr", "Dr", "Prof", "St", "Nr", "z.B", "d.h", "bzw"}),
    "fr": frozenset({"Mme", "Mlle", "Dr"}),  # and "M.", an initial's shape
    "es": frozenset({"Sr", "Sra", "Srta", "Dr", "Dra"}),
    "pt": frozenset({"Sr", "Sra", "Dr", "Dra"}),
    "it": frozenset({"Sig", "Dott", "Prof", "Dr"}),
    "nl": frozenset({"Dhr", "Mevr", "Dr"}),
}
# Abbreviations that stand before a number ("No. 5", "Fig. 3", "S. 12"): a sentence end only when no
# digit follows ("I said no. Then", "Er sah S. Müller").
BEFORE_A_NUMBER: dict[str, frozenset[str]] = {
    "en": frozenset({"No", "Nos", "Fig", "Figs", "Vol", "p", "pp", "Ch", "Art"}),
    "de": frozenset({"Nr", "Abb", "Bd", "S", "Art"}),
    "fr": frozenset({"No", "Fig", "Vol", "p", "Art"}),
    "es": frozenset({"No", "Fig", "Vol", "Art", "Núm"}),
    "pt": frozenset({"No", "Fig", "Vol", "Art"}),
    "it": frozenset({"No", "Fig", "Vol", "Art"}),
    "nl": frozenset({"No", "Nr", "Fig", "Vol", "Art", "Blz"}),
}
# The word a sentence ends in, when it ends in a dot: "Dr" of "(Dr.", "z.B" of "z.B.", "J" of "J.".
LAST_WORD = re.compile(r"(?<![\w.])([^\W\d_][\w.]*)\.$")
# Clause ends, where an over-long sentence is cut (and rejoined with a space): a comma, colon or Arabic
# comma before a space or, CJK's being ASCII after NFKC, before a letter of another script; never
# between digits, where the space would make 1,234,567 three numbers and 10:30 two.
CLAUSE_END = re.compile(r"(?<=[,:،])\s+|(?<=[,:])(?=[^\W\d_\x00-\x7f])|(?<=[，、：])\s*"
                        r"|(?<=[—–])(?!\s*\d)\s*")
# Variation selectors (emoji or text style, CJK glyph variants) and the keycap mark only change how the
# character before them is drawn; an emoji's (❤️ is ❤ and U+FE0F) would be left behind for the model to read.
SELECTORS = re.compile("[\ufe00-\ufe0f\u20e3\U000e0100-\U000e01ef]")
# Unicode categories dropped before speaking: controls, invisible formatting (zero-width,
# bidi marks), unassigned/private code points, and pictographs such as emoji.
DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "So", "Sk"}
# ... except the one such symbol XTTS reads aloud, in every language it spells symbols out in ("25°C":
# "twenty-five degree c", "25 Grad C"); "℃" is "°C" after NFKC.
SPOKEN_SYMBOLS = {"°"}
# XTTS spells out ASCII digits only (its number pattern is [0-9]+), and was trained on numbers spelt out:
# Arabic's ٣٫١٤, Persian's ۳ or Devanagari's ३ would reach it as raw digits. They become ASCII, and
# Arabic's separators the ones XTTS reads for ar (a decimal comma; a thousands dot, dropped).
DIGITS = {**{ord(ch): str(unicodedata.decimal(ch)) for ch in map(chr, range(0x80, 0x20000))  # every Nd
             if unicodedata.category(ch) == "Nd"}, 0x066B: ",", 0x066C: "."}

# A blank line after a line with no closing punctuation (a heading, a list's last item) ends a sentence:
# spoken run on, "Chapter One\n\nIt was night." had no pause and a heading's tune. A single line break
# stays a space, since hard-wrapped prose breaks lines mid-sentence.
PARAGRAPH_AFTER_WORD = re.compile(r"(?<=[^\W_])[^\S\n]*\n\s*\n")
# A list item: a line that begins with a bullet ("- ", "* ", "+ ", "• ") or a number of one or two digits
# and "." or ")" (a year that a hard-wrapped line begins with, "in\n1984. Then", is no item). A numbered
# line is an item only beside another item or after a line ending in ":": hard-wrapped prose breaks
# before dates too ("Wir treffen uns am\n1. Mai"), which read as "am. 1, Mai".
ITEM = re.compile(r"[^\S\n]*(?:[-*+•‣⁃]|(\d{1,2})[.)])[^\S\n]+")
# A line break before an item ends the line before it as a sentence would, unless that line ends in a
# mark of its own ("Buy:", "red,"): "Buy:\n- apples\n- pears" was read "apples pears", in one breath.
ENDS_IN_WORD = re.compile(r"(?:[^\W_]|[)\]])[^\S\n]*$")


def clean_text(text: str, *, max_chars: int | None) -> str:
    """NFKC-normalise, drop invisible and pictographic characters, collapse whitespace; 422 if empty.

    `max_chars` bounds the text as given and as it will be spoken: NFKC can make one character
    eighteen (U+FDFA), so a text within the limit could otherwise speak many times it.
    """
    if max_chars is not None and len(text) > max_chars:
        raise Unprocessable(f"Text is {len(text)} characters long; the limit is {max_chars}.")
    normalised = SELECTORS.sub("", unicodedata.normalize("NFKC", text)).translate(DIGITS)
    kept = "".join(ch if ch == "\n" else " " if ch.isspace() else ch
                   for ch in normalised if ch.isspace() or _speakable(ch))
    listed = _read_lists(kept)
    cleaned = re.sub(r"\s+", " ", PARAGRAPH_AFTER_WORD.sub(". ", listed)).strip()
    if not any(ch.isalnum() for ch in cleaned):
        raise Unprocessable("Text has nothing to speak: it needs at least one letter or digit.")
    if max_chars is not None and len(cleaned) > max_chars:
        raise Unprocessable(f"Text is {len(cleaned)} characters long once normalised (NFKC: ligatures and "
                            f"compatibility characters spelt out); the limit is {max_chars}.")
    return cleaned


def _read_lists(text: str) -> str:
    """End each list item's line before the next item, and speak its marker: a bullet names no word (XTTS
    spells out only the symbols of its table, & % $ °…, and handed "-", "*" or "•" to the model as they
    are); a number is kept with a comma, as one reads a list out ("1, Heat it": with its dot, "1." ended a
    sentence, and a chunk could end on it)."""
    lines = text.split("\n")
    markers = [ITEM.match(line) for line in lines]
    for index, marker in enumerate(markers):
        if marker is None:
            continue
        before = lines[index - 1] if index else ""
        beside = (index and markers[index - 1]) or (index + 1 < len(lines) and markers[index + 1])
        if marker[1] and not beside and not before.rstrip().endswith(":"):
            continue  # a number at the start of a hard-wrapped line, not an item
        if index and ENDS_IN_WORD.search(before):
            lines[index - 1] = before.rstrip() + "."
        lines[index] = (f"{marker[1]}, " if marker[1] else "") + lines[index][marker.end():]
    return "\n".join(lines)


def _speakable(ch: str) -> bool:
    return ch in SPOKEN_SYMBOLS or unicodedata.category(ch) not in DROPPED_CATEGORIES


def split_text(text: str, language: str, too_long: Callable[[str], bool] | None = None) -> list[str]:
    """Chunks under the language's character limit: whole sentences, merged while they fit.

    `too_long` says whether the model would refuse a chunk as too many text tokens (numbers spelt
    out can make a chunk many times longer): such a chunk is split again at half its length, so
    sentences the model reads one by one are never refused for having been merged.
    """
    too_long = too_long or (lambda chunk: False)
    return _within_tokens(_chunks(text, CHAR_LIMITS[language], language), too_long, language)


def _within_tokens(chunks: list[str], too_long: Callable[[str], bool], language: str) -> list[str]:
    fitting: list[str] = []
    for chunk in chunks:
        if len(chunk) > 1 and too_long(chunk):
            fitting.extend(_within_tokens(_chunks(chunk, len(chunk) // 2, language), too_long, language))
        else:
            fitting.append(chunk)
    return fitting


def _chunks(text: str, limit: int, language: str) -> list[str]:
    """Whole sentences (cut only when one alone is over `limit`) merged while under `limit` characters."""
    pieces: list[str] = []
    for sentence in _sentences(text, language):
        pieces.extend(_fit(sentence.strip(), limit))
    chunks: list[str] = []
    for piece in pieces:
        if not piece:
            continue
        if chunks and len(chunks[-1]) + 1 + len(piece) <= limit:
            chunks[-1] = f"{chunks[-1]} {piece}"
        else:
            chunks.append(piece)
    # A chunk of punctuation alone would make XTTS babble: fold it into its neighbour.
    return [chunk for chunk in chunks if any(ch.isalnum() for ch in chunk)] or [text[:limit]]


def _sentences(text: str, language: str) -> list[str]:
    """The text cut at SENTENCE_END, but never after an initial ("J.") or a title ("Dr.")."""
    sentences: list[str] = []
    for piece in SENTENCE_END.split(text):
        if sentences and _ends_in_abbreviation(sentences[-1], language, piece):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def _ends_in_abbreviation(sentence: str, language: str, following: str = "") -> bool:
    """Whether `sentence` ends in an initial, a title (also in capitals: "DR. SMITH") or, before a
    `following` number, an abbreviation that stands before one ("No. 5")."""
    last = LAST_WORD.search(sentence)
    if last is None:
        return False
    word = last[1]
    known = ABBREVIATIONS.get(language, frozenset())
    if following[:1].isdigit() and word in BEFORE_A_NUMBER.get(language, frozenset()):
        return True
    # A capital alone is an initial ("J. R. R. Tolkien", "M. Dupont", "А. С. Пушкин"); the rare sentence
    # that ends in one ("vitamin C.") only loses a place where its chunk could end. Capitals are matched
    # only as a whole ("MRS."): lowered, "ms" would be a title, and "It took 5 ms." no sentence end.
    return ((len(word) == 1 and word.isupper()) or word in known or word[0].lower() + word[1:] in known
            or (word.isupper() and any(title.upper() == word for title in known)))


def _fit(sentence: str, limit: int) -> list[str]:
    """Split one over-long sentence at clause marks, then spaces, then hard at the limit."""
    if len(sentence) <= limit:
        return [sentence]
    parts: list[str] = []
    for clause in CLAUSE_END.split(sentence):
        while len(clause) > limit:
            cut = clause.rfind(" ", 0, limit)
            cut = cut if cut > limit // 2 else limit
            parts.append(clause[:cut].strip())
            clause = clause[cut:].strip()
        parts.append(clause)
    merged: list[str] = []
    for part in filter(None, parts):
        if merged and len(merged[-1]) + 1 + len(part) <= limit:
            merged[-1] = f"{merged[-1]} {part}"
        else:
            merged.append(part)
    return merged
