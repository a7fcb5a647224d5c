"""XTTS-v2 languages and the per-language text length above which quality drops."""

from __future__ import annotations

import re

from voiceforge.errors import Unprocessable

# Characters per chunk before XTTS-v2 quality drops (coqui-tts tokenizer char_limits).
CHAR_LIMITS: dict[str, int] = {
    "en": 250, "de": 253, "fr": 273, "es": 239, "it": 213, "pt": 203, "pl": 224, "zh-cn": 82,
    "ar": 166, "cs": 186, "ru": 182, "nl": 251, "tr": 226, "ja": 71, "hu": 224, "ko": 95, "hi": 150,
}
SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(CHAR_LIMITS)
# XTTS' Chinese is Mandarin in simplified characters: the tags that say so. zh-TW, zh-HK (Cantonese)
# and zh-Hant name other writing or speech, and are refused rather than guessed at.
ALIASES = {"zh": "zh-cn", "zh-hans": "zh-cn", "zh-hans-cn": "zh-cn", "zh-sg": "zh-cn", "zh-hans-sg": "zh-cn"}

BCP47_TAG = re.compile(r"([a-z]{2,3})(?:-[a-z0-9]{1,8})+")  # language, then region, script, variant…


def normalise_language(code: str) -> str:
    """Return the XTTS code for `code` or raise 422 with the list.

    Case-insensitive, `_` read as `-`; a browser's BCP 47 tag (`navigator.language`: en-US, pt-BR,
    de-CH) speaks its language, since XTTS has one accent per language anyway.
    """
    cleaned = code.strip().lower().replace("_", "-")
    cleaned = ALIASES.get(cleaned, cleaned)
    tag = BCP47_TAG.fullmatch(cleaned)
    if cleaned not in CHAR_LIMITS and tag and tag[1] != "zh" and tag[1] in CHAR_LIMITS:
        cleaned = tag[1]
    if cleaned not in CHAR_LIMITS:
        raise Unprocessable(
            f"Unsupported language {code[:20]!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}.",
            extra={"supportedLanguages": list(SUPPORTED_LANGUAGES)})
    return cleaned
