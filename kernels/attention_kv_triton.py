"""Triton KV-cache write of `kernels.write_kv_cache`: one program per new token copies its k and v rows into
their cache slots (distinct slots: no atomics, no sort). Left out: quantised (fp8) caches."""
from __future__ import annotations

from onpolicy.kernels._common import require_triton, tl, triton

if triton is not None:

    @triton.jit
    def _kv_write_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, stride_k, stride_v, stride_kc, stride_vc,
                         ROW: tl.constexpr, BLOCK: tl.constexpr):
        """One program per new token: copy its k and v rows (all kv heads, ROW elements) into cache slot
        slot_mapping[t]. Slots are distinct, so no two programs write one place (no atomics, no sort)."""
        t = tl.program_id(0).to(tl.int64)
        slot = tl.load(slot_ptr + t)
        offs = tl.arange(0, BLOCK)
        ok = offs < ROW
        tl.store(kc_ptr + slot * stride_kc + offs, tl.load(k_ptr + t * stride_k + offs, mask=ok), mask=ok)
        tl.store(vc_ptr + slot * stride_vc + offs, tl.load(v_ptr + t * stride_v + offs, mask=ok), mask=ok)


def kv_write_triton(k_cache, v_cache, slot_mapping, k, v) -> None:
    """k/v [T, Hkv, D] (each token's row contiguous) into k_cache/v_cache [slots, Hkv, D] at slot_mapping [T]."""
    require_triton("write_kv_cache")
    t, hkv, d = k.shape
    if t:
        row = hkv * d
        _kv_write_kernel[(t,)](k, v, k_cache, v_cache, slot_mapping, k.stride(0), v.stride(0), k_cache.stride(0),
                               v_cache.stride(0), ROW=row, BLOCK=triton.next_power_of_2(row), num_warps=4)
