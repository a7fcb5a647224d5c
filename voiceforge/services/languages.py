"""XTTS-v2 languages and the per-language text length above which quality drops."""

from __future__ import annotations

from voiceforge.errors import Unprocessable

# Characters per chunk before XTTS-v2 quality drops (coqui-tts tokenizer char_limits).
CHAR_LIMITS: dict[str, int] = {
    "en": 250, "de": 253, "fr": 273, "es": 239, "it": 213, "pt": 203, "pl": 224, "zh-cn": 82,
    "ar": 166, "cs": 186, "ru": 182, "nl": 251, "tr": 226, "ja": 71, "hu": 224, "ko": 95, "hi": 150,
}
SUPPORTED_LANGUAGES: tuple[str, ...] = tuple(CHAR_LIMITS)
ALIASES = {"zh": "zh-cn", "zh-hans": "zh-cn"}


def normalise_language(code: str) -> str:
    """Return the XTTS code for `code` (case-insensitive, `zh` accepted) or raise 422 with the list."""
    cleaned = code.strip().lower().replace("_", "-")
    cleaned = ALIASES.get(cleaned, cleaned)
    if cleaned not in CHAR_LIMITS:
        raise Unprocessable(
            f"Unsupported language {code[:20]!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}.",
            extra={"supportedLanguages": list(SUPPORTED_LANGUAGES)})
    return cleaned
