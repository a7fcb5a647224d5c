"""Swap voices' fine-tuned GPT weights in and out of a loaded XTTS-v2 model, keeping recent ones resident."""

from __future__ import annotations

import logging
import os
import pickle
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceforge import metrics

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["GptWeights", "UnusableWeights", "gpt_layout"]


class UnusableWeights(ValueError):
    """A fine-tuned GPT weight file this model cannot speak with: damaged, or made for another checkpoint."""


@dataclass(frozen=True)
class _Layout:
    """The GPT's state-dict names: each tensor once (canonical), and the names that alias one of them."""

    shapes: dict[str, tuple[int, ...]]  # canonical name -> shape
    aliases: dict[str, str]  # alias name -> canonical name it shares storage with


def gpt_layout(gpt: Any) -> _Layout:
    """Canonical and alias names of a GPT module's state dict.

    init_gpt_for_inference registers the same tensors a second time (`gpt_inference.*` wraps the GPT's
    own modules and `gpt.wte` is `mel_embedding`); fine-tuned weight files hold each tensor once, under
    the name it has in training, which is its first name in registration order.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[int, tuple[int, ...], tuple[int, ...]], str] = {}
    for name, tensor in gpt.state_dict().items():
        identity = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and identity in first:
            aliases[name] = first[identity]
        else:
            first[identity] = name
            shapes[name] = tuple(tensor.shape)
    return _Layout(shapes, aliases)


class GptWeights:
    """Which GPT weights a loaded Xtts model holds: the base model's, or one voice's fine-tuned ones.

    activate(model, path) copies a fine-tuned weight file (export.export_gpt's fp16 output) into
    model.gpt in place; activate(model, None) puts the base weights back, exactly (an fp32 copy of
    them is taken on first use, so the model must hold the base weights then). The `resident` most
    recently used fine-tuned files stay loaded (memory-mapped on CPU, in device memory on a GPU), so
    switching between a few voices does not reread their files; a file replaced on disk is reloaded.

    Not thread-safe, and the weights must never change under a running generation: call activate()
    under the engine's model lock, in the same critical section as the synthesis that needs those
    weights (and as recompute_latent for a newly fine-tuned voice).

    Swapping is load_state_dict, i.e. copy_ into the existing parameters, and the inference wrapper
    that generation runs through (gpt.gpt_inference, built by init_gpt_for_inference) holds those same
    module objects, not copies: a swap is visible to model.inference and streaming alike. Replacing
    the parameter tensors instead (assign=True, or setattr) would leave the wrapper on the old ones.
    """

    def __init__(self, resident: int = 2) -> None:
        if resident < 0:
            msg = "resident must be 0 or more"
            raise ValueError(msg)
        self.resident = resident
        self._model: weakref.ref[Any] | None = None  # the model whose base weights are held
        self._layout: _Layout | None = None
        self._base: dict[str, torch.Tensor] | None = None
        self._loaded: OrderedDict[str, tuple[tuple[int, int, int], dict[str, torch.Tensor]]] = OrderedDict()
        self._active: tuple[str, tuple[int, int, int]] | None = None  # (path, file identity); None: base
        self.last_swap_s: float | None = None

    @property
    def active(self) -> Path | None:
        """The fine-tuned weight file the model holds now; None for the base weights."""
        return None if self._active is None else Path(self._active[0])

    def activate(self, model: Any, weights: str | os.PathLike[str] | None) -> bool:
        """Make model.gpt hold these weights (a fine-tuned file, or None for the base). True if it swapped."""
        import torch

        self._adopt(model)
        if weights is None:
            if self._active is None:
                return False
            target: tuple[str, tuple[int, int, int]] | None = None
        else:
            path = str(Path(weights).resolve())
            try:
                target = (path, _identity(path))
            except FileNotFoundError:
                # Removed (a retrained voice's old file, a deleted voice) while sentences decode with it:
                # those finish with the weights in memory; any other use of the file fails as before.
                if self._active is not None and self._active[0] == path:
                    return False
                raise
            if target == self._active:
                return False

        started = time.perf_counter()
        state = self._base if target is None else self._state(*target, device=_device(model))
        assert state is not None
        # Whatever the caller's grad or inference mode: these are plain in-place parameter copies.
        with torch.inference_mode(False), torch.no_grad():
            try:
                result = model.gpt.load_state_dict(state, strict=False)
            except BaseException:
                # Half-copied weights would be a mix of two voices: go back to the base.
                self._active = None
                model.gpt.load_state_dict(self._base, strict=False)
                raise
        self._check_result(result)
        self._active = target
        self.last_swap_s = time.perf_counter() - started
        log.debug("GPT weights now %s (%.3f s)", target[0] if target else "base", self.last_swap_s)
        return True

    def forget(self, weights: str | os.PathLike[str]) -> None:
        """Drop a file from the resident set (its voice was deleted or retrained)."""
        self._loaded.pop(str(Path(weights).resolve()), None)

    def _adopt(self, model: Any) -> None:
        """Take the base weights from the first model seen; one GptWeights serves one model."""
        held = self._model() if self._model is not None else None
        if held is model:
            return
        if held is not None:
            msg = "this GptWeights already manages another model"
            raise RuntimeError(msg)
        import torch

        # A first model, or a reloaded one (the old one is gone): start afresh.
        self._loaded.clear()
        self._active = None

        layout = gpt_layout(model.gpt)
        with torch.inference_mode(False), torch.no_grad():
            state = model.gpt.state_dict()
            self._base = {name: state[name].detach().clone() for name in layout.shapes}
        self._layout = layout
        self._model = weakref.ref(model)
        log.info("holding the base GPT weights: %d tensors, %.0f MB", len(self._base),
                 sum(t.numel() * t.element_size() for t in self._base.values()) / 1e6)

    def _state(self, path: str, identity: tuple[int, int, int], *, device: Any) -> dict[str, torch.Tensor]:
        cached = self._loaded.get(path)
        hit = cached is not None and cached[0] == identity
        metrics.record_cache("finetuned_weights", hit=hit)
        if hit:
            self._loaded.move_to_end(path)
            return cached[1]
        import torch

        try:
            with torch.inference_mode(False):
                state = torch.load(path, mmap=True, weights_only=True, map_location=device)
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as error:
            # What torch.load raises for a truncated, overwritten or foreign file.
            from voiceforge.services.engine import first_line

            msg = f"{path} cannot be read as GPT weights ({first_line(error)})"
            raise UnusableWeights(msg) from error
        self._check_file(path, state)
        if self.resident:
            self._loaded[path] = (identity, state)
            self._loaded.move_to_end(path)
            while len(self._loaded) > self.resident:
                self._loaded.popitem(last=False)
        return state

    def _check_file(self, path: str, state: Any) -> None:
        """Refuse a file that does not cover exactly this GPT: with strict=False a missing tensor would
        silently keep the previous voice's values, and a wrong shape would fail half-way through."""
        assert self._layout is not None
        if not isinstance(state, dict):
            msg = f"{path} is not a GPT state dict"
            raise UnusableWeights(msg)
        expected = self._layout.shapes
        missing = sorted(expected.keys() - state.keys())
        unexpected = sorted(state.keys() - expected.keys())
        wrong = sorted(name for name in expected.keys() & state.keys()
                       if tuple(state[name].shape) != expected[name])
        if missing or unexpected or wrong:
            msg = (f"{path} does not fit this model's GPT: missing {missing[:5]}, unexpected "
                   f"{unexpected[:5]}, wrong shape {wrong[:5]}")
            raise UnusableWeights(msg)

    def _check_result(self, result: Any) -> None:
        assert self._layout is not None
        # The only names load_state_dict may report missing are aliases of tensors it did load.
        stray = [name for name in result.missing_keys if name not in self._layout.aliases]
        if stray or result.unexpected_keys:
            msg = f"GPT weight swap left {stray[:5]} missing and {result.unexpected_keys[:5]} unexpected"
            raise RuntimeError(msg)


def _identity(path: str) -> tuple[int, int, int]:
    """Changes when the file is replaced (a retrained voice), so a stale resident copy is not used."""
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _device(model: Any) -> Any:
    return next(model.gpt.parameters()).device
