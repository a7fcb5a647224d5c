"""XTTS-v2 GPT fine-tuning with coqui's GPTTrainer in a child process that can be watched, resumed, killed."""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    import torch

log = logging.getLogger(__name__)

__all__ = ["TrainingPlan", "TrainingProcess", "TrainingStopped", "check_inputs", "choose_batch", "load_clip",
           "run_training", "start_training"]

BASE_FILES = ("config.json", "model.pth", "vocab.json", "dvae.pth", "mel_stats.pth")
TRAIN_METADATA = "metadata_train.csv"
EVAL_METADATA = "metadata_eval.csv"
SAMPLE_RATE = 22050  # what XTTS-v2's GPT and DVAE are trained on
REPORT_INTERVAL_S = 0.5  # progress events at most this often (the last step is always reported)
RUN_NAME = "xtts_ft"  # coqui's Trainer writes into run_dir/<RUN_NAME>-<date>-<commit>/
FINISHED_FILE = "finished.json"  # in run_dir once training ended and the final checkpoint is written
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written; renamed into place only once complete
RECIPE_MAX_WAV = 255995  # coqui's recipe: about 11.6 s at 22.05 kHz
RECIPE_MAX_TEXT = 200
MIN_CLIP_S = 0.5  # coqui's dataset silently drops shorter clips
SUMMARY_EXAMPLE_CHARS = 160  # the longest example per reason in a "no usable clips" error
STOP_SIGNAL = signal.SIGUSR1  # from the parent: save a checkpoint at the end of this step, then exit
_GIB = 1 << 30


class TrainingStopped(Exception):
    """Training stopped when asked, with every step done saved (step: None when it stopped before any)."""

    def __init__(self, step: int | None) -> None:
        super().__init__(f"stopped at step {step}" if step is not None else "stopped before training began")
        self.step = step


@dataclass(frozen=True)
class TrainingPlan:
    """One fine-tuning run. Picklable: it travels to the training child process.

    base_dir holds the release layout (config.json, model.pth, vocab.json) plus dvae.pth and
    mel_stats.pth. dataset_dir holds metadata_train.csv and metadata_eval.csv in coqui's "coqui"
    layout (`audio_file|text|speaker_name` header, audio paths relative to dataset_dir, 22.05 kHz mono
    WAV). run_dir receives the trainer's output; a later run with the same run_dir resumes from its
    newest checkpoint. batch_size / grad_accum_steps left as None are chosen from the training
    device's memory by choose_batch. save_every counts trainer steps (one per batch): a killed run
    loses at most that many batches. start_gpt: GPT weights (export_gpt's file) that a fresh run
    starts from instead of base_dir's, so a fine-tuned voice trained again builds on what it learnt.
    """

    base_dir: Path
    dataset_dir: Path
    language: str
    run_dir: Path
    epochs: int = 10
    batch_size: int | None = None
    grad_accum_steps: int | None = None
    learning_rate: float = 5e-06  # coqui's recipe
    save_every: int = 100
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    seed: int = 1
    start_gpt: Path | None = None

    def __post_init__(self) -> None:
        for name in ("base_dir", "dataset_dir", "run_dir"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.start_gpt is not None:
            object.__setattr__(self, "start_gpt", Path(self.start_gpt))
        for name in ("epochs", "save_every"):
            if getattr(self, name) < 1:
                msg = f"{name} must be at least 1"
                raise ValueError(msg)
        for name in ("batch_size", "grad_accum_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                msg = f"{name} must be at least 1"
                raise ValueError(msg)
        if not self.learning_rate > 0:
            msg = "learning_rate must be positive"
            raise ValueError(msg)


def choose_batch(device_memory_bytes: int | None) -> tuple[int, int]:
    """(batch_size, grad_accum_steps) for full-size XTTS-v2 GPT fine-tuning on a device of this memory.

    None means the CPU: 2 x 1, since a full-size step there already takes about 40 s. On a GPU the
    effective batch is 8 whatever the memory: coqui's recipe (4 x 63 = 252) suits thousands of
    clips, but a voice dataset has tens to hundreds, and 252 would mean fewer than one optimiser step
    per epoch. The per-device batch is sized from an estimate, not a measurement: fp32 AdamW over
    the 441M-parameter GPT holds about 7 GB (weights, gradients, two moments) and each clip of up to
    11.6 s adds about 2.5 GB of activations, so 16 GiB fits 2, 24 GiB 4 and 40 GiB 8. Below
    12 GiB even batch 1 is unlikely to fit.
    """
    if device_memory_bytes is None:
        return 2, 1
    if device_memory_bytes >= 40 * _GIB:
        return 8, 1
    if device_memory_bytes >= 24 * _GIB:
        return 4, 2
    if device_memory_bytes >= 16 * _GIB:
        return 2, 4
    return 1, 8


# -- the training child ------------------------------------------------------------------------


def run_training(plan: TrainingPlan, report: Callable[[dict[str, Any]], None],
                 stop: threading.Event | None = None) -> Path:
    """Fine-tune the GPT of plan.base_dir on plan.dataset_dir; return the final trainer checkpoint.

    Meant for a child process (start_training): coqui's Trainer seeds every RNG, sets PYTHONHASHSEED,
    raises RLIMIT_NOFILE, adds logging handlers and shells out to git, and importing coqui's dataset
    module changes torch's thread count. report receives {"event": "started", ...} once, then
    {"event": "progress", "step", "steps", "epoch", "epochs", "loss"} at most every 0.5 s and for
    the last step; epoch counts from 1, loss is the epoch's running average. If plan.run_dir holds
    a checkpoint of an earlier run of the same plan, training continues from it (model, optimiser,
    scheduler and step count; the interrupted epoch trains only its remaining batches); if that run
    had already finished, its final checkpoint is returned at once. Once stop is set, training saves a
    checkpoint at the end of the step under way (a resume then trains none of it again) and raises
    TrainingStopped.
    """
    run_dir = plan.run_dir
    finished = _finished_checkpoint(run_dir)
    if finished is not None:
        log.info("run in %s already finished: %s", run_dir, finished)
        report({"event": "started", "resumed_from": None, "finished": True})
        return finished
    check_inputs(plan)
    run_dir.mkdir(parents=True, exist_ok=True)
    _select_device(plan.device)

    import torch

    torch.manual_seed(plan.seed)  # the DVAE and anything the checkpoint lacks start from seeded weights
    _patch_audio_loading(torch)
    from trainer import Trainer, TrainerArgs
    from trainer.logging.dummy_logger import DummyLogger
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer

    _patch_atomic_checkpoints()
    config, grad_accum = _trainer_config(plan, torch)
    train_samples, eval_samples = _load_samples(plan, config)

    continue_dir = _resumable_run(run_dir)
    model = GPTTrainer(config)
    if plan.start_gpt is not None and continue_dir is None:  # a resumed run restores its own weights
        _load_start_gpt(model, plan.start_gpt, torch)
    train_samples, skipped = _usable_samples(train_samples, model.xtts.tokenizer, config, "training")
    if not train_samples:
        # The reasons go into the error itself: the job's error is what the operator sees, and this
        # process's log is in a work directory that a failed job does not keep.
        msg = (f"no usable training clips in {plan.dataset_dir / TRAIN_METADATA}: "
               f"{_skipped_summary(skipped, plan.dataset_dir)}")
        raise ValueError(msg)
    eval_samples, _ = _usable_samples(eval_samples, model.xtts.tokenizer, config, "evaluation")
    config.run_eval = bool(eval_samples)

    progress = _Progress(report, stop)
    trainer = Trainer(
        TrainerArgs(continue_path=str(continue_dir or ""), grad_accum_steps=grad_accum,
                    skip_train_epoch=False, start_with_eval=False),
        config,
        output_path=str(run_dir),
        model=model,
        train_samples=train_samples,
        eval_samples=eval_samples or None,
        parse_command_line_args=False,
        callbacks={"on_init_end": progress.on_init_end,
                   "on_train_epoch_start": progress.on_train_epoch_start,
                   "on_train_step_end": progress.on_train_step_end},
        # The tensorboard logger would write event files nobody reads; progress goes through report.
        dashboard_logger=DummyLogger(),
    )
    # A resumed Trainer reloads the run's saved config over ours; evaluation follows today's clips.
    trainer.config.run_eval = bool(eval_samples)
    # Trainer.fit() would turn any error into sys.exit(1) after deleting a run folder without
    # checkpoints, and Ctrl-C into os._exit(130); _fit() lets errors reach the caller intact.
    trainer._fit()
    trainer.dashboard_logger.finish()

    # A final checkpoint with the last weights (the periodic ones lag by up to save_every steps).
    trainer.save_checkpoint()
    final = Path(trainer.output_path) / f"checkpoint_{trainer.total_steps_done}.pth"
    marker = run_dir / (PARTIAL_PREFIX + FINISHED_FILE)
    marker.write_text(json.dumps({"checkpoint": str(final.relative_to(run_dir)),
                                  "steps": trainer.total_steps_done}))
    os.replace(marker, run_dir / FINISHED_FILE)
    log.info("training finished after %d steps: %s", trainer.total_steps_done, final)
    return final


def _load_start_gpt(model: Any, path: Path, torch: Any) -> None:
    """Put a fine-tuned voice's GPT weights (fp16, keys without `xtts.gpt.`) into the model to train."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.xtts.gpt.load_state_dict(state, strict=False)
    # Inference-only aliases may be missing; a weight the model lacks means another architecture.
    if result.unexpected_keys:
        msg = f"{path} does not fit this checkpoint's GPT: {', '.join(result.unexpected_keys[:5])}"
        raise ValueError(msg)
    log.info("starting from the fine-tuned GPT weights %s (%d tensors)", path, len(state))


def check_inputs(plan: TrainingPlan) -> None:
    """FileNotFoundError unless the base checkpoint and the dataset have the files training needs."""
    for name in BASE_FILES:
        if not (plan.base_dir / name).is_file():
            msg = (f"{plan.base_dir} has no {name}; fine-tuning needs the release files plus dvae.pth "
                   "and mel_stats.pth")
            raise FileNotFoundError(msg)
    for name in (TRAIN_METADATA, EVAL_METADATA):
        if not (plan.dataset_dir / name).is_file():
            msg = f"{plan.dataset_dir} has no {name}"
            raise FileNotFoundError(msg)
    if plan.start_gpt is not None and not plan.start_gpt.is_file():
        msg = f"{plan.start_gpt} (the GPT weights to start from) does not exist"
        raise FileNotFoundError(msg)


def _select_device(device: str) -> None:
    """Show the Trainer exactly the GPU wanted, or none: it trains on CUDA whenever torch sees one, and
    refuses to start when it sees several. Must run before CUDA initialises (in the child: always)."""
    device = (device or "auto").strip().lower()
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = "0" if visible is None else visible.split(",")[0]


def _patch_audio_loading(torch: Any) -> None:
    """Make coqui's XTTS dataset read clips without torchaudio.load (needs system FFmpeg)."""
    threads = torch.get_num_threads()
    import TTS.tts.layers.xtts.trainer.dataset as xtts_dataset

    # Importing the module set torch to one thread; that suits data-loader workers, not this
    # process, which trains in its main thread (no loader workers).
    torch.set_num_threads(threads)
    xtts_dataset.load_audio = load_clip


def load_clip(path: str, sampling_rate: int) -> torch.Tensor:
    """A clip as a (1, samples) float tensor in [-1, 1] at sampling_rate, like coqui's load_audio."""
    import numpy as np
    import torch

    samples, rate = _read_wav(Path(path))
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).unsqueeze(0)
    if rate != sampling_rate:
        import torchaudio.functional

        audio = torchaudio.functional.resample(audio, rate, sampling_rate)
    return audio.clamp_(-1.0, 1.0)


def _read_wav(path: Path) -> tuple[Any, int]:
    """Mono float32 samples and the sample rate: PCM WAV with `wave`, anything else through PyAV."""
    import wave

    import numpy as np

    try:
        with wave.open(str(path), "rb") as reader:
            width, channels, rate = reader.getsampwidth(), reader.getnchannels(), reader.getframerate()
            raw = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError):
        return _read_with_av(path)
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = bytes3[:, 0] | (bytes3[:, 1] << 8) | (bytes3[:, 2] << 16)
        samples = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    else:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate


def _read_with_av(path: Path) -> tuple[Any, int]:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [resampled.to_ndarray().reshape(-1)
                  for frame in container.decode(stream) for resampled in resampler.resample(frame)]
        chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in resampler.resample(None))
    return (np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)), rate


def _clip_seconds(path: Path) -> float:
    """A clip's duration from its header where `wave` can read it, else by decoding."""
    import wave

    try:
        with wave.open(str(path), "rb") as reader:
            return reader.getnframes() / float(reader.getframerate())
    except (wave.Error, EOFError):
        samples, rate = _read_with_av(path)
        return len(samples) / float(rate)


def _patch_atomic_checkpoints() -> None:
    """Write every trainer checkpoint to a temporary name and rename it into place when complete.

    The parent cancels training by killing this process, possibly in the middle of a save; coqui
    writes checkpoints in place, and a truncated newest checkpoint would then be what a resume loads.
    """
    import torch
    import trainer.io

    def save(state: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
        target = Path(path)
        partial = target.with_name(PARTIAL_PREFIX + target.name)
        with partial.open("wb") as handle:
            torch.save(state, handle, **kwargs)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)

    # save_model() looks save_fsspec up in its module at call time, so this reaches every save.
    trainer.io.save_fsspec = save


def _trainer_config(plan: TrainingPlan, torch: Any) -> tuple[Any, int]:
    """GPTTrainerConfig as coqui's recipe builds it, with the GPT arguments of the base checkpoint,
    and the gradient accumulation (a TrainerArgs setting, not a config one)."""
    from dataclasses import fields

    from TTS.config.shared_configs import BaseDatasetConfig
    from TTS.tts.configs.xtts_config import XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainerConfig

    base = plan.base_dir
    base_config = XttsConfig()
    base_config.load_json(str(base / "config.json"))
    # GPTArgs' own defaults (8194 audio tokens, no perceiver) are not XTTS-v2's: the architecture
    # must come from the checkpoint being fine-tuned.
    known = {item.name for item in fields(GPTArgs)}
    base_args = base_config.model_args.to_dict()
    model_args = GPTArgs(**{key: value for key, value in base_args.items() if key in known})
    # Clips whose audio tokens would overrun the GPT's position table are skipped, not crashed on:
    # a clip of n samples takes ceil(n / 1024) positions plus 2 of the gpt_max_audio_tokens ones.
    stride = model_args.gpt_code_stride_len
    model_args.max_wav_length = min(RECIPE_MAX_WAV, (model_args.gpt_max_audio_tokens - 2) * stride)
    model_args.max_text_length = min(RECIPE_MAX_TEXT, model_args.gpt_max_text_tokens)
    model_args.min_conditioning_length = 66150  # 3 s, as in the recipe
    model_args.max_conditioning_length = 132300  # 6 s
    model_args.debug_loading_failures = False
    # Local files only: mel_norm_file defaults to a URL, and an empty dvae_checkpoint is an error.
    model_args.mel_norm_file = str(base / "mel_stats.pth")
    model_args.dvae_checkpoint = str(base / "dvae.pth")
    model_args.xtts_checkpoint = str(base / "model.pth")
    model_args.tokenizer_file = str(base / "vocab.json")
    model_args.gpt_checkpoint = ""

    batch_size, grad_accum = plan.batch_size, plan.grad_accum_steps
    if batch_size is None or grad_accum is None:
        memory = (torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None)
        chosen = choose_batch(memory)
        batch_size = batch_size or chosen[0]
        grad_accum = grad_accum or chosen[1]

    config = GPTTrainerConfig(
        output_path=str(plan.run_dir),
        run_name=RUN_NAME,
        project_name="voiceforge",
        model_args=model_args,
        audio=XttsAudioConfig(sample_rate=base_config.audio.sample_rate, dvae_sample_rate=SAMPLE_RATE,
                              output_sample_rate=base_config.audio.output_sample_rate),
        datasets=[BaseDatasetConfig(formatter="coqui", dataset_name="voice", path=str(plan.dataset_dir),
                                    meta_file_train=TRAIN_METADATA, meta_file_val=EVAL_METADATA,
                                    language=plan.language)],
        epochs=plan.epochs,
        batch_size=batch_size,
        eval_batch_size=batch_size,
        # Loader workers would be grandchildren that outlive a killed trainer; a voice dataset's
        # clips load in milliseconds next to a training step.
        num_loader_workers=0,
        num_eval_loader_workers=0,
        eval_split_max_size=256,
        print_step=50,
        plot_step=100,
        log_model_step=1000,
        save_step=plan.save_every,
        save_n_checkpoints=1,  # a full-size trainer checkpoint is 5.6 GB
        save_checkpoints=True,
        # No best_model_*.pth: each would be another 5.6 GB copy, and the eval set of a single
        # voice is too small to choose by; the final checkpoint is what gets exported.
        save_best_after=1 << 62,
        save_on_interrupt=False,
        print_eval=False,
        # The recipe's optimiser: AdamW with weight decay on weights only, lr decay far beyond a
        # fine-tune's length (so in effect constant).
        optimizer="AdamW",
        optimizer_wd_only_on_weights=True,
        optimizer_params={"betas": [0.9, 0.96], "eps": 1e-8, "weight_decay": 1e-2},
        lr=plan.learning_rate,
        lr_scheduler="MultiStepLR",
        lr_scheduler_params={"milestones": [50000 * 18, 150000 * 18, 300000 * 18], "gamma": 0.5,
                             "last_epoch": -1},
        # Test sentences would synthesise from a reference WAV through torchaudio.load.
        test_sentences=[],
        training_seed=plan.seed,
    )
    return config, grad_accum


def _load_samples(plan: TrainingPlan, config: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from TTS.tts.datasets import load_tts_samples

    train, evaluation = load_tts_samples(config, eval_split=True,
                                         eval_split_max_size=config.eval_split_max_size)
    return list(train), list(evaluation)


def _usable_samples(samples: list[dict[str, Any]], tokenizer: Any, config: Any,
                    split: str) -> tuple[list[dict[str, Any]], list[tuple[str, Path, str]]]:
    """The samples coqui's dataset can use, and (kind, clip, detail) for each it cannot; coqui would drop
    bad ones silently, and loop forever (it retries another random sample) when none is usable."""
    args = config.model_args
    usable, skipped = [], []
    for sample in samples:
        path = Path(sample["audio_file"])
        problem = _clip_problem(path, str(sample["text"]), sample["language"], tokenizer, args)
        if problem:
            log.warning("skipping %s clip %s: %s", split, path, problem[1])
            skipped.append((problem[0], path, problem[1]))
        else:
            usable.append(sample)
    log.info("%d of %d %s clips usable", len(usable), len(samples), split)
    return usable, skipped


def _clip_problem(path: Path, text: str, language: str, tokenizer: Any, args: Any) -> tuple[str, str] | None:
    """Why coqui's dataset cannot use a clip, as (kind, detail); None when it can."""
    try:
        seconds = _clip_seconds(path)
        tokens = tokenizer.encode(text, language)
    except Exception as error:  # noqa: BLE001 - any unreadable clip or text is reported, not fatal
        return "unreadable", f"{type(error).__name__}: {error}"
    if not text.strip():
        return "with empty text", "empty text"
    if seconds < MIN_CLIP_S:
        return "too short", f"{seconds:.2f} s is shorter than {MIN_CLIP_S} s"
    if seconds * SAMPLE_RATE > args.max_wav_length:
        return "too long", f"{seconds:.2f} s is longer than {args.max_wav_length / SAMPLE_RATE:.2f} s"
    if 1 in tokens or 0 in tokens:
        return "with unknown characters", "text has characters the tokenizer does not know"
    if len(tokens) > args.max_text_length:
        return "with too many tokens", f"text is {len(tokens)} tokens, over {args.max_text_length}"
    return None


def _skipped_summary(skipped: list[tuple[str, Path, str]], root: Path) -> str:
    """How many clips were skipped for each reason, with one example each, in bounded length."""
    kinds: dict[str, list[tuple[Path, str]]] = {}
    for kind, path, detail in skipped:
        kinds.setdefault(kind, []).append((path, detail))
    if not kinds:
        return "the dataset lists none"
    parts = []
    for kind, clips in kinds.items():  # at most one part per kind of problem, so the length is bounded
        path, detail = clips[0]
        name = path.relative_to(root) if path.is_relative_to(root) else path.name
        example = f"{name}: {detail}"
        if len(example) > SUMMARY_EXAMPLE_CHARS:  # an exception's message can be long
            example = example[:SUMMARY_EXAMPLE_CHARS - 1] + "…"
        parts.append(f"{len(clips)} {kind} (e.g. {example})")
    return "; ".join(parts)


def _experiment_dirs(run_dir: Path) -> list[Path]:
    return sorted(path for path in run_dir.glob(f"{RUN_NAME}-*") if path.is_dir())


def _checkpoint_step(path: Path) -> int:
    try:
        return int(path.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _readable(path: Path) -> bool:
    """A complete torch zip archive (its central directory, written last, is there)."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (OSError, zipfile.BadZipFile):
        return False


def _resumable_run(run_dir: Path) -> Path | None:
    """The trainer folder holding the newest complete checkpoint; tidies what a killed run left."""
    best: tuple[int, Path] | None = None
    for folder in _experiment_dirs(run_dir):
        for partial in folder.glob(PARTIAL_PREFIX + "*"):
            partial.unlink(missing_ok=True)
        for checkpoint in folder.glob("checkpoint_*.pth"):
            if not _readable(checkpoint):
                log.warning("removing unreadable checkpoint %s", checkpoint)
                checkpoint.unlink(missing_ok=True)
                continue
            step = _checkpoint_step(checkpoint)
            if best is None or step > best[0]:
                best = (step, folder)
    for folder in _experiment_dirs(run_dir):
        if (best is None or folder != best[1]) and not any(folder.glob("*.pth")):
            shutil.rmtree(folder, ignore_errors=True)  # a run killed before its first checkpoint
    if best is not None:
        log.info("resuming from %s (step %d)", best[1], best[0])
    return None if best is None else best[1]


def _finished_checkpoint(run_dir: Path) -> Path | None:
    marker = run_dir / FINISHED_FILE
    try:
        checkpoint = run_dir / json.loads(marker.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return checkpoint if checkpoint.is_file() else None


class _Epoch:
    """The first `length` batches of a loader: the rest of an epoch that a resumed run had begun."""

    def __init__(self, loader: Any, length: int) -> None:
        self.loader = loader
        self.length = max(0, length)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[Any]:
        if self.length == 0:
            return
        for index, batch in enumerate(self.loader):
            yield batch
            if index + 1 >= self.length:
                return


class _Progress:
    """Trainer callbacks: progress events, skipping what a resumed epoch trained, stopping when asked."""

    def __init__(self, report: Callable[[dict[str, Any]], None], stop: threading.Event | None = None) -> None:
        self.report = report
        self.stop = stop or threading.Event()
        self.epoch_batches = 0
        self.last_report = 0.0

    def on_init_end(self, trainer: Any) -> None:
        # Runs after the Trainer restored a checkpoint, so the counters are the resumed ones.
        resumed = trainer.total_steps_done if trainer.continue_run else None
        self.report({"event": "started", "resumed_from": resumed, "batch_size": trainer.config.batch_size,
                     "grad_accum": trainer.grad_accum_steps, "device": "cuda" if trainer.use_cuda else "cpu"})
        if self.stop.is_set():
            raise TrainingStopped(None)  # nothing trained in this run yet: nothing to save

    def on_train_epoch_start(self, trainer: Any) -> None:
        loader = trainer.train_loader
        if isinstance(loader, _Epoch):
            loader = trainer.train_loader = loader.loader
        self.epoch_batches = len(loader)
        # Trainer restarts an interrupted epoch from its first batch; coqui's XTTS dataset draws
        # clips at random anyway, so running only the batches still due keeps every epoch (and the
        # whole run) at its planned number of steps.
        done = trainer.total_steps_done - trainer.epochs_done * self.epoch_batches
        if done > 0:
            trainer.train_loader = _Epoch(loader, self.epoch_batches - done)

    def on_train_step_end(self, trainer: Any) -> None:
        step = trainer.total_steps_done
        steps = trainer.config.epochs * self.epoch_batches
        stopping = self.stop.is_set() and step < steps  # at the last step, the final save is coming anyway
        now = time.monotonic()
        if now - self.last_report < REPORT_INTERVAL_S and step < steps and not stopping:
            return
        self.last_report = now
        self.report({"event": "progress", "step": step, "steps": steps, "epoch": trainer.epochs_done + 1,
                     "epochs": trainer.config.epochs, "loss": _epoch_loss(trainer)})
        if stopping:
            _save_steps_done(trainer)
            raise TrainingStopped(step)


def _save_steps_done(trainer: Any) -> None:
    """A checkpoint from which a resume starts at the next batch: none of the steps done is lost."""
    # The Trainer saves its periodic checkpoints during a step, before counting it, and a resume starts
    # at the saved step + 1; saved here, after the count, the checkpoint takes the number one lower.
    trainer.total_steps_done -= 1
    try:
        if not (Path(trainer.output_path) / f"checkpoint_{trainer.total_steps_done}.pth").is_file():
            trainer.save_checkpoint()  # (a periodic save during this very step already holds it)
    finally:
        trainer.total_steps_done += 1


def _epoch_loss(trainer: Any) -> float | None:
    """The epoch's running average loss, undoing the Trainer's division by grad_accum_steps."""
    averages = trainer.keep_avg_train.avg_values if trainer.keep_avg_train is not None else {}
    if "avg_loss_mel_ce" in averages and "avg_loss_text_ce" in averages:
        return float(averages["avg_loss_mel_ce"] + averages["avg_loss_text_ce"])
    if "avg_loss" in averages:
        return float(averages["avg_loss"] * trainer.grad_accum_steps)
    return None


def _child_main(plan: TrainingPlan, conn: Connection, log_level: int) -> None:
    """Entry point of the training process: run_training with events sent up the pipe."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when training stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(STOP_SIGNAL, lambda _signum, _frame: stop.set())
    _exit_with_parent()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    # Everything the child writes (coqui's console progress, transformers' warnings, tracebacks from
    # native code) goes to the run's log, not into the parent's stdout and stderr.
    log_fd = os.open(plan.run_dir / "train.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # The Trainer copies sys.argv[0] into the run folder when it is a file (the parent's script).
    sys.argv = ["voiceforge-finetune"]

    try:
        checkpoint = run_training(plan, conn.send, stop)
    except TrainingStopped as stopped:
        log.info("training %s, as the parent asked", stopped)
        outcome, code = {"event": "stopped", "step": stopped.step}, 0
    except BaseException as error:  # SystemExit from coqui included: reported, then exit 1
        log.exception("training failed")
        outcome, code = {"event": "failed", "error": f"{type(error).__name__}: {error}"}, 1
    else:
        outcome, code = {"event": "finished", "checkpoint": str(checkpoint)}, 0
    try:
        conn.send(outcome)
        conn.close()
    except OSError:
        log.warning("the parent stopped listening before training ended")
    logging.shutdown()
    os._exit(code)  # skip interpreter teardown: coqui may have left threads or handlers behind


def _exit_with_parent() -> None:
    """Stop training if the parent dies without terminating this process (killed, or crashed)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="voiceforge-parent-watch", daemon=True).start()


# -- the parent's handle -----------------------------------------------------------------------


class TrainingProcess:
    """The parent's handle on a training child: its events, its state, and cancellation.

    Events arrive on a pipe that a reader thread drains all the time, so a parent that polls rarely
    never stalls training. The child is a daemon: it is terminated if the parent exits, and it
    exits by itself if the parent is killed.
    """

    def __init__(self, plan: TrainingPlan, process: multiprocessing.process.BaseProcess,
                 conn: Connection) -> None:
        self.plan = plan
        self._process = process
        self._conn = conn
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.last_progress: dict[str, Any] | None = None
        self.checkpoint: Path | None = None  # the final trainer checkpoint, once training succeeded
        self.error: str | None = None  # why training failed, when the child said so
        self.stopped = False  # whether the child stopped when asked (stop()), its steps saved
        self._heard = False  # whether the child sent any event (see _explain_early_exit)
        self._reader = threading.Thread(target=self._read, name="voiceforge-training-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                event = self._conn.recv()
            except (EOFError, OSError):
                break  # the child exited (or was killed): nothing more will come
            self._heard = True
            if event.get("event") == "progress":
                self.last_progress = event
            elif event.get("event") == "finished":
                self.checkpoint = Path(event["checkpoint"])
            elif event.get("event") == "failed":
                self.error = event.get("error")
            elif event.get("event") == "stopped":
                self.stopped = True
            self._events.put(event)
        self._conn.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process.is_alive()

    @property
    def exitcode(self) -> int | None:
        """None while running; 0 finished, 1 failed, negative: killed by that signal."""
        return self._process.exitcode

    def poll(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """The events received since the last poll, waiting up to timeout seconds for the first."""
        events: list[dict[str, Any]] = []
        try:
            events.append(self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait())
        except queue.Empty:
            return events
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for the child to exit and its last events to be read; its exit code (None: still running)."""
        self._process.join(timeout)
        if self._process.exitcode is not None:
            self._reader.join(timeout=5)
            self._explain_early_exit()
        return self._process.exitcode

    def _explain_early_exit(self) -> None:
        """Say where to look when the child failed before it could report (its stderr was still ours)."""
        # Exit status 1 with no event: Python's own exit on an uncaught error in spawn's bootstrap (the
        # package not importable) or before the child redirected its output to train.log.
        if self._process.exitcode == 1 and self.error is None and not self._heard:
            self.error = ("the trainer process failed before training began (exit status 1); its traceback "
                          "is in the log (stderr) of the process that started it, not in train.log")

    def terminate(self, grace_s: float = 2.0) -> int | None:
        """Cancel: SIGTERM, then SIGKILL after grace_s. Safe at any moment: checkpoints are written
        under a temporary name and renamed when complete, so the newest one is always whole."""
        if self._process.exitcode is None:
            self._process.terminate()
            self._process.join(grace_s)
            if self._process.exitcode is None:
                self._process.kill()
                self._process.join(5)
        return self.join(5)

    def stop(self, grace_s: float) -> bool:
        """Shut down keeping the work done: the child saves a checkpoint at the end of its current step
        and exits; terminated if that takes longer than grace_s. Whether it stopped with its steps saved."""
        if self._process.exitcode is None and grace_s > 0 and self._process.pid is not None:
            try:
                os.kill(self._process.pid, STOP_SIGNAL)
            except ProcessLookupError:
                pass
            self._process.join(grace_s)
        self.terminate()
        return self.stopped

    def kill(self) -> None:
        """SIGKILL at once, as a crash or an OOM kill would."""
        if self._process.exitcode is None:
            self._process.kill()
        self.join(5)


def start_training(plan: TrainingPlan, *, log_level: int = logging.INFO) -> TrainingProcess:
    """Start run_training(plan) in a fresh "spawn" child process; the child logs to run_dir/train.log.

    Missing input files raise FileNotFoundError here, before any process starts.
    """
    check_inputs(plan)
    _make_importable_in_children()
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold threads and CUDA
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(plan, sender, log_level), name="voiceforge-finetune",
                              daemon=True)
    process.start()
    sender.close()  # only the child writes; its exit then reads as end-of-file here
    log.info("training started in process %s: %s", process.pid, plan.run_dir)
    return TrainingProcess(plan, process, receiver)


def _make_importable_in_children() -> None:
    """Put the directory that holds the voiceforge package on sys.path, which spawn children start with."""
    # A spawn child imports voiceforge again to find _child_main, with the parent's sys.path (sent in
    # multiprocessing's preparation data, replacing the child's own). That path need not hold the
    # checkout: `celery -A voiceforge…` adds the working directory only while it loads the app. Appended,
    # it shadows nothing: voiceforge was imported from there already, and earlier entries keep their
    # precedence. For an installed package the directory is site-packages, already on the path.
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.append(root)
