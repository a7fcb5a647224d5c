"""Turn a fine-tuning run's trainer checkpoint into the GPT-only fp16 weights a voice is served with."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceforge.services.engine import CONDITIONING_RATE

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["GPT_PREFIX", "ExportedGpt", "export_gpt", "recompute_latent"]

# Trainer checkpoint keys of the Xtts model's GPT; the rest (xtts.hifigan_decoder.*, dvae.*, the mel
# spectrogram modules, xtts.mel_stats) is either unchanged by GPT-only training or training-only.
GPT_PREFIX = "xtts.gpt."
# Inference-time aliases of tensors stored under their own names (init_gpt_for_inference adds them);
# coqui's trainer drops them before saving, but a checkpoint of a model that ran a test synthesis
# could still hold them.
_ALIASES = ("gpt_inference.", "gpt.wte.")


@dataclass(frozen=True)
class ExportedGpt:
    """What export_gpt wrote: the file, its size in bytes, and the tensors and values it holds."""

    path: Path
    size: int
    tensors: int
    parameters: int


def export_gpt(trainer_checkpoint: Path, out_path: Path) -> ExportedGpt:
    """Keep only the GPT weights of a coqui trainer checkpoint, as fp16, in a file of their own.

    Keys lose their `xtts.gpt.` prefix, so `model.gpt.load_state_dict(torch.load(out_path),
    strict=False)` takes them on a loaded Xtts model (fp16 values load into an fp32 model). Optimiser
    state, the DVAE, the mel-spectrogram modules and the HiFiGAN decoder are dropped: at full size
    the 5.6 GB checkpoint becomes 0.88 GB. The file appears complete or not at all (written under a
    temporary name, then renamed).
    """
    import torch

    trainer_checkpoint, out_path = Path(trainer_checkpoint), Path(out_path)
    # mmap: only the GPT's pages of a multi-GB checkpoint are ever read.
    checkpoint = torch.load(trainer_checkpoint, map_location="cpu", mmap=True, weights_only=True)
    model_state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(model_state, dict):
        msg = f"{trainer_checkpoint} is not a coqui trainer checkpoint (no 'model' state dict)"
        raise ValueError(msg)

    state: dict[str, torch.Tensor] = {}
    for key, value in model_state.items():
        if not key.startswith(GPT_PREFIX):
            continue
        name = key[len(GPT_PREFIX):]
        if name.startswith(_ALIASES):
            continue
        tensor = value.detach()
        # Floats go to fp16 (half the size; the serving model casts back on load); a copy in any
        # case, so the file holds its own storage and not a view of the mapped checkpoint.
        state[name] = tensor.to(torch.float16) if tensor.is_floating_point() else tensor.clone()
    if not state:
        msg = f"{trainer_checkpoint} holds no {GPT_PREFIX}* weights: not an XTTS GPTTrainer checkpoint"
        raise ValueError(msg)

    partial = out_path.with_name(f".{out_path.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, out_path)
    finally:
        partial.unlink(missing_ok=True)
    exported = ExportedGpt(path=out_path, size=out_path.stat().st_size, tensors=len(state),
                           parameters=sum(tensor.numel() for tensor in state.values()))
    log.info("exported %d GPT tensors (%d values) from %s (%.1f MB) to %s (%.1f MB)", exported.tensors,
             exported.parameters, trainer_checkpoint, trainer_checkpoint.stat().st_size / 1e6, out_path,
             exported.size / 1e6)
    return exported


def recompute_latent(model: Any, reference: Any) -> torch.Tensor:
    """A voice's GPT conditioning latent, computed by the model's GPT as it is now (CPU tensor).

    The conditioning encoder and perceiver live inside the GPT and are trained with it, so after
    fine-tuning a voice's `gpt_cond_latent` must be recomputed with its fine-tuned GPT active
    (weights.GptWeights.activate); its speaker embedding (HiFiGAN's speaker encoder) does not change.
    reference is mono float audio at 22.05 kHz (numpy array or tensor), as for cloning, and goes
    through the same call as Engine.compute_latents. Call under the engine's model lock.
    """
    import numpy as np
    import torch

    if isinstance(reference, torch.Tensor):
        audio = reference.detach().to(torch.float32).reshape(1, -1).cpu()
    else:
        audio = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)).reshape(1, -1)
    with torch.inference_mode():
        latent = model.get_gpt_cond_latents(audio, CONDITIONING_RATE)
    return latent.detach().cpu()
