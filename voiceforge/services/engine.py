"""The XTTS-v2 holder: one model per process, loaded lazily, thread-safe, inference serialised."""

from __future__ import annotations

import io
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceforge.errors import Busy, ServiceUnavailable, Unprocessable

if TYPE_CHECKING:
    from voiceforge.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_RATE = 24000  # XTTS-v2 vocoder output
CONDITIONING_RATE = 22050  # XTTS-v2 conditioning input
CHECKPOINT_FILES = ("config.json", "model.pth", "vocab.json")
# Streaming: audio tokens in the first window (about 0.35 s of audio at speed 1, so audio starts
# early) and in each later one (about 1.5 s), decoder frames of context vocoded on each side of a
# window (256 samples each; 8 keep the streamed audio within one 16-bit step of the whole
# response's, and the vocoder's extra work at 16 / 139 frames), and the cross-fade between windows.
STREAM_FIRST_WINDOW_TOKENS = 8
STREAM_WINDOW_TOKENS = 32
STREAM_CONTEXT_FRAMES = 8
STREAM_CROSSFADE_SAMPLES = 512
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

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineSettings:
        return cls(model_dir=settings.model_dir, model_name=settings.model_name, device=settings.device,
                   queue_size=settings.inference_queue_size, finetuned_cache=settings.finetuned_cache)


class Engine:
    """Owns one XTTS-v2 model. Loading happens once, on first use; model calls run one at a time."""

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

    # -- state -------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def describe(self) -> dict[str, Any]:
        """What /readyz and `flask model info` report; never loads the model or downloads anything.

        `loadable` is true when the model is loaded or can be loaded on first use; otherwise
        `problem` holds the same advice that /api/tts would answer with.
        """
        source = self._source or self.settings.model_dir or self.settings.model_name
        problem = self.problem()
        described = {"loaded": self.loaded, "loadable": problem is None, "device": self._device,
                     "source": source}
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
                model, device = load_xtts(checkpoint, self.settings.device)
            except ServiceUnavailable:
                raise
            except Exception as error:
                log.exception("loading XTTS-v2 from %s failed", checkpoint)
                self._load_error = (f"The XTTS-v2 model at {checkpoint} could not be loaded ({error}). "
                                    + HOW_TO_PROVIDE)
                raise ServiceUnavailable(self._load_error) from error
            self._model, self._device, self._source = model, device, str(checkpoint)
            self._load_error = None
            log.info("XTTS-v2 loaded from %s on %s in %.1f s", checkpoint, device,
                     time.perf_counter() - started)

    def problem(self) -> str | None:
        """Why the model cannot be provided, checked without loading or downloading it; None if it can.

        Checks, in order: a failed load of the same checkpoint, CUDA asked for but absent, and the
        checkpoint itself (files in VOICEFORGE_MODEL_DIR, or licence consent for the download).
        """
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
        with self._model_lock, torch.inference_mode():
            self.use_weights(model, weights)
            gpt_cond_latent = model.get_gpt_cond_latents(audio, CONDITIONING_RATE)
            speaker_embedding = model.get_speaker_embedding(audio, CONDITIONING_RATE)
        return Latents(gpt_cond_latent.detach().cpu(), speaker_embedding.detach().cpu())

    # -- synthesis ---------------------------------------------------------------------------
    def check_text(self, text: str, language: str) -> None:
        """422 now, before any audio exists, for a chunk the model would refuse mid-synthesis.

        Runs XTTS's own tokenizer (number expansion included), which is cheap and thread-safe.
        """
        model = self.model
        try:
            tokens = model.tokenizer.encode(text.strip().lower(), lang=language.split("-")[0])
        except NotImplementedError as error:
            raise unspeakable(language, error) from error
        if len(tokens) >= model.args.gpt_max_text_tokens:
            raise Unprocessable("A sentence is too long for the model; add punctuation.")

    def synthesize(self, text: str, language: str, latents: Latents, sampling: Sampling,
                   speed: float = 1.0, weights: str | None = None) -> np.ndarray:
        """Speak one chunk of text (under the language's limit): float32 mono at 24 kHz."""
        import torch

        model = self.model
        with self._model_lock, torch.inference_mode():
            self.use_weights(model, weights)
            try:
                result = model.inference(
                    text, language, latents.gpt_cond_latent, latents.speaker_embedding,
                    temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                    repetition_penalty=sampling.repetition_penalty, do_sample=not sampling.greedy,
                    speed=speed, enable_text_splitting=False)
            except NotImplementedError as error:
                raise unspeakable(language, error) from error
            except AssertionError as error:
                # XTTS asserts when a chunk exceeds 400 text tokens.
                raise Unprocessable("A sentence is too long for the model; add punctuation.") from error
        wav = result["wav"]
        wav = wav.numpy() if hasattr(wav, "numpy") else np.asarray(wav)
        return wav.astype(np.float32, copy=False).reshape(-1)

    def stream(self, text: str, language: str, latents: Latents, sampling: Sampling, speed: float = 1.0,
               weights: str | None = None, *, window: int = STREAM_WINDOW_TOKENS) -> Iterator[np.ndarray]:
        """Speak one chunk of text as audio pieces of about `window` tokens each, as they are decoded.

        The model runs in a producer thread that holds the model lock for the whole chunk (XTTS's
        generation keeps state on the model, so two must never interleave), while the caller's
        thread only hands pieces on: a slow client never holds the model. Closing the iterator
        (a client that disconnects) stops the producer within one window.
        """
        pieces: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        model = self.model

        def produce() -> None:
            import torch

            try:
                with self._model_lock, torch.inference_mode():
                    self.use_weights(model, weights)
                    for piece in stream_chunk(model, text, language, latents, sampling, speed, window=window):
                        if stop.is_set():
                            return
                        pieces.put(piece)
            except NotImplementedError as error:
                pieces.put(unspeakable(language, error))
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
                pieces.put(error)
            finally:
                pieces.put(_DONE)

        producer = threading.Thread(target=produce, name="voiceforge-stream", daemon=True)
        producer.start()
        try:
            while (item := pieces.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            producer.join()

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


_DONE = object()  # end of a producer's pieces


def stream_chunk(model: Any, text: str, language: str, latents: Latents, sampling: Sampling,
                 speed: float, *, window: int = STREAM_WINDOW_TOKENS,
                 tokens: list[int] | None = None) -> Iterator[np.ndarray]:
    """Generate one chunk's audio tokens one by one and vocode them in bounded, cross-faded windows.

    Stock `inference_stream` re-runs HiFiGAN over every latent so far at each chunk (quadratic in
    the length) and ignores greedy decoding. Here the cheap part of the decoder (interpolating GPT
    latents to decoder frames, which must be done on one global grid or windows come out of phase)
    runs over the latents so far, and the expensive HiFiGAN convolutions run only over each
    window's new frames plus STREAM_CONTEXT_FRAMES on each side (more when speech is slowed down,
    where a token spans more frames and the interpolated edge moves further); the held-back edge is
    cross-faded with the next window's version of it. The first window is STREAM_FIRST_WINDOW_TOKENS
    long so audio starts early, later ones `window`. Greedy decoding samples with top_k=1, which
    picks exactly the tokens `model.inference` picks. Must run under the engine's model lock and
    torch.inference_mode(). When `tokens` is given, the audio tokens are appended to it.
    """
    import torch

    lang = language.split("-")[0]
    text_tokens = torch.IntTensor(model.tokenizer.encode(text.strip().lower(), lang=lang)).unsqueeze(0)
    text_tokens = text_tokens.to(model.device)
    speaker = latents.speaker_embedding.to(model.device)
    inputs = model.gpt.compute_embeddings(latents.gpt_cond_latent.to(model.device), text_tokens)
    generator = model.gpt.get_generator(
        fake_inputs=inputs, do_sample=True, top_k=1 if sampling.greedy else sampling.top_k,
        top_p=1.0 if sampling.greedy else sampling.top_p,
        temperature=1.0 if sampling.greedy else sampling.temperature,
        repetition_penalty=sampling.repetition_penalty, length_penalty=1.0, num_beams=1,
        num_return_sequences=1, output_attentions=False, output_hidden_states=True,
        return_dict_in_generate=True)
    decoder = model.hifigan_decoder
    hop = decoder.output_hop_length  # output samples per decoder frame (HiFiGAN upsamples by this)
    hidden: list[Any] = []
    emitted = 0  # decoder frames whose audio has been sent (the held-back edge excluded)
    tail: np.ndarray | None = None  # the last window's audio just past `emitted`, to cross-fade
    pending = STREAM_FIRST_WINDOW_TOKENS
    context = math.ceil(STREAM_CONTEXT_FRAMES * max(1.0, 1.0 / max(speed, 0.05)))
    finished = False
    while not finished:
        try:
            token, latent = next(generator)
            hidden.append(latent)
            if tokens is not None:
                tokens.append(int(token))
            pending -= 1
        except StopIteration:
            finished = True
        if not hidden or (not finished and pending > 0):
            continue
        pending = window
        frames = decoder_frames(model, torch.cat(hidden, dim=0)[None, :], speed)
        total = frames.shape[-1]
        end = total if finished else max(emitted, total - context)
        first = max(0, emitted - context)
        wav = decoder.waveform_decoder(frames[..., first:total], g=speaker).reshape(-1).float().cpu().numpy()
        piece = wav[(emitted - first) * hop:(end - first) * hop].copy()
        if tail is not None:
            fade = min(tail.size, piece.size)
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            piece[:fade] = tail[:fade] * (1.0 - ramp) + piece[:fade] * ramp
        tail = wav[(end - first) * hop:(end - first) * hop + STREAM_CROSSFADE_SAMPLES].copy()
        emitted = end
        if piece.size:
            yield piece


def decoder_frames(model: Any, gpt_latents: Any, speed: float) -> Any:
    """GPT latents (1, T, C) -> HiFiGAN input frames, exactly as `model.inference` then HifiDecoder do."""
    import torch.nn.functional as F

    decoder = model.hifigan_decoder
    length_scale = 1.0 / max(speed, 0.05)
    if length_scale != 1.0:
        gpt_latents = F.interpolate(gpt_latents.transpose(1, 2), scale_factor=length_scale,
                                    mode="linear").transpose(1, 2)
    frames = F.interpolate(gpt_latents.transpose(1, 2), mode="linear",
                           scale_factor=[decoder.ar_mel_length_compression / decoder.output_hop_length])
    if decoder.output_sample_rate != decoder.input_sample_rate:
        frames = F.interpolate(frames, scale_factor=[decoder.output_sample_rate / decoder.input_sample_rate],
                               mode="linear")
    return frames


def unspeakable(language: str, error: Exception) -> Unprocessable:
    """coqui's number expansion has gaps (digits in hi, ordinals in cs): the text's fault, not ours."""
    return Unprocessable(f"This text cannot be spoken in {language!r}: {error or 'unsupported'}; "
                         "spell out numbers and symbols.")


def load_xtts(checkpoint: Path, device_setting: str) -> tuple[Any, str]:
    """Build XTTS-v2 from a release-layout directory, exactly as for the official model."""
    import torch
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    device = choose_device(device_setting)
    # coqui's tokenizer logs the start of over-long text at WARNING; the text to speak stays private.
    logging.getLogger("TTS.tts.layers.xtts.tokenizer").setLevel(logging.ERROR)
    config = XttsConfig()
    config.load_json(str(checkpoint / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(checkpoint), use_deepspeed=False, eval=True)
    model.to(torch.device(device))
    return model, device


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


def download_official(model_name: str, *, progress: bool = False) -> Path:
    """Fetch (or find in the cache) the official model through coqui-tts's model manager."""
    from TTS.utils.manage import ModelManager

    try:
        model_path, _config_path, _item = ModelManager(progress_bar=progress).download_model(model_name)
    except Exception as error:
        log.exception("downloading %s failed", model_name)
        raise ServiceUnavailable(f"Could not download {model_name} ({error}). " + HOW_TO_PROVIDE) from error
    path = Path(model_path)
    return path if path.is_dir() else path.parent
