"""Marshmallow schemas of the HTTP API (camelCase on the wire, unknown fields ignored)."""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, fields, validate

from voiceforge.audio.encode import FORMATS
from voiceforge.config import MAX_EPOCHS
from voiceforge.services.languages import ALIASES, SUPPORTED_LANGUAGES

# What the document promises about values the services check themselves (with their own clearer
# messages and status codes): the OpenAPI document must not allow what the server refuses.
SPEAKABLE_TEXT = {"minLength": 1, "pattern": r"[0-9A-Za-z\u00C0-\uFFFF]"}
DATA_URI = {"pattern": "^[ \t\n\r\f]*[Dd][Aa][Tt][Aa]:"}
LANGUAGE_CODES = {"enum": [*SUPPORTED_LANGUAGES, *ALIASES, None]}  # None: not given


class RequestSchema(Schema):
    """Base of request bodies: the web app may send extra fields, which are ignored."""

    class Meta:
        unknown = EXCLUDE


class Number(fields.Float):
    """A JSON number, and only that: marshmallow's Float also reads "1.5", which the API documents as a
    wrong type (400), as it does true (epochs is strict the same way)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, str):
            raise self.make_error("invalid", input=value)
        return super()._deserialize(value, attr, data, **kwargs)


NAME_BOUND = 1000  # characters of a voice name a request may send (the name itself: at most 100, trimmed)


class StrictBoolean(fields.Boolean):
    """true or false, and only that: marshmallow's Boolean also reads "yes", "1" or 1, which the API
    documents as a wrong type (400), as it does for numbers."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class TtsRequestSchema(RequestSchema):
    text = fields.String(required=True, metadata={
        "description": "Text to speak: at least one letter or digit once invisible characters, controls "
                       "and emoji are dropped.", **SPEAKABLE_TEXT})
    voiceId = fields.String(required=True, validate=validate.Length(min=1, max=200), metadata={
        "description": "A cloned voice's id, or `default-…` for a built-in voice."})
    speed = Number(load_default=1.0, validate=validate.Range(min=0.5, max=2.0),
                         metadata={"description": "Speaking rate, 0.5–2.0."})
    variability = Number(load_default=0.5, validate=validate.Range(min=0.0, max=1.0), metadata={
        "description": "0 = deterministic, 0.5 = the model's default sampling, 1 = most varied."})
    language = fields.String(load_default=None, validate=validate.Length(min=2, max=10), metadata={
        "description": "XTTS language code (en, ru, zh-cn, …; `zh` means zh-cn); default: the voice's, "
                       "then the server's.", **LANGUAGE_CODES})


    format = fields.String(load_default="wav", validate=validate.OneOf(list(FORMATS)), metadata={
        "description": "Audio format: wav (default), mp3, opus (Ogg), aac (ADTS), flac, or pcm (raw 16-bit "
                       "little-endian mono at 24 kHz). The data URI or Content-Type carries its MIME type."})


class TtsResponseSchema(Schema):
    audioDataUri = fields.String(required=True, metadata={
        "description": "data:audio/wav;base64,… (mono 16-bit PCM, 24 kHz), or the requested format's "
                       "MIME type."})


FINETUNE_MAX_SAMPLES = 50


class SampleSchema(RequestSchema):
    audioDataUri = fields.String(required=True, metadata={
        "description": "data:<audio mime>;base64,<data>: an extra recording of the same voice.", **DATA_URI})
    text = fields.String(load_default=None, validate=validate.Length(min=1, max=2000), metadata={
        "description": "What the recording says. Needed, with at most 11 s of speech, unless the server "
                       "has speech recognition (VOICEFORGE_ASR_MODEL)."})


class FineTuneFieldsMixin:
    samples = fields.List(fields.Nested(SampleSchema), load_default=list,
                          validate=validate.Length(max=FINETUNE_MAX_SAMPLES), metadata={
                              "description": f"Extra recordings (at most {FINETUNE_MAX_SAMPLES})."})
    # strict: 2.5 epochs is refused, not cut to 2.
    epochs = fields.Integer(
        load_default=None, strict=True, validate=validate.Range(min=1, max=MAX_EPOCHS),
        metadata={"description": f"Training epochs, 1-{MAX_EPOCHS} (default: the server's, 10)."})


class TrainVoiceRequestSchema(FineTuneFieldsMixin, RequestSchema):
    # The 100-character limit counts after trimming and NFC (voices.clean_name); this bound only keeps a
    # huge name out of the error messages.
    modelName = fields.String(required=True, validate=validate.Length(min=1, max=NAME_BOUND),
                              metadata={"description": "Display name of the voice (at most 100 characters "
                                                       "once trimmed)."})
    audioDataUri = fields.String(required=True, metadata={
        "description": "data:<audio mime>;base64,<data>: wav, mp3, ogg, webm, m4a or flac, ≥ 3 s of speech.",
        **DATA_URI})
    language = fields.String(load_default=None, validate=validate.Length(min=2, max=10), metadata={
        "description": "The voice's language (default: server's).", **LANGUAGE_CODES})
    fineTune = StrictBoolean(load_default=False, metadata={
        "description": "Also fine-tune XTTS on the recordings: the voice is usable at once (zero-shot) "
                       "and a job is queued (202)."})
    transcript = fields.String(load_default=None, validate=validate.Length(min=1, max=2000), metadata={
        "description": "With fineTune: what the main recording says."})


class TrainVoiceResponseSchema(Schema):
    trainingStatus = fields.String(required=True, metadata={
        "description": "`completed` (cloned, ready), or `queued` when a fine-tuning job was queued."})
    modelId = fields.String(required=True, metadata={"description": "The new voice's id (a voiceId)."})
    jobId = fields.String(metadata={"description": "With fineTune: the fine-tuning job's id."})


class FineTuneRequestSchema(FineTuneFieldsMixin, RequestSchema):
    pass


class JobIdSchema(Schema):
    jobId = fields.String(required=True)


class JobSchema(Schema):
    id = fields.String(required=True)
    voiceId = fields.String(attribute="voice_id", required=True)
    kind = fields.String(required=True, metadata={"enum": ["finetune"]})
    state = fields.Function(lambda job: job.state.value, metadata={
        "enum": ["queued", "running", "succeeded", "failed", "cancelled"]})
    progress = fields.Float(required=True, metadata={"description": "0..1"})
    epoch = fields.Integer()
    epochs = fields.Integer()
    step = fields.Integer()
    steps = fields.Integer()
    loss = fields.Float(allow_none=True)
    message = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    attempts = fields.Integer()
    datasetSeconds = fields.Float(attribute="dataset_seconds", allow_none=True)
    createdAt = fields.DateTime(attribute="created_at")
    startedAt = fields.DateTime(attribute="started_at", allow_none=True)
    finishedAt = fields.DateTime(attribute="finished_at", allow_none=True)


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)


class JobQuerySchema(Schema):
    voiceId = fields.String(load_default=None)
    state = fields.String(load_default=None, validate=validate.OneOf(
        ["queued", "running", "succeeded", "failed", "cancelled"]))
    # Jobs accumulate (one per fine-tuning, kept as history): a poller asks for the newest few only.
    limit = fields.Integer(load_default=None, validate=validate.Range(1, 1000))


class FineTuningStateSchema(Schema):
    state = fields.String(required=True, metadata={
        "enum": ["not_started", "queued", "running", "succeeded", "failed", "cancelled"]})
    progress = fields.Float()
    message = fields.String(allow_none=True)
    jobId = fields.String()


class VoiceSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    speaker = fields.String(metadata={
        "description": "Built-in voices only: the checkpoint speaker that speaks for this id."})
    language = fields.String(allow_none=True)
    kind = fields.Function(lambda v: v.kind.value, metadata={"enum": ["builtin", "cloned", "finetuned"]})
    status = fields.Function(lambda v: v.status.value,
                             metadata={"enum": ["pending", "processing", "ready", "failed"]})
    error = fields.String(allow_none=True)
    createdAt = fields.DateTime(attribute="created_at", allow_none=True)
    updatedAt = fields.DateTime(attribute="updated_at", allow_none=True)


class VoiceDetailSchema(VoiceSchema):
    fineTuning = fields.Nested(FineTuningStateSchema, attribute="fine_tuning", metadata={
        "description": "The latest fine-tuning job of a cloned voice, or {\"state\": \"not_started\"}."})


class VoiceListSchema(Schema):
    voices = fields.List(fields.Nested(VoiceSchema), required=True)


class VoiceRenameSchema(RequestSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=NAME_BOUND))


class ErrorSchema(Schema):
    detail = fields.String(required=True, metadata={"description": "Human-readable explanation."})
    code = fields.String(required=True, metadata={"description": "Stable machine-readable code."})
    errors = fields.Dict(metadata={"description": "Field errors, by location and field."})
    # The extras domain errors add (services/languages.py, services/synthesis.py): the document
    # forbids undeclared properties, so each must be declared here to describe answers truthfully.
    supportedLanguages = fields.List(fields.String(), metadata={
        "description": "With an unsupported language (422): the language codes this server speaks."})
    status = fields.String(metadata={
        "description": "With a voice that is not ready (409): its status.",
        "enum": ["pending", "processing", "ready", "failed"]})


class HealthSchema(Schema):
    status = fields.String(required=True)


class DecodingStateSchema(Schema):
    rows = fields.Integer(required=True, metadata={"description": "Sentences decoded together."})
    gptDtype = fields.String(required=True, metadata={"description": "The GPT's precision in use."})
    vocoderDtype = fields.String(required=True, metadata={"description": "HiFiGAN's precision in use."})
    matmul = fields.String(required=True, metadata={"enum": ["onednn", "reference"]})
    cudaGraphs = fields.Boolean(required=True, metadata={"description": "Steps replay CUDA graphs."})
    stepKernels = fields.String(required=True, metadata={
        "enum": ["torch", "triton", "triton-one-row"],
        "description": "A CUDA step in PyTorch's kernels, fused Triton ones, or Triton's for one row only."})


class ModelStateSchema(Schema):
    loaded = fields.Boolean(required=True, metadata={"description": "The model is in memory."})
    loadable = fields.Boolean(required=True, metadata={
        "description": "Loaded, or can be loaded on first use (the checks read files only)."})
    device = fields.String(allow_none=True, metadata={"description": "Where it runs, once loaded."})
    source = fields.String(required=True, metadata={"description": "Checkpoint directory or model name."})
    problem = fields.String(metadata={"description": "Why no model can be provided, and how to fix it."})
    decoding = fields.Nested(DecodingStateSchema, metadata={
        "description": "How the decoder runs, after any fallback (once the first synthesis built it)."})


class JobsStateSchema(Schema):
    backend = fields.String(required=True, metadata={"enum": ["db", "celery"]})
    canRun = fields.Boolean(required=True, metadata={
        "description": "Fine-tuning jobs can run with this model (checked from files, nothing loaded)."})
    problem = fields.String(metadata={"description": "Why they cannot, and how to fix it."})


class ReadySchema(Schema):
    status = fields.String(required=True, metadata={"description": "`ready` or `unavailable`."})
    database = fields.String(required=True)
    storage = fields.String(required=True, metadata={
        "description": "`ok`; `missing` when voices are registered but the data directory is not there; "
                       "`unknown` while the database is not `ok`."})
    model = fields.Nested(ModelStateSchema, required=True)
    jobs = fields.Nested(JobsStateSchema, required=True)
