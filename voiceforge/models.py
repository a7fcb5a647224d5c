"""SQLAlchemy models: the voice registry and its background jobs."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    event,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, object_session, relationship
from sqlalchemy.types import TypeDecorator

from voiceforge.db import db


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, stored in UTC and always read back timezone-aware in UTC.

    PostgreSQL keeps the zone; SQLite's DATETIME drops it, so a timestamp would come back naive there
    (and a just-changed row would answer `+00:00` where a reloaded one answers nothing). Same column
    type as `DateTime(timezone=True)`, so the migrations are unchanged.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a naive datetime cannot be stored ({value}); use an aware one")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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
    # A fine-tuned voice's own GPT weights (fp16, GPT only); None: the checkpoint's shared weights.
    weights_path: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    # Raised by one on every change of the row (see _bump_version): per-process caches key by (id, version),
    # so a change made by another instance sharing the database is seen at once.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")

    # Deleting a voice deletes its jobs (the database cascades too).
    jobs: Mapped[list[Job]] = relationship(back_populates="voice", cascade="all, delete-orphan",
                                           passive_deletes=True)

    def __repr__(self) -> str:
        return f"<Voice {self.id} {self.status.value}>"


@event.listens_for(Voice, "before_update")
def _bump_version(_mapper: Any, _connection: Any, voice: Voice) -> None:
    """Every UPDATE of a voice row raises its version, in SQL (`version + 1`), so two instances that
    change the same row at once still end with distinct versions."""
    session = object_session(voice)
    # before_update also runs for rows marked dirty without a net change: those keep their version.
    if session is not None and session.is_modified(voice, include_collections=False):
        voice.version = Voice.version + 1


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


# The states in which a job holds its voice (the SQL of JobState.queued and .running, as stored).
ACTIVE_STATES = text("state IN ('queued', 'running')")


class Job(db.Model):
    """A background job (fine-tuning a voice); the table is the source of truth for its state.

    A runner owns a running job through a lease (`lease_owner`, `lease_expires_at`) that it renews
    by heartbeat; a job whose lease expired is claimed again and resumes from its checkpoint.
    """

    __tablename__ = "jobs"
    # At most one queued or running job per voice, held by the database: the API's check and its insert
    # are separate statements, so two requests at once could both pass the check (two trainers would
    # then write one voice's weights). Partial unique indexes exist on SQLite and PostgreSQL alike.
    __table_args__ = (Index("uq_jobs_active_voice", "voice_id", unique=True,
                            sqlite_where=ACTIVE_STATES, postgresql_where=ACTIVE_STATES),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    voice_id: Mapped[str] = mapped_column(String(64), ForeignKey("voices.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="finetune")
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, name="job_state", native_enum=False, length=16, validate_strings=True), index=True)
    params: Mapped[dict] = mapped_column(JSON, default=dict)  # epochs, learning rate, samples' texts…
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    loss: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    dataset_seconds: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    voice: Mapped[Voice] = relationship(back_populates="jobs")

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.voice_id} {self.state.value}>"
