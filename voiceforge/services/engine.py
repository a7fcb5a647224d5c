"""The XTTS-v2 holder: one model per process, loaded lazily; speech goes through its batching decoder."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceforge.decoding.threads import on_passing_thread
from voiceforge.errors import Busy, ServiceUnavailable, Unprocessable

if TYPE_CHECKING:
    from voiceforge.decoding.scheduler import BatchScheduler, Utterance
    from voiceforge.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_RATE = 24000  # XTTS-v2 vocoder output
CONDITIONING_RATE = 22050  # XTTS-v2 conditioning input
CHECKPOINT_FILES = ("config.json", "model.pth", "vocab.json")
# Vocoder windows, in audio tokens (about 46 ms of audio each at speed 1). Streaming: a small
# first window so audio starts early (about 0.35 s), then each window twice the last, up to about
# 3 s; a stream's later chunks are decoded while earlier ones play, so they start at the full
# window. A whole response uses windows of about 4.5 s. Every window has a bounded cost, and fewer,
# bigger windows re-vocode less context (voiceforge/decoding/vocoder.py).
STREAM_FIRST_WINDOW_TOKENS = 8
STREAM_WINDOW_TOKENS = 64
WHOLE_WINDOW_TOKENS = 96
HOW_TO_PROVIDE = (
    "Set VOICEFORGE_MODEL_DIR to an XTTS-v2 checkpoint directory (config.json, model.pth, vocab.json, "
    "speakers_xtts.pth), or accept the Coqui Public Model License with COQUI_TOS_AGREED=1 so the "
    "service can download the official xtts_v2 (`flask --app voiceforge model download`)."
)


@dataclass(frozen=True)
class Latents:
    """A voice for XTTS: the GPT conditioning latent and the speaker embedding (torch tensors, CPU)."""

    gpt_cond_latent: Any
    speaker_embedding: Any

    def to_bytes(self) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save({"gpt_cond_latent": self.gpt_cond_latent.cpu().contiguous(),
                    "speaker_embedding": self.speaker_embedding.cpu().contiguous()}, buffer)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> Latents:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
        return cls(data["gpt_cond_latent"], data["speaker_embedding"])


@dataclass(frozen=True)
class Sampling:
    """How XTTS picks audio tokens; `greedy` makes identical requests give identical audio."""

    greedy: bool
    # The official xtts_v2 config.json's values (model.inference's own defaults differ).
    temperature: float = 0.75
    top_p: float = 0.85
    top_k: int = 50
    repetition_penalty: float = 5.0


@dataclass(frozen=True)
class EngineSettings:
    model_dir: str | None
    model_name: str
    device: str
    queue_size: int
    finetuned_cache: int = 2  # fine-tuned voices' GPT weights kept resident
    max_batch: int = 8  # sequences decoded together (rows of the key/value cache)
    decoder_dtype: str = "float32"  # the GPT's dtype while decoding (bfloat16; float16 on CUDA only)
    vocoder_dtype: str = "float32"  # HiFiGAN's dtype while decoding (the same choices)
    cpu_matmul: str = "onednn"  # how a CPU decoder multiplies by the GPT's weights (decoding/matmul.py)
    cuda_graphs: bool = True  # capture the decoding step in CUDA graphs (CUDA only)
    cuda_step: str = "auto"  # a CUDA step in PyTorch's kernels, fused Triton ones, or both (cuda_step.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineSettings:
        return cls(model_dir=settings.model_dir, model_name=settings.model_name, device=settings.device,
                   queue_size=settings.inference_queue_size, finetuned_cache=settings.finetuned_cache,
                   max_batch=settings.max_batch, decoder_dtype=settings.decoder_dtype,
                   vocoder_dtype=settings.vocoder_dtype, cpu_matmul=settings.cpu_matmul,
                   cuda_graphs=settings.cuda_graphs, cuda_step=settings.cuda_step)


class Engine:
    """Owns one XTTS-v2 model, loaded on first use; model calls run one at a time (the decoder batches)."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._model: Any = None
        self._device: str | None = None
        self._source: str | None = None
        self._load_lock = threading.Lock()
        # The model is not safe to call from two threads at once (mixed or broken audio).
        self._model_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, settings.queue_size))
        self._speakers: dict[str, Latents] | None = None
        self._load_error: str | None = None  # why the last load failed; cleared by a good load
        self._gpt_weights: Any = None  # GptWeights: swaps fine-tuned voices' GPT in, under _model_lock
        self._decoder: BatchScheduler | None = None  # built on first synthesis, after the model
        self._decoder_error: str | None = None  # why the last build of the decoder failed

    # -- state -------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def describe(self) -> dict[str, Any]:
        """What /readyz and `flask model info` report; never loads the model or downloads anything.

        `loadable` is true when the model is loaded or can be loaded on first use; otherwise
        `problem` holds the same advice that /api/tts would answer with. Once the decoder is built,
        `decoding` says how it runs (a bf16 setting on a CPU without native bf16 shows float32).
        """
        source = self._source or self.settings.model_dir or self.settings.model_name
        problem = self.problem()
        described = {"loaded": self.loaded, "loadable": problem is None, "device": self._device,
                     "source": source}
        if self._decoder is not None:  # built at the first synthesis: the precision really in use
            described["decoding"] = self._decoder.describe()
        return described if problem is None else {**described, "problem": problem}

    # -- loading -----------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    def load(self) -> None:
        """Load the checkpoint (idempotent, thread-safe); 503 with instructions when there is none."""
        with self._load_lock:
            if self._model is not None:
                return
            checkpoint = self.resolve_checkpoint()
            started = time.perf_counter()
            try:
                # Not on this (request) thread, which lives on: see decoding/threads.py.
                model, device = on_passing_thread(load_xtts, checkpoint, self.settings.device)
            except ServiceUnavailable:
                raise
            except Exception as error:
                log.exception("loading XTTS-v2 from %s failed", checkpoint)
                self._load_error = (f"The XTTS-v2 model at {checkpoint} could not be loaded "
                                    f"({first_line(error)}). " + HOW_TO_PROVIDE)
                raise ServiceUnavailable(self._load_error) from error
            self._model, self._device, self._source = model, device, str(checkpoint)
            self._load_error = None
            log.info("XTTS-v2 loaded from %s on %s in %.1f s", checkpoint, device,
                     time.perf_counter() - started)

    def problem(self) -> str | None:
        """Why the model cannot be provided, checked without loading or downloading it; None if it can.

        Checks, in order: a decoder that did not fit in memory, a failed load of the same checkpoint,
        CUDA asked for but absent, and the checkpoint itself (files in VOICEFORGE_MODEL_DIR, or licence
        consent for the download).
        """
        if self._decoder_error:  # the model loaded, but its decoder does not fit
            return self._decoder_error
        if self.loaded:
            return None
        if self._load_error:
            return self._load_error
        try:
            if self.settings.device.startswith("cuda"):
                choose_device(self.settings.device)  # imports torch, but only for a CUDA setting
            if self.settings.model_dir is None and os.environ.get("COQUI_TOS_AGREED") == "1":
                return None  # the official model downloads on first use
            self.resolve_checkpoint()
        except ServiceUnavailable as error:
            return error.detail
        return None

    def resolve_checkpoint(self) -> Path:
        """The checkpoint directory: VOICEFORGE_MODEL_DIR, else the official model once licensed."""
        if self.settings.model_dir:
            directory = Path(self.settings.model_dir)
            missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
            if missing:
                raise ServiceUnavailable(
                    f"VOICEFORGE_MODEL_DIR={directory} has no {', '.join(missing)}. " + HOW_TO_PROVIDE)
            return directory
        if os.environ.get("COQUI_TOS_AGREED") != "1":
            raise ServiceUnavailable("No XTTS-v2 model is configured. " + HOW_TO_PROVIDE)
        return download_official(self.settings.model_name)

    # -- voices ------------------------------------------------------------------------------
    def speaker_names(self, *, load: bool) -> list[str]:
        """Built-in speakers shipped in the checkpoint (speakers_xtts.pth), in the file's order.

        With load=False nothing is loaded or downloaded: the names come from VOICEFORGE_MODEL_DIR or
        the loaded model, else the list is empty. With load=True the model is loaded first.
        """
        if load:
            self.load()
        if self._speakers is None and (self.loaded or self.settings.model_dir):
            try:
                self._speakers = read_speakers(Path(self._source or self.settings.model_dir or ""))
            except (OSError, RuntimeError) as error:
                log.warning("cannot read built-in speakers: %s", error)
                return []
        return list(self._speakers or {})

    def speaker_latents(self, name: str) -> Latents | None:
        """Latents of a built-in speaker (loads the model: it is needed to speak anyway)."""
        self.speaker_names(load=True)
        return (self._speakers or {}).get(name)

    def use_weights(self, model: Any, weights: str | None) -> None:
        """Put a voice's GPT weights in place (None: the checkpoint's). Call with _model_lock held."""
        if self._gpt_weights is None:
            if weights is None:
                return  # nothing was ever swapped: the base weights are in place
            from voiceforge.finetune.weights import GptWeights

            self._gpt_weights = GptWeights(self.settings.finetuned_cache)
        self._gpt_weights.activate(model, weights)

    def compute_latents(self, samples: np.ndarray, weights: str | None = None) -> Latents:
        """Conditioning latents of a mono float32 reference at 22.05 kHz (done once per voice).

        `weights`: a fine-tuned GPT, whose conditioning encoder was trained too.
        """
        import torch

        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).unsqueeze(0)
        model = self.model

        def conditioning() -> Latents:
            with torch.inference_mode():
                self.use_weights(model, weights)
                gpt_cond_latent = model.get_gpt_cond_latents(audio, CONDITIONING_RATE)
                speaker_embedding = model.get_speaker_embedding(audio, CONDITIONING_RATE)
            return Latents(gpt_cond_latent.detach().cpu(), speaker_embedding.detach().cpu())

        with self._model_lock:
            return on_passing_thread(conditioning)  # not on this request thread: decoding/threads.py

    def check_latents(self, latents: Latents) -> None:
        """ValueError saying why a voice's latents cannot speak with this model (loads the model).

        A file can load and still be unusable: made for another checkpoint (VOICEFORGE_MODEL_DIR
        changed), overwritten with other tensors, or holding NaN. Refused here, it fails its own
        request with a 409 instead of failing inside the decoder, next to other requests' rows.
        """
        import torch

        args = self.model.args
        latent, speaker = latents.gpt_cond_latent, latents.speaker_embedding
        for name, tensor in (("gpt_cond_latent", latent), ("speaker_embedding", speaker)):
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
                raise ValueError(f"{name} is not a floating-point tensor")
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} holds NaN or infinite values")
        # XTTS-v2's perceiver resampler makes 32 conditioning latents; its speaker encoder one d-vector.
        for name, tensor, shape in (("gpt_cond_latent", latent, (1, 32, args.gpt_n_model_channels)),
                                    ("speaker_embedding", speaker, (1, args.d_vector_dim, 1))):
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(tensor.shape)}; this model's is {shape}")

    # -- synthesis ---------------------------------------------------------------------------
    def text_tokens(self, text: str, language: str) -> list[int]:
        """The text tokens XTTS reads for `text`; 422 for text its number expansion cannot read aloud.

        Runs XTTS's own tokenizer (number expansion included), which is cheap and thread-safe.
        """
        try:
            return self.model.tokenizer.encode(text.strip().lower(), lang=language.split("-")[0])
        except UNREADABLE as error:
            raise unspeakable(language, error) from error

    def too_long(self, text: str, language: str) -> bool:
        """Whether the model would refuse `text` as too many text tokens (numbers spelt out count)."""
        return len(self.text_tokens(text, language)) >= self.model.args.gpt_max_text_tokens

    def check_text(self, text: str, language: str) -> list[int]:
        """The chunk's text tokens; 422 now, before any audio exists, for one the model would refuse."""
        tokens = self.text_tokens(text, language)
        if len(tokens) >= self.model.args.gpt_max_text_tokens:  # XTTS asserts past 400 text tokens
            raise Unprocessable("A sentence is too long for the model; add punctuation.")
        return tokens

    def speak(self, texts: list[str], language: str, latents: Latents, sampling: Sampling, speed: float = 1.0,
              weights: str | None = None, *, streaming: bool = False,
              continuing: bool = False) -> list[Utterance]:
        """Hand every chunk of a request to the decoder at once; their audio arrives on each Utterance.

        The chunks are decoded together (and with other requests' chunks): continuous batching.
        Text the model's tokenizer refuses raises 422 here, before anything is queued. `streaming`
        vocodes in windows of up to STREAM_WINDOW_TOKENS, the first chunk's growing from a small
        one so audio can start early (unless `continuing` a stream that has started); otherwise in
        windows of WHOLE_WINDOW_TOKENS. Cancel the utterances of a request that is abandoned.
        """
        import torch

        from voiceforge.decoding.scheduler import Utterance

        token_lists = [torch.IntTensor(self.check_text(text, language)) for text in texts]
        window = STREAM_WINDOW_TOKENS if streaming else WHOLE_WINDOW_TOKENS
        decoder = self.decoder()
        utterances = []
        for index, tokens in enumerate(token_lists):
            opens = index == 0 and not continuing  # the request's first sentence
            first_window = STREAM_FIRST_WINDOW_TOKENS if streaming and opens else window
            utterances.append(decoder.submit(Utterance(
                tokens, latents.gpt_cond_latent, latents.speaker_embedding, sampling, speed, weights,
                first_window=first_window, window=window, opens=opens)))
        return utterances

    def synthesize(self, text: str, language: str, latents: Latents, sampling: Sampling,
                   speed: float = 1.0, weights: str | None = None) -> np.ndarray:
        """Speak one chunk of text (under the language's limit): float32 mono at 24 kHz."""
        (utterance,) = self.speak([text], language, latents, sampling, speed, weights)
        try:
            return utterance.audio()
        finally:
            utterance.cancel()

    def stream(self, text: str, language: str, latents: Latents, sampling: Sampling, speed: float = 1.0,
               weights: str | None = None) -> Iterator[np.ndarray]:
        """Speak one chunk of text as audio pieces (0.35 s, then each twice the last up to 3 s) as decoded.

        Closing the iterator (a client that disconnects) drops the chunk from the decoder at its next step.
        """
        (utterance,) = self.speak([text], language, latents, sampling, speed, weights, streaming=True)
        try:
            yield from utterance.pieces()
        finally:
            utterance.cancel()

    def decoder(self) -> BatchScheduler:
        """The continuous-batching decoder that owns the model's generation (built on first use).

        On CUDA its step is captured in CUDA graphs first (a few seconds, once per process).
        """
        if self._decoder is None:
            model = self.model
            with self._load_lock:
                if self._decoder is None:
                    self._decoder = self._build_decoder_or_explain(model)
        return self._decoder

    def _build_decoder_or_explain(self, model: Any) -> BatchScheduler:
        """The decoder; if its key/value cache does not fit in memory, a 503 that says what to lower
        (and /readyz reports it until a build succeeds: the next request tries again)."""
        try:
            # Built by torch operators: not on this (request) thread, which lives on (decoding/threads.py).
            decoder = on_passing_thread(self._build_decoder, model)
        except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
            if not out_of_memory(error):
                raise
            from voiceforge.decoding.gpt import cache_bytes

            dtype = self._fast_dtype("DECODER_DTYPE", self.settings.decoder_dtype) or next(
                model.gpt.parameters()).dtype
            rows = self.settings.max_batch
            self._decoder_error = (
                f"The decoder's key/value cache for VOICEFORGE_MAX_BATCH={rows} rows "
                f"({cache_bytes(model, rows, dtype) / 1e9:.1f} GB) does not fit in the {self._device} "
                f"memory left beside the model ({first_line(error)}): lower VOICEFORGE_MAX_BATCH.")
            log.error("%s", self._decoder_error)
            raise ServiceUnavailable(self._decoder_error) from None
        self._decoder_error = None
        return decoder

    def _build_decoder(self, model: Any) -> BatchScheduler:
        import torch

        from voiceforge.decoding.gpt import GptDecoder
        from voiceforge.decoding.scheduler import BatchScheduler

        dtype = self._fast_dtype("DECODER_DTYPE", self.settings.decoder_dtype)
        vocoder_dtype = self._fast_dtype("VOCODER_DTYPE", self.settings.vocoder_dtype)
        started = time.perf_counter()
        with self._model_lock, torch.inference_mode():
            self.use_weights(model, None)  # built from the base weights: no refresh before a first step
            gpt = GptDecoder(model, self.settings.max_batch, dtype=dtype,
                             cpu_matmul_kind=self.settings.cpu_matmul)
            on_cuda = gpt.device.type == "cuda"
            step_runner, kernels = self._cuda_step(gpt) if on_cuda else (None, "torch")
        scheduler = BatchScheduler(model, self._model_lock, lambda weights: self.use_weights(model, weights),
                                   decoder=gpt, step_runner=step_runner, step_kernels=kernels,
                                   cuda_graphs=on_cuda and self.settings.cuda_graphs,
                                   decoder_has_base_weights=True, vocoder_dtype=vocoder_dtype)
        log.info("decoder ready in %.1f s: %s", time.perf_counter() - started, scheduler.describe())
        return scheduler

    def _cuda_step(self, gpt: Any) -> tuple[Any, str]:
        """How a CUDA decoder steps (decoding/cuda_step.py), replayed from CUDA graphs; and whose kernels."""
        from voiceforge.decoding.cuda_graphs import GraphedStep
        from voiceforge.decoding.cuda_step import choose_step

        step, lengths, kernels = choose_step(gpt, self.settings.cuda_step)
        if not self.settings.cuda_graphs:
            return step, kernels
        graphed = GraphedStep(gpt, step=step, length_buckets=lengths)
        graphed.capture()  # under the model lock: nothing else may launch work during a capture
        return graphed.step, kernels

    def _fast_dtype(self, setting: str, name: str) -> Any:
        """The torch dtype a precision setting asks for; None (float32) where it would not be faster."""
        import torch

        dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
        if self._device == "cpu" and dtype is not None and (dtype == torch.float16 or not cpu_has_bfloat16()):
            # Without native arithmetic half precision is emulated: slower than float32, not faster.
            log.warning("VOICEFORGE_%s=%s is not fast on this CPU (bfloat16 needs AVX512-BF16 or AMX; "
                        "float16 is for CUDA): using float32", setting, name)
            return None
        return dtype

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """A place in the bounded queue for one request's model calls; 503 + Retry-After when full.

        Held for the whole request, so a long text is never turned away between its sentences.
        """
        if not self._slots.acquire(blocking=False):
            raise Busy("The speech engine is busy with other requests; retry shortly.", retry_after=2)
        try:
            yield
        finally:
            self._slots.release()


# What coqui's number expansion (num2words) raises for text it cannot read: NotImplementedError for
# gaps (digits in hi, ordinals in cs), OverflowError for numbers past its range (10^27 in es),
# KeyError for holes in its tables (five decimals in hu).
UNREADABLE = (NotImplementedError, ArithmeticError, LookupError)


def unspeakable(language: str, error: Exception) -> Unprocessable:
    """The text's fault, not ours: 422 saying what to change.

    Only a NotImplementedError's own message is shown (the others' name a dictionary key or
    a 28-digit bound in the language's words), and coqui often raises it bare.
    """
    if isinstance(error, OverflowError):
        reason = "one of its numbers is too large to read aloud"
    elif isinstance(error, NotImplementedError) and str(error).strip():
        reason = first_line(error)
    else:
        reason = "the model cannot read its numbers, ordinals or symbols aloud in this language"
    return Unprocessable(f"This text cannot be spoken in {language!r}: {reason}; "
                         "spell out numbers and symbols in words.")


def _not_the_token_id_notice(record: logging.LogRecord) -> bool:
    """False for transformers' warning that a config's special token ids lie outside its vocabulary.

    coqui builds XTTS's GPT-2 configs with small vocabularies and GPT-2's default bos/eos id 50256,
    so every load of any XTTS-v2 (the official one included) logs it; XTTS never uses those ids (it
    has its own start and stop tokens), so it tells an operator nothing to act on.
    """
    return "must be `None` or an integer within the vocabulary" not in record.getMessage()


def load_xtts(checkpoint: Path, device_setting: str) -> tuple[Any, str]:
    """Build XTTS-v2 from a release-layout directory, exactly as for the official model."""
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    from voiceforge.decoding.hifigan import strip_weight_norm

    device = choose_device(device_setting)
    # coqui's tokenizer logs the start of over-long text at WARNING; the text to speak stays private.
    logging.getLogger("TTS.tts.layers.xtts.tokenizer").setLevel(logging.ERROR)
    transformers_config = logging.getLogger("transformers.configuration_utils")
    if _not_the_token_id_notice not in transformers_config.filters:
        transformers_config.addFilter(_not_the_token_id_notice)
    config = XttsConfig()
    config.load_json(str(checkpoint / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(checkpoint), use_deepspeed=False, eval=True)
    # Only the GPT is ever fine-tuned or swapped, so the vocoder's weights can be fixed once.
    strip_weight_norm(model.hifigan_decoder.waveform_decoder)
    model.to(torch.device(device))
    return model, device


def cpu_has_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): only then is it faster."""
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def choose_device(setting: str) -> str:
    """`auto` picks CUDA when present; asking for CUDA without it is a configuration error."""
    import torch

    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ServiceUnavailable(f"VOICEFORGE_DEVICE={setting} but CUDA is not available; use auto or cpu.")
    return setting


def read_speakers(checkpoint: Path) -> dict[str, Latents]:
    """Built-in speakers from speakers_xtts.pth (name -> latents); empty when the file is absent."""
    import torch

    path = checkpoint / "speakers_xtts.pth"
    if not path.is_file():
        return {}
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {name: Latents(item["gpt_cond_latent"], item["speaker_embedding"]) for name, item in data.items()}


def out_of_memory(error: BaseException) -> bool:
    """An allocation failure: CUDA's caching allocator (torch.OutOfMemoryError) or the CPU's."""
    text = str(error)
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


def first_line(error: BaseException) -> str:
    """An exception as one short line for an error's detail (torch's can run to twenty lines)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0][:200] + (" …" if len(lines) > 1 or len(lines[0]) > 200 else "")


def download_official(model_name: str, *, progress: bool = False) -> Path:
    """Fetch (or find in the cache) the official model through coqui-tts's model manager."""
    from TTS.utils.manage import ModelManager

    try:
        model_path, _config_path, _item = ModelManager(progress_bar=progress).download_model(model_name)
    except Exception as error:
        # One line: the reason is in the error's detail; the traceback helps only when debugging.
        log.error("downloading %s failed: %s", model_name, first_line(error))
        log.debug("the download's traceback", exc_info=True)
        raise ServiceUnavailable(f"Could not download {model_name} ({first_line(error)}). Check the network "
                                 "(the files come from huggingface.co), or set VOICEFORGE_MODEL_DIR to a "
                                 "checkpoint directory copied here.") from error
    path = Path(model_path)
    return path if path.is_dir() else path.parent
