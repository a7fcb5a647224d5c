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
    cleaned = re.sub(r"\s+", " ", PARAGRAPH_AFTER_WORD.sub(". ", kept)).strip()
    if not any(ch.isalnum() for ch in cleaned):
        raise Unprocessable("Text has nothing to speak: it needs at least one letter or digit.")
    if max_chars is not None and len(cleaned) > max_chars:
        raise Unprocessable(f"Text is {len(cleaned)} characters long once normalised (NFKC: ligatures and "
                            f"compatibility characters spelt out); the limit is {max_chars}.")
    return cleaned


def _speakable(ch: str) -> bool:
    return ch in SPOKEN_SYMBOLS or unicodedata.category(ch) not in DROPPED_CATEGORIES


def split_text(text: str, language: str, too_long: Callable[[str], bool] | None = None) -> list[str]:
    """Chunks under the language's character limit: whole sentences, merged while they fit.

    `too_long` says whether the model would refuse a chunk as too many text tokens (numbers spelt
    out can make a chunk many times longer): such a chunk is split again at half its length, so
    sentences the model reads one by one are never refused for having been merged.
    """
    return _within_tokens(_chunks(text, CHAR_LIMITS[language]), too_long or (lambda chunk: False))


def _within_tokens(chunks: list[str], too_long: Callable[[str], bool]) -> list[str]:
    fitting: list[str] = []
    for chunk in chunks:
        if len(chunk) > 1 and too_long(chunk):
            fitting.extend(_within_tokens(_chunks(chunk, len(chunk) // 2), too_long))
        else:
            fitting.append(chunk)
    return fitting


def _chunks(text: str, limit: int) -> list[str]:
    """Whole sentences (cut only when one alone is over `limit`) merged while under `limit` characters."""
    pieces: list[str] = []
    for sentence in SENTENCE_END.split(text):
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
