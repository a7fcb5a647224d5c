"""GPT fine-tuning on a tiny random XTTS-v2: child-process training, resume, cancel, export, weight swaps."""

from __future__ import annotations

import json
import math
import pickle
import signal
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tests.support.checkpoint import build_checkpoint
from voiceforge.finetune.train import (
    RUN_NAME,
    TrainingPlan,
    TrainingProcess,
    choose_batch,
    load_clip,
    run_training,
    start_training,
)

RATE = 22050
TRAIN_TEXTS = (
    "the quick brown fox jumps over the lazy dog.",
    "hello there, how are you doing today?",
    "a small voice reads a short line.",
    "good morning to everyone in the room.",
)
EVAL_TEXT = "one more sentence, kept for evaluation."
EPOCHS = 2
BATCHES_PER_EPOCH = len(TRAIN_TEXTS)  # batch size 1
SAVE_EVERY = 2  # the first checkpoint lands mid-epoch, so a resume must finish a partial epoch
GREEDY_TOKENS = 24  # enough to compare outputs, few enough to vocode quickly


def write_clip(path: Path, seconds: float, seed: int, *, rate: int = RATE, channels: int = 1) -> None:
    """A voiced-sounding 16-bit clip: a gliding harmonic tone with syllable-rate amplitude and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 110 + 30 * seed + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    signal_ = 0.2 * voice * envelope + 0.01 * rng.standard_normal(t.size)
    pcm = (np.clip(signal_, -1, 1) * 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(pcm.tobytes())


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 255 audio positions cover the trainer's longest clip; the default tiny cap of 24 cannot train.
    return build_checkpoint(tmp_path_factory.mktemp("ft") / "base", max_audio_tokens=255, training_files=True)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ft") / "dataset"
    (root / "wavs").mkdir(parents=True)
    rows = []
    for index, text in enumerate((*TRAIN_TEXTS, EVAL_TEXT)):
        write_clip(root / "wavs" / f"clip{index}.wav", seconds=2 + index % 2, seed=index)
        rows.append(f"wavs/clip{index}.wav|{text}|voice")
    header = "audio_file|text|speaker_name\n"
    (root / "metadata_train.csv").write_text(header + "\n".join(rows[:-1]) + "\n", encoding="utf-8")
    (root / "metadata_eval.csv").write_text(header + rows[-1] + "\n", encoding="utf-8")
    return root


def make_plan(base_dir: Path, dataset_dir: Path, run_dir: Path) -> TrainingPlan:
    # lr 1e-3, far above the recipe's 5e-6, so that a few steps visibly move a tiny random model.
    return TrainingPlan(base_dir=base_dir, dataset_dir=dataset_dir, language="en", run_dir=run_dir,
                        epochs=EPOCHS, batch_size=1, grad_accum_steps=1, learning_rate=1e-3,
                        save_every=SAVE_EVERY, device="cpu")


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob(f"{RUN_NAME}-*/checkpoint_*.pth"), key=lambda p: int(p.stem.split("_")[1]))


def log_tail(run_dir: Path) -> str:
    path = run_dir / "train.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def watch(proc: TrainingProcess, until: Callable[[list[dict[str, Any]]], bool], timeout: float) -> list[dict]:
    """Collect the child's events until `until(events)` holds; fail on timeout or an early exit."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.extend(proc.poll(0.1))
        if until(events):
            return events
        if proc.exitcode is not None:
            proc.join(5)
            events.extend(proc.poll())
            if until(events):
                return events
            pytest.fail(f"training exited with {proc.exitcode} ({proc.error}) after {events}\n"
                        f"{log_tail(proc.plan.run_dir)}")
    pytest.fail(f"timed out after {events}\n{log_tail(proc.plan.run_dir)}")


def progress(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == "progress"]


def started(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(event for event in events if event["event"] == "started")


@dataclass
class Runs:
    """One run dir trained in three child processes: SIGKILLed, then cancelled, then to the end."""

    run_dir: Path
    killed_events: list[dict[str, Any]]
    killed_exitcode: int | None
    killed_at_checkpoint: int  # step number of the newest checkpoint when the child was killed
    cancelled_events: list[dict[str, Any]]
    cancelled_exitcode: int | None
    cancel_seconds: float
    final_events: list[dict[str, Any]]
    final_exitcode: int | None
    checkpoint: Path


@pytest.fixture(scope="module")
def runs(base_dir: Path, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    run_dir = tmp_path_factory.mktemp("ft") / "run"
    plan = make_plan(base_dir, dataset_dir, run_dir)

    # 1. Killed outright (as by the OOM killer) once its first checkpoint is on disk.
    proc = start_training(plan)
    try:
        killed_events = watch(proc, lambda _events: bool(checkpoints(run_dir)), timeout=120)
        proc.kill()
    finally:
        proc.kill()
    killed_exitcode = proc.exitcode
    killed_at = int(checkpoints(run_dir)[-1].stem.split("_")[1])

    # 2. Resumed, then cancelled right after its first training step.
    proc = start_training(plan)
    try:
        cancelled_events = watch(proc, lambda events: bool(progress(events)), timeout=120)
        begun = time.monotonic()
        proc.terminate()
        cancel_seconds = time.monotonic() - begun
    finally:
        proc.kill()
    cancelled_events.extend(proc.poll())
    cancelled = proc

    # 3. Resumed again, to the end.
    proc = start_training(plan)
    try:
        final_events = watch(proc, lambda events: any(e["event"] in ("finished", "failed") for e in events),
                             timeout=150)
        proc.join(10)
    finally:
        proc.kill()
    assert proc.checkpoint is not None, (proc.error, log_tail(run_dir))
    return Runs(run_dir, killed_events, killed_exitcode, killed_at, cancelled_events, cancelled.exitcode,
                cancel_seconds, final_events, proc.exitcode, proc.checkpoint)


def test_training_runs_in_a_child_process_and_reports_progress(runs: Runs) -> None:
    first = progress(runs.killed_events)
    assert started(runs.killed_events)["resumed_from"] is None
    assert first and first[0]["step"] == 1  # a fresh run starts at the beginning

    events = progress(runs.final_events)
    steps = [event["step"] for event in events]
    assert steps == sorted(set(steps)), steps  # strictly rising
    assert events[-1]["step"] == events[-1]["steps"] == EPOCHS * BATCHES_PER_EPOCH
    assert {event["epochs"] for event in events} == {EPOCHS}
    assert events[-1]["epoch"] == EPOCHS
    assert all(isinstance(e["loss"], float) and math.isfinite(e["loss"]) and e["loss"] > 0 for e in events)

    assert runs.final_exitcode == 0
    assert runs.final_events[-1] == {"event": "finished", "checkpoint": str(runs.checkpoint)}
    assert runs.checkpoint.is_file() and runs.checkpoint.parent.parent == runs.run_dir
    assert (runs.run_dir / "train.log").stat().st_size > 0  # the child's output went to its log


def test_a_killed_run_resumes_from_its_checkpoint(runs: Runs) -> None:
    assert runs.killed_exitcode == -signal.SIGKILL
    # The Trainer resumes at the checkpoint's step + 1 (the step during which it was saved).
    resumed = started(runs.cancelled_events)["resumed_from"]
    assert resumed == runs.killed_at_checkpoint + 1 > 1
    assert progress(runs.cancelled_events)[0]["step"] == resumed + 1  # continues, not from 1

    final_start = started(runs.final_events)["resumed_from"]
    assert final_start is not None and final_start >= resumed
    assert progress(runs.final_events)[0]["step"] == final_start + 1
    # However often it was interrupted, the run takes its planned number of steps.
    assert progress(runs.final_events)[-1]["step"] == EPOCHS * BATCHES_PER_EPOCH
    assert not list(runs.run_dir.rglob(".partial-*"))


def test_terminate_cancels_within_seconds(runs: Runs) -> None:
    assert runs.cancel_seconds < 5
    assert runs.cancelled_exitcode in (-signal.SIGTERM, -signal.SIGKILL)


def test_a_stopped_run_saves_every_step_and_resumes_at_the_next(base_dir: Path, dataset_dir: Path,
                                                                 tmp_path: Path) -> None:
    # No periodic checkpoint would land in this run: whatever a resume keeps, the stop saved.
    plan = TrainingPlan(base_dir=base_dir, dataset_dir=dataset_dir, language="en", run_dir=tmp_path / "run",
                        epochs=EPOCHS, batch_size=1, grad_accum_steps=1, learning_rate=1e-3,
                        save_every=1000, device="cpu")
    proc = start_training(plan)
    try:
        watch(proc, lambda events: bool(progress(events)), timeout=120)
        assert proc.stop(grace_s=60) is True, log_tail(plan.run_dir)
    finally:
        proc.kill()
    events = proc.poll()
    stopped = next(event for event in events if event["event"] == "stopped")
    done = stopped["step"]
    assert proc.exitcode == 0 and proc.checkpoint is None
    assert 1 <= done < EPOCHS * BATCHES_PER_EPOCH
    assert [int(path.stem.split("_")[1]) for path in checkpoints(plan.run_dir)] == [done - 1]

    proc = start_training(plan)
    try:
        resumed = watch(proc, lambda events: bool(progress(events)), timeout=120)
    finally:
        proc.kill()
    assert started(resumed)["resumed_from"] == done
    assert progress(resumed)[0]["step"] == done + 1  # the next batch: none trained twice, none skipped


# -- export and serving ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from voiceforge.finetune.export import export_gpt

    return export_gpt(runs.checkpoint, tmp_path_factory.mktemp("ft") / "gpt.pth")


@pytest.fixture(scope="module")
def model(base_dir: Path) -> Any:
    from voiceforge.services.engine import load_xtts

    loaded, _device = load_xtts(base_dir, "cpu")
    return loaded


def test_export_keeps_only_the_gpt_in_fp16(runs: Runs, exported: Any, base_dir: Path) -> None:
    import torch

    from voiceforge.services.engine import load_xtts

    assert exported.path.is_file() and exported.size == exported.path.stat().st_size
    assert exported.size * 20 < runs.checkpoint.stat().st_size  # no optimiser, DVAE, HiFiGAN
    assert not list(exported.path.parent.glob(".*partial*"))
    state = torch.load(exported.path, weights_only=True, mmap=True)
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    foreign = ("xtts.", "dvae", "hifigan", "torch_mel", "gpt_inference")
    assert not [key for key in state if key.startswith(foreign)]

    fresh, _device = load_xtts(base_dir, "cpu")
    result = fresh.gpt.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []
    # Only the inference-time aliases of tensors that were loaded may be missing.
    assert all(key.startswith("gpt_inference.") or key == "gpt.wte.weight" for key in result.missing_keys)
    assert "mel_embedding.weight" in state and "gpt.h.0.attn.c_attn.weight" in state


def greedy(model: Any, latents: Any) -> tuple[list[int], np.ndarray]:
    """Greedy audio tokens and audio for a fixed sentence."""
    import torch

    text = "hello world, this is a test."
    tokens = torch.IntTensor(model.tokenizer.encode(text, lang="en")).unsqueeze(0)
    with torch.inference_mode():
        codes = model.gpt.generate(latents.gpt_cond_latent, tokens, do_sample=False, repetition_penalty=5.0,
                                   max_new_tokens=GREEDY_TOKENS)
        out = model.inference(text, "en", latents.gpt_cond_latent, latents.speaker_embedding, do_sample=False,
                              repetition_penalty=5.0, max_new_tokens=GREEDY_TOKENS)
    return codes[0].tolist(), np.asarray(out["wav"])


def test_finetuned_weights_change_greedy_output_and_swap_back_exactly(
        exported: Any, model: Any, base_dir: Path) -> None:
    from voiceforge.finetune.weights import GptWeights
    from voiceforge.services.engine import read_speakers

    latents = next(iter(read_speakers(base_dir).values()))
    weights = GptWeights(resident=1)
    weights.activate(model, None)  # takes the base weights: the model must hold them now
    base_tokens, base_wav = greedy(model, latents)

    assert weights.activate(model, exported.path) is True
    assert weights.active == exported.path.resolve()
    tuned_tokens, tuned_wav = greedy(model, latents)
    assert weights.activate(model, exported.path) is False  # already active: no work
    again_tokens, again_wav = greedy(model, latents)

    assert tuned_tokens != base_tokens, "a few steps at lr 1e-3 should change a tiny model's greedy tokens"
    assert not np.array_equal(tuned_wav, base_wav)
    assert again_tokens == tuned_tokens and np.array_equal(again_wav, tuned_wav)  # deterministic

    assert weights.activate(model, None) is True
    assert weights.active is None
    back_tokens, back_wav = greedy(model, latents)
    assert back_tokens == base_tokens and np.array_equal(back_wav, base_wav)  # nothing leaked

    weights.activate(model, exported.path)  # from the resident copy this time
    assert greedy(model, latents)[0] == tuned_tokens
    weights.activate(model, None)


def test_a_run_can_start_from_a_fine_tuned_voice_s_weights(base_dir: Path, dataset_dir: Path, exported: Any,
                                                            model: Any, tmp_path: Path) -> None:
    import torch

    from voiceforge.finetune.export import export_gpt

    # A learning rate too small to move anything: what the run ends with is what it started from.
    plan = TrainingPlan(base_dir=base_dir, dataset_dir=dataset_dir, language="en", run_dir=tmp_path / "run",
                        epochs=1, batch_size=1, grad_accum_steps=1, learning_rate=1e-12, save_every=1000,
                        device="cpu", start_gpt=exported.path)
    proc = start_training(plan)
    try:
        watch(proc, lambda events: any(e["event"] in ("finished", "failed") for e in events), timeout=150)
        proc.join(10)
    finally:
        proc.kill()
    assert proc.checkpoint is not None, (proc.error, log_tail(plan.run_dir))
    ended = torch.load(export_gpt(proc.checkpoint, tmp_path / "again.pth").path, weights_only=True)
    started_from = torch.load(exported.path, weights_only=True)
    base = model.gpt.state_dict()

    def distance(one: dict, other: dict) -> float:
        return sum(float((one[key].float() - other[key].float()).abs().sum()) for key in started_from)

    assert distance(ended, started_from) < distance(started_from, base) / 100  # the voice's, not the base's


def test_latent_is_recomputed_with_the_finetuned_gpt(exported: Any, model: Any) -> None:
    import torch

    from voiceforge.finetune.export import recompute_latent
    from voiceforge.finetune.weights import GptWeights

    rng = np.random.default_rng(3)
    reference = (0.1 * rng.standard_normal(3 * RATE)).astype(np.float32)
    weights = GptWeights()
    weights.activate(model, None)
    base = recompute_latent(model, reference)
    weights.activate(model, exported.path)
    tuned = recompute_latent(model, reference)
    weights.activate(model, None)
    assert tuned.shape == base.shape == (1, 32, model.gpt.model_dim)
    assert not torch.equal(tuned, base)  # the conditioning encoder and perceiver were trained too


def test_a_weight_file_that_does_not_fit_is_refused(exported: Any, model: Any, tmp_path: Path) -> None:
    import torch

    from voiceforge.finetune.weights import GptWeights

    state = torch.load(exported.path, weights_only=True)
    del state["mel_head.bias"]  # strict=False would keep the previous voice's values for it
    partial = tmp_path / "partial.pth"
    torch.save(state, partial)
    weights = GptWeights()
    before = model.gpt.mel_head.bias.detach().clone()
    with pytest.raises(ValueError, match=r"mel_head\.bias"):
        weights.activate(model, partial)
    assert weights.active is None and torch.equal(model.gpt.mel_head.bias, before)


# -- pieces --------------------------------------------------------------------------------------


def test_choose_batch_by_device_memory() -> None:
    gib = 1 << 30
    assert choose_batch(None) == (2, 1)
    for memory in (8 * gib, 16 * gib, 24 * gib, 40 * gib, 80 * gib, 141 * gib):
        batch, accum = choose_batch(memory)
        assert batch * accum == 8
    sizes = [choose_batch(m * gib)[0] for m in (8, 16, 24, 40, 80)]
    assert sizes == sorted(sizes) and sizes[-1] == 8


def test_plan_is_picklable_and_checked(tmp_path: Path) -> None:
    plan = TrainingPlan(base_dir=str(tmp_path), dataset_dir=tmp_path, language="en", run_dir=tmp_path / "r")
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert isinstance(plan.base_dir, Path) and plan.learning_rate == 5e-06
    with pytest.raises(ValueError, match="epochs"):
        TrainingPlan(base_dir=tmp_path, dataset_dir=tmp_path, language="en", run_dir=tmp_path, epochs=0)


def test_load_clip_reads_wav_without_torchaudio_load(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    write_clip(path, seconds=1.0, seed=1, rate=44100, channels=2)
    audio = load_clip(str(path), RATE)
    assert audio.shape[0] == 1 and abs(audio.shape[1] - RATE) <= 2
    assert float(audio.abs().max()) <= 1.0 and float(audio.abs().max()) > 0.05


def test_unusable_clips_are_reported_not_trained_on(base_dir: Path, tmp_path: Path) -> None:
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    from voiceforge.finetune.train import _skipped_summary, _usable_samples

    clips = {"ok": 2.0, "short": 0.2, "long": 4.0, "odd": 2.0}
    for name, seconds in clips.items():
        write_clip(tmp_path / f"{name}.wav", seconds=seconds, seed=0)
    texts = dict.fromkeys(clips, "fine words.") | {"odd": "unknown \u4e00\u4e01 text"}
    samples = [{"audio_file": str(tmp_path / f"{name}.wav"), "text": texts[name], "language": "en"}
               for name in clips]
    samples.append({"audio_file": str(tmp_path / "missing.wav"), "text": "fine.", "language": "en"})
    config = SimpleNamespace(model_args=SimpleNamespace(max_wav_length=3 * RATE, max_text_length=200))
    usable, skipped = _usable_samples(samples, VoiceBpeTokenizer(str(base_dir / "vocab.json")), config,
                                      "training")
    assert [Path(s["audio_file"]).stem for s in usable] == ["ok"]
    reasons = [(kind, path.stem) for kind, path, _detail in skipped]
    assert reasons == [("too short", "short"), ("too long", "long"), ("with unknown characters", "odd"),
                       ("unreadable", "missing")]
    summary = _skipped_summary(skipped * 50, tmp_path)  # one part per reason, however many clips
    assert summary.startswith("50 too short (e.g. short.wav: 0.20 s is shorter than 0.5 s); "
                              "50 too long (e.g. long.wav: 4.00 s is longer than 3.00 s); "), summary
    assert "50 unreadable (e.g. missing.wav: " in summary and len(summary) < 700, summary


def test_missing_inputs_fail_before_a_process_starts(base_dir: Path, tmp_path: Path) -> None:
    plan = make_plan(base_dir, tmp_path / "no-dataset", tmp_path / "run")
    with pytest.raises(FileNotFoundError, match=r"metadata_train\.csv"):
        start_training(plan)
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_not_trained_again(base_dir: Path, dataset_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    final = run_dir / f"{RUN_NAME}-earlier" / "checkpoint_8.pth"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"weights")
    (run_dir / "finished.json").write_text(json.dumps({"checkpoint": f"{RUN_NAME}-earlier/checkpoint_8.pth"}))
    events: list[dict[str, Any]] = []
    assert run_training(make_plan(base_dir, dataset_dir, run_dir), events.append) == final
    assert events == [{"event": "started", "resumed_from": None, "finished": True}]
