"""SQLAlchemy models: the voice registry."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import DateTime, Enum, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from voiceforge.db import db


def utcnow() -> datetime:
    return datetime.now(UTC)


class VoiceKind(enum.StrEnum):
    builtin = "builtin"
    cloned = "cloned"
    finetuned = "finetuned"


class VoiceStatus(enum.StrEnum):
    pending = "pending"
    processing = "processing"
    ready = "ready"
    failed = "failed"


class Voice(db.Model):
    """A voice the service can speak with; files live under DATA_DIR/<id>/ (paths stored relative)."""

    __tablename__ = "voices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(8))
    kind: Mapped[VoiceKind] = mapped_column(
        Enum(VoiceKind, name="voice_kind", native_enum=False, length=16, validate_strings=True))
    status: Mapped[VoiceStatus] = mapped_column(
        Enum(VoiceStatus, name="voice_status", native_enum=False, length=16, validate_strings=True),
        index=True)
    reference_path: Mapped[str | None] = mapped_column(String(255))
    latents_path: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Voice {self.id} {self.status.value}>"
