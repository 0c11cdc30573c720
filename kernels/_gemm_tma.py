"""Hopper GEMM for `linear` in bf16/fp16: TMA tile loads, wgmma (tl.dot), K walked in fixed-size pieces.

C[M, N] = A[M, K] @ W[N, K].T (+ bias). K is cut into pieces of PIECE_K columns (a constant of the tile config,
so of (dtype, K, N) only). Each piece is reduced from its first column upward into a fresh fp32 accumulator;
the piece sums are then added in piece order to a zero fp32 total: total = ((0 + p0) + p1) + ...

Two schedules give the very same bits:
- whole-K (`_gemm_tma_kernel` with SPLIT=False): one program per output tile walks every piece and adds them;
- split (SPLIT=True, used when M is small and the tiles alone would leave SMs idle): one program per (tile,
  piece) writes its fp32 piece sum to a workspace [P, M, N]; `_piece_sum_kernel` then adds the P piece sums in
  the same order, adds the bias and rounds -- the same fp32 operations on the same values as the whole-K
  program, so a row's bits never depend on M or on the schedule. No atomics.
Programs are persistent (at most OCC per SM, looping over work items). The piece sum is launched as a
programmatic dependent launch (PDL, Hopper `griddepcontrol`): its launch overlaps the GEMM, and it waits for the
GEMM grid's completion before its first load -- a launch-latency saving, the same data dependence.
`_linear_tma` is the host launcher (descriptors, schedule, workspace). Left out: TMA stores, fp8.
"""
from __future__ import annotations

import torch

from onpolicy.kernels._common import tl, triton

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - no triton, or one without host-side tensor descriptors
    TensorDescriptor = None

if triton is not None:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    @triton.jit
    def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        """Grouped tile order: GROUP_M row tiles share the same W columns while they sit in L2."""
        group = GROUP_M * num_pid_n
        first_m = (tile // group) * GROUP_M
        group_m = min(num_pid_m - first_m, GROUP_M)
        return first_m + (tile % group) % group_m, (tile % group) // group_m

    @triton.jit
    def _gemm_tma_kernel(a_desc, b_desc, c_ptr, ws_ptr, bias_ptr, M, N, K, stride_cm,
                         HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, PIECES: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PIECE_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_PROGS,
                         WARP_SPEC: tl.constexpr, PDL: tl.constexpr):
        """Persistent: program p takes work items p, p + NUM_PROGS, ... Whole-K: an item is an output tile and
        its piece sums are added in order in registers. SPLIT: an item is (tile, piece); its fp32 piece sum
        goes to ws[piece] (bias and rounding are left to `_piece_sum_kernel`). PDL: let the piece-sum kernel
        launch now (it waits for this grid's completion and memory before reading the workspace)."""
        if PDL:
            gdc_launch_dependents()
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        piece_tiles: tl.constexpr = PIECE_K // BLOCK_K
        n_items = num_pid_m * num_pid_n * (PIECES if SPLIT else 1)
        for item in tl.range(tl.program_id(0), n_items, NUM_PROGS, warp_specialize=WARP_SPEC):
            if SPLIT:
                tile = item // PIECES
                piece = item % PIECES
                k_lo = piece * piece_tiles
                k_hi = min(k_lo + piece_tiles, k_tiles)
            else:
                tile = item
                k_lo = 0
                k_hi = k_tiles
            pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            if PIECES > 1 and not SPLIT:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for kt in range(k_lo, k_hi):
                a = a_desc.load([off_m, kt * BLOCK_K])
                b = b_desc.load([off_n, kt * BLOCK_K])
                acc = tl.dot(a, b.T, acc)
                if PIECES > 1 and not SPLIT:
                    if ((kt + 1) % piece_tiles == 0) | (kt == k_tiles - 1):  # a piece ends: fold it, restart
                        total += acc
                        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            offs_m = (off_m + tl.arange(0, BLOCK_M)).to(tl.int64)
            offs_n = off_n + tl.arange(0, BLOCK_N)
            mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
            if SPLIT:
                ws = ws_ptr + piece.to(tl.int64) * M * N + offs_m[:, None] * N + offs_n[None, :]
                tl.store(ws, acc, mask=mask)
            else:
                if PIECES > 1:
                    acc = total
                if HAS_BIAS:
                    acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
                c = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
                tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _piece_sum_kernel(ws_ptr, c_ptr, bias_ptr, M, N, stride_cm, HAS_BIAS: tl.constexpr,
                          PIECES: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        """c[m, n] = round(((0 + ws[0]) + ws[1]) + ... + bias[n]): the whole-K program's adds, in its order.
        PDL (launched as a programmatic dependent of the GEMM): wait for the GEMM grid to finish first."""
        if PDL:
            gdc_wait()
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M * N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for p in tl.static_range(PIECES):
            acc += tl.load(ws_ptr + p * M * N + offs, mask=mask, other=0.0)
        n = offs % N
        if HAS_BIAS:
            acc += tl.load(bias_ptr + n, mask=mask, other=0.0).to(tl.float32)
        tl.store(c_ptr + (offs // N) * stride_cm + n, acc.to(c_ptr.dtype.element_ty), mask=mask)


def _num_sms(device: torch.device) -> int:
    """SM count of a CUDA device; 4 for CPU tensors (interpreter tests then see both schedules)."""
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


_SMS: dict[int, int] = {}


# Launch the piece-sum kernel as a programmatic dependent of the split GEMM (Hopper PDL; CUDA only).
PIECE_SUM_PDL = True


def _use_split(tiles: int, pieces: int, sms: int) -> bool:
    """Split schedule (one program per (tile, K piece)) when the tiles alone would leave SMs idle."""
    return pieces > 1 and 4 * tiles <= sms


def _linear_tma(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: dict,
                split: bool | None = None) -> torch.Tensor:
    """x2d[M, K] @ weight[N, K].T (+ bias) on the TMA GEMM with tile config `cfg`; whole-K programs, or one
    program per (tile, K piece) plus an ordered piece sum when the tiles alone would leave SMs idle
    (`split` forces a schedule: benchmarks and tests; both give the same bits)."""
    M, K = x2d.shape
    N = weight.shape[0]
    c = torch.empty((M, N), device=x2d.device, dtype=x2d.dtype)
    if M == 0 or N == 0:
        return c
    if x2d.data_ptr() % 16 or x2d.stride(0) != K or x2d.stride(1) != 1:
        x2d = x2d.clone(memory_format=torch.contiguous_format)  # fresh allocation: aligned rows
    bm, bn, bk, pk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["PIECE_K"]
    a_desc = TensorDescriptor(x2d, [M, K], [K, 1], [bm, bk])
    b_desc = TensorDescriptor(weight, [N, K], [K, 1], [bn, bk])
    pieces = triton.cdiv(K, pk)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    sms = _num_sms(x2d.device)
    split = _use_split(tiles, pieces, sms) if split is None else (split and pieces > 1)
    ws = torch.empty((pieces, M, N), device=x2d.device, dtype=torch.float32) if split else c
    bias_arg = bias if bias is not None else c
    pdl = split and x2d.is_cuda and cfg.get("PDL", PIECE_SUM_PDL)
    progs = min(tiles * (pieces if split else 1), sms * cfg.get("OCC", 1))
    _gemm_tma_kernel[(progs,)](
        a_desc, b_desc, c, ws, bias_arg, M, N, K, c.stride(0), HAS_BIAS=bias is not None, SPLIT=split,
        PIECES=pieces, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PIECE_K=pk, GROUP_M=cfg["GROUP_M"], NUM_PROGS=progs,
        WARP_SPEC=cfg.get("WARP_SPEC", False), PDL=pdl, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if split:
        block = 1024
        extra = dict(launch_pdl=True) if pdl else {}
        _piece_sum_kernel[(triton.cdiv(M * N, block),)](ws, c, bias_arg, M, N, c.stride(0),
                                                        HAS_BIAS=bias is not None, PIECES=pieces, BLOCK=block,
                                                        PDL=pdl, num_warps=4, **extra)
    return c
