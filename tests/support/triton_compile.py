"""Compile every kernel launch of the fused Triton step for a GPU, on a machine without one.

Triton's interpreter runs the kernels' arithmetic on a CPU but accepts code its GPU compiler refuses
(a loop-carried value changing type, say). Here TritonStep.step runs with its kernels swapped for
recorders, and each distinct launch (its argument types, constants and warps) is compiled ahead of
time for a GPU architecture with the ptxas that Triton's wheel ships: a kernel the GPU cannot build
fails here, in CI, rather than at a GPU machine's start.
"""

from __future__ import annotations

from typing import Any

import torch

POINTER_TYPES = {torch.float32: "*fp32", torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.int64: "*i64"}
OPTIONS = ("num_warps", "num_stages")


def launches(model: Any, dtype: torch.dtype | None, rows: int, tiling: Any = None) -> list[tuple[Any, dict]]:
    """(kernel, {argument name: value}) for every launch of one step of `rows` rows, in order."""
    from voiceforge.decoding import triton_step
    from voiceforge.decoding.gpt import GptDecoder

    recorded: list[tuple[Any, dict]] = []

    class Recorder:
        def __init__(self, kernel: Any) -> None:
            self.kernel = kernel

        def __getitem__(self, _grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> None:
                names = self.kernel.arg_names
                recorded.append((self.kernel, {**dict(zip(names, args, strict=False)), **kwargs}))
            return launch

    kernels = {name: getattr(triton_step, name) for name in ("_linear_kernel", "_attention_kernel",
                                                             "_combine_kernel")}
    try:
        for name, kernel in kernels.items():
            setattr(triton_step, name, Recorder(kernel))
        with torch.inference_mode():
            decoder = GptDecoder(model, rows, dtype=dtype, cpu_matmul_kind="reference")
            fused = triton_step.TritonStep(decoder, tiling)
            positions = torch.arange(rows) + 5
            fused.step(torch.arange(rows), positions, positions, int(positions.max()) + 1)
    finally:
        for name, kernel in kernels.items():
            setattr(triton_step, name, kernel)
    return recorded


def compile_launch(kernel: Any, arguments: dict, capability: int) -> bytes:
    """The cubin of one launch for CUDA compute capability `capability` (90: H100 and H200)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constants = {}, {}
    for param in kernel.params:
        value = arguments[param.name]
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            signature[param.name] = "i32" if abs(int(value)) < 2 ** 31 else "i64"
    options = {name: arguments[name] for name in OPTIONS if name in arguments}
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                              target=GPUTarget("cuda", capability, 32), options=options)
    return compiled.asm["cubin"]


def distinct(recorded: list[tuple[Any, dict]]) -> dict[str, tuple[Any, dict]]:
    """One launch of each kind: the same kernel, argument types, constants and options compile once."""
    kinds: dict[str, tuple[Any, dict]] = {}
    for kernel, arguments in recorded:
        described = {name: (POINTER_TYPES[value.dtype] if isinstance(value, torch.Tensor) else
                            value if name in OPTIONS or _is_constexpr(kernel, name) else type(value).__name__)
                     for name, value in arguments.items()}
        kinds.setdefault(f"{kernel.__name__} {sorted(described.items())}", (kernel, arguments))
    return kinds


def _is_constexpr(kernel: Any, name: str) -> bool:
    return any(param.name == name and param.is_constexpr for param in kernel.params)
