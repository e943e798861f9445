"""The private PyTorch APIs this project relies on, each behind one small function: the one place to look when a
PyTorch release renames or removes one (``tests/test_torch_private.py`` names the one that is gone).

PyTorch has no public way yet to ask these four things; each is imported where it is called, so that importing
this module costs nothing and a PyTorch without one fails only where it is used.
"""

from __future__ import annotations

import torch

PRIVATE_APIS = (
    ("torch.cpu", "_is_avx512_bf16_supported"),
    ("torch.cpu", "_is_amx_tile_supported"),
    ("torch.utils._triton", "has_triton"),
    ("torch._inductor.runtime.cache_dir_utils", "default_cache_dir"),
)
"""Each private API the functions below call, as (module, name)."""


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16, bf16 arithmetic in hardware: :func:`vaehelpers.speed.cpu_flags_native_bf16`
    measures bf16 only on a CPU that has it or AMX, since an emulated bf16 trains many times slower than fp32.
    (``torch.cpu._is_avx512_bf16_supported``: oneDNN's own check, the one its bf16 kernels follow.)"""
    return bool(torch.cpu._is_avx512_bf16_supported())


def cpu_has_amx_tile() -> bool:
    """Whether this CPU has AMX tiles (Sapphire Rapids and later), which do bf16 matrix products in hardware: the
    other half of :func:`vaehelpers.speed.cpu_flags_native_bf16`. (``torch.cpu._is_amx_tile_supported``.)"""
    return bool(torch.cpu._is_amx_tile_supported())


def has_triton() -> bool:
    """Whether Triton, the compiler of TorchInductor's GPU kernels, is usable here: without it ``torch.compile``
    fails on a CUDA device, so :func:`vaehelpers.step.compiler_missing` says so and the step stays eager.
    (``torch.utils._triton.has_triton``: the check TorchInductor itself makes, GPU and Triton version included.)"""
    from torch.utils._triton import has_triton as triton_here

    return bool(triton_here())


def inductor_default_cache_dir() -> str:
    """The folder TorchInductor keeps its compiled kernels in when ``TORCHINDUCTOR_CACHE_DIR`` is unset, and which
    importing parts of PyTorch writes into that variable: :func:`vaehelpers.step.use_kernel_cache` tells that
    default from a folder a user chose. (``torch._inductor.runtime.cache_dir_utils.default_cache_dir``.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return default_cache_dir()
