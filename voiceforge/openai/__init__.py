"""An OpenAI-compatible speech API under /v1: its own API family, with OpenAI's error shape."""

from __future__ import annotations

from voiceforge.families import ApiFamily
from voiceforge.openai.errors import openai_error
from voiceforge.openai.views import blp


def openai_family() -> ApiFamily:
    """The /v1 family: the app's keys (as `Authorization: Bearer`) and CORS origins, OpenAI's errors."""
    return ApiFamily("openai", "/v1", blueprints={blp.name}, error_format=openai_error)


__all__ = ["blp", "openai_family"]
