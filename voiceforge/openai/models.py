"""The model names /v1 accepts and lists; every one speaks with the same XTTS-v2 engine."""

from __future__ import annotations

from typing import Any

# OpenAI's speech models and snapshots (so existing code runs unchanged), then our own names.
MODEL_NAMES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20",
               "gpt-4o-mini-tts-2025-12-15", "xtts-v2", "voiceforge")
# A fixed creation time (XTTS-v2's release, 2023-11-06 UTC), so the list is the same on every server.
CREATED = 1699228800


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "voiceforge"}
