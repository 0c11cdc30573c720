"""Batch-invariant matmul: `linear(x, weight, bias)` = x @ weight.T (+ bias) and `matmul(a, b)`.

GPU, bf16/fp16 `linear` with a row-major weight (`_tma_ok`, a property of the weight and dtype, never of M):
the Hopper TMA GEMM in `_gemm_tma.py` -- persistent programs, TMA tile loads, wgmma; K is reduced in fixed
PIECE_K pieces, each from its first column upward into a fresh fp32 accumulator, and the piece sums are added
in piece order. When M is small the pieces run in separate programs and an ordered piece-sum kernel adds them:
the same fp32 operations, so the same bits as the whole-K programs used for large M.
GPU, everything else (fp32, `matmul`, strided weights): the pointer GEMM `_matmul_kernel`; each
[BLOCK_M, BLOCK_N] tile is one program that walks all of K in BLOCK_K steps from k = 0 upward, accumulating
in fp32, and rounds once; fp32 dots use `input_precision="ieee"` (no TF32).
Both take their tiles from `tile_config(dtype, K, N)` only -- never from M -- so a row's arithmetic is the same
whatever rows come with it. No atomics, no autotune; tiles are visited in grouped order (L2 reuse of B).

CPU: fp32 `torch.mm` on fixed [MATMUL_CPU_TILE, K] zero-padded row blocks (`cpu_row_tiled`), N zero-padded to a
multiple of CPU_N_ALIGN; bf16/fp16 upcast to fp32 (one rounding, like the GPU). MKL splits a GEMM by shape and
thread count and its edge kernels (few rows, N % 16 in 1..11) round differently (MKL 2024.2, AVX-512: 64-row
tiles with N % 16 == 0 give the same bits for 1 to 128 threads; [5, 128] @ [128, 86] differs at 2 threads).
Backward: GPU, plain torch matmuls (deterministic, not batch invariant); CPU, `grad_mm`, the same fixed-tile mm
(same bits for any thread count; not batch invariant). Left out: stream-K, fp8, TMA for `matmul` and fp32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from onpolicy.kernels._common import (FLOATS, check, check_same_device, check_tensor, cpu_row_tiled, is_invariant, require_triton, tl,
                             tree_sum_last, triton, use_triton)
from onpolicy.kernels._gemm_tma import TensorDescriptor, _linear_tma, _num_sms  # noqa: F401  (tests, scripts)

# CPU rows per fixed-shape tile ([4096,256]x[256,768] fp32, 2 threads: tile 32 ~29 ms, 64 ~8, 128/256 ~7, plain
# mm ~32 ms); 64 keeps decode padding small. Widths padded to CPU_N_ALIGN (MKL's column edge kernels vary).
MATMUL_CPU_TILE = 64
CPU_N_ALIGN = 16


def tile_config(dtype: torch.dtype, K: int, N: int) -> dict:
    """Fixed GEMM tile config for (dtype, K, N); M never enters, so every batch size runs the same tiles.

    bf16/fp16 run the Hopper TMA GEMM (`_gemm_tma.py`): PIECE_K is its fixed K piece size, OCC its programs
    per SM. Chosen from H100 sweeps (scripts/sweep_linear.py, docs/invariance.md). For each K the config is
    one and the same for every N >= 4096 and every N < 1024, so token_logprobs' vocab-span GEMMs (widths
    4096 * j and a 384-column tail) all share it."""
    if dtype == torch.float32:  # ieee fp32 dots: no tensor-core TF32, smaller tiles keep registers in check
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    if 1024 <= N < K:  # narrow output, long K (down / o projections): K pieces that small M splits
        return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4,
                    PIECE_K=_narrow_piece_k(K))
    if K >= 4096:  # long K and wide N: the big tile wins at every M
        return dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4, PIECE_K=K)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, PIECE_K=K, OCC=2)


def _narrow_piece_k(K: int) -> int:
    """K piece of the narrow-output config (H100 probe, `python -m scripts.sweep_linear --part probe`, GPU time vs
    cuBLAS at M = 1..4096): 512 for K <= 4096 (3072 x 1024: 0.93-0.95x at M <= 64 vs 0.75 with 1024, about
    0.03x slower at M >= 1024), 1024 up to 8192 (6144 x 2048: 512 lost at every M), 4096 above (12288 x 4096:
    at least as fast as 1024 at every M)."""
    return 512 if K <= 4096 else (1024 if K <= 8192 else 4096)


if triton is not None:
    from onpolicy.kernels._common import dot

    @triton.jit
    def _matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                       stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                       HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, EVEN_K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr):
        """C[M, N] = A[M, K] @ B[K, N] (+ bias[N]); one program per output tile, full K loop in order."""
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        group = GROUP_M * num_pid_n
        first_m = (pid // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % group) % group_m
        pid_n = (pid % group) // group_m

        offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
        b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
        mask_m = offs_m[:, None] < M
        mask_n = offs_n[None, :] < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if EVEN_K:  # K % BLOCK_K == 0 (a property of K alone): no K mask needed
                a = tl.load(a_ptrs, mask=mask_m, other=0.0)
                b = tl.load(b_ptrs, mask=mask_n, other=0.0)
            else:
                k_left = K - k0
                a = tl.load(a_ptrs, mask=mask_m & (offs_k[None, :] < k_left), other=0.0)
                b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n, other=0.0)
            acc = dot(a, b, acc, IEEE)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            acc += bias[None, :]
        c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_m & mask_n)


def _mm_triton(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the Triton GEMM on 2-D a[M, K] and b[K, N] (any strides); output contiguous [M, N] in a.dtype."""
    require_triton("matmul")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_() if bias is None else c.copy_(bias.expand(M, N))
    cfg = dict(tile_config(a.dtype, K, N))
    for key in ("PIECE_K", "OCC"):  # TMA-GEMM keys: the pointer GEMM walks K whole, one program per tile
        cfg.pop(key, None)
    grid = (triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"]),)
    _matmul_kernel[grid](
        a, b, c, bias if bias is not None else c, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        HAS_BIAS=bias is not None, IEEE=a.dtype == torch.float32, EVEN_K=K % cfg["BLOCK_K"] == 0, **cfg)
    return c


def _tma_ok(x2d: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether linear runs the TMA GEMM: bf16/fp16, weight [N, K] row-major, 16-byte aligned rows (K % 8 == 0).
    A property of the weight and dtype only -- never of M -- so a row always takes one path."""
    K = weight.shape[1]
    return (x2d.dtype in (torch.bfloat16, torch.float16) and TensorDescriptor is not None and K > 0
            and K % 8 == 0 and weight.stride(1) == 1 and weight.stride(0) == K and weight.data_ptr() % 16 == 0)


def _linear_triton(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x2d[M, K] @ weight[N, K].T: the TMA GEMM for bf16/fp16 row-major weights, else the pointer GEMM
    (weight read transposed through strides, no copy)."""
    if _tma_ok(x2d, weight):
        require_triton("linear")
        return _linear_tma(x2d, weight, bias, tile_config(x2d.dtype, weight.shape[1], weight.shape[0]))
    return _mm_triton(x2d, weight.t(), bias)


def _mm_cpu(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """CPU batch-invariant a[M, K] @ b[K, N]: fp32 mm on fixed [MATMUL_CPU_TILE, K] row tiles, one rounding."""
    out_dtype, N = a.dtype, b.shape[1]
    bf = b.float()
    if N % CPU_N_ALIGN:
        bf = F.pad(bf, (0, -N % CPU_N_ALIGN))
    biasf = None if bias is None else bias.float()

    def tile_fn(block: torch.Tensor) -> torch.Tensor:
        out = torch.mm(block.float(), bf)[:, :N]
        return out if biasf is None else out + biasf

    return cpu_row_tiled(tile_fn, a, tile=MATMUL_CPU_TILE).to(out_dtype)


def grad_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for a backward pass: CPU, the fixed-tile `_mm_cpu` (same bits for any thread count); GPU, torch's
    matmul (deterministic, not batch invariant)."""
    return _mm_cpu(a, b) if a.device.type == "cpu" else a @ b


def _mm_invariant(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _mm_triton(a, b, bias) if use_triton(a, b) else _mm_cpu(a, b, bias)


def _linear_invariant(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return _linear_triton(x2d, weight, bias) if use_triton(x2d, weight) else _mm_cpu(x2d, weight.t(), bias)


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """torch's default `F.linear` (cuBLAS/MKL; not batch invariant)."""
    return F.linear(x, weight, bias)


def matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


class _Matmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return _mm_invariant(a, b)

    @staticmethod
    def backward(ctx, grad_out):
        a, b = ctx.saved_tensors
        grad_a = grad_mm(grad_out, b.t()) if ctx.needs_input_grad[0] else None
        grad_b = grad_mm(a.t(), grad_out) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias):
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _linear_invariant(x2d, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x2d, weight = ctx.saved_tensors
        grad_x = grad_mm(grad_out, weight) if ctx.needs_input_grad[0] else None
        grad_w = grad_mm(grad_out.t(), x2d) if ctx.needs_input_grad[1] else None
        grad_b = None
        if ctx.has_bias and ctx.needs_input_grad[2]:  # CPU: a fixed-order sum over the tokens
            grad_b = (tree_sum_last(grad_out.t().float()).to(grad_out.dtype) if grad_out.device.type == "cpu"
                      else grad_out.sum(0))
        return grad_x, grad_w, grad_b


def _check_linear(x, weight, bias):
    if (bias is None and isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)
            and x.dtype in FLOATS and x.dtype == weight.dtype and weight.dim() == 2 and x.dim() >= 1
            and x.shape[-1] == weight.shape[1] and x.device == weight.device):
        return  # the common case, tested cheaply: the messages below are built only when something is off
    check_tensor("linear", "x", x)
    check_tensor("linear", "weight", weight)
    check(x.dim() >= 1, "linear", f"x must have shape [..., K], got {tuple(x.shape)}")
    check(weight.dim() == 2, "linear", f"weight must be 2-D [N, K], got shape {tuple(weight.shape)}")
    check(x.shape[-1] == weight.shape[1], "linear",
          f"x's last dim ({x.shape[-1]}) must equal weight.shape[1] (K={weight.shape[1]})")
    check(x.dtype == weight.dtype, "linear", f"x ({x.dtype}) and weight ({weight.dtype}) must have one dtype")
    if bias is not None:
        check_tensor("linear", "bias", bias)
        check(bias.shape == (weight.shape[0],), "linear",
              f"bias must have shape [N]=({weight.shape[0]},), got {tuple(bias.shape)}")
        check(bias.dtype == x.dtype, "linear", f"bias ({bias.dtype}) must have x's dtype ({x.dtype})")
    check_same_device("linear", x=x, weight=weight, bias=bias)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x[..., K] @ weight[N, K].T (+ bias[N]) -> [..., N] in x.dtype; batch invariant; autograd."""
    _check_linear(x, weight, bias)
    if not is_invariant():
        return linear_reference(x, weight, bias)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    out = _Linear.apply(x2d, weight, bias) if needs_grad else _linear_invariant(x2d, weight, bias)
    return out.reshape(*lead, weight.shape[0])


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a[M, K] @ b[K, N] -> [M, N] in a.dtype; batch invariant in M; autograd (backward: `grad_mm`)."""
    check_tensor("matmul", "a", a)
    check_tensor("matmul", "b", b)
    check(a.dim() == 2 and b.dim() == 2, "matmul",
          f"a and b must be 2-D ([M, K] and [K, N]), got {tuple(a.shape)} and {tuple(b.shape)}")
    check(a.shape[1] == b.shape[0], "matmul", f"a.shape[1] ({a.shape[1]}) must equal b.shape[0] ({b.shape[0]})")
    check(a.dtype == b.dtype, "matmul", f"a ({a.dtype}) and b ({b.dtype}) must have one dtype")
    check_same_device("matmul", a=a, b=b)
    if not is_invariant():
        return matmul_reference(a, b)
    return _Matmul.apply(a.contiguous(), b)
