"""Paged KV cache: block manager with ref counts and a prefix cache, and the per-layer cache tensors.

A full block is keyed by a hash chain over its token ids (blake2b of the previous block's key + its ids), so
a key names the whole prefix. Blocks whose tokens are fully scheduled are registered under their key at
schedule time: the forward writes every layer's new k/v before that layer's attention reads the cache, so a
sequence scheduled later in the same step may already share them. Freed blocks keep their key until they are
reused (least recently freed first), so a finished or preempted sequence's blocks can still be hit.
Only full blocks are shared, and a sequence writes only past its computed tokens, so no copy-on-write.
Left out: sliding windows, swap to CPU, cache-aware eviction priorities.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

import torch


def block_key(parent: bytes | None, token_ids: list[int]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(parent or b"root")
    h.update(",".join(map(str, token_ids)).encode())
    return h.digest()


class Block:
    __slots__ = ("block_id", "ref_count", "key", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.key: bytes | None = None
        self.token_ids: tuple[int, ...] | None = None


class BlockManager:
    """Owns block ids 0..num_blocks-1. A sequence (see scheduler.Sequence) holds `block_table` (ids),
    `block_keys` (hash chain of its full blocks, filled lazily) and `num_registered` (leading blocks of its
    table that are keyed in the cache)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.num_hits = 0  # tokens served from the prefix cache (stats)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def _key(self, seq, i: int) -> bytes:
        keys, bs = seq.block_keys, self.block_size
        while len(keys) <= i:
            j = len(keys)
            keys.append(block_key(keys[j - 1] if j else None, seq.token_ids[j * bs : (j + 1) * bs]))
        return keys[i]

    def match_prefix(self, seq) -> list[int]:
        """Ids of cached blocks equal to seq's leading full blocks; at most (len - 1) // block_size of them
        so the last token is always computed (its hidden state is needed to sample). No side effects."""
        if not self.enable_prefix_caching:
            return []
        hits, bs = [], self.block_size
        for i in range((seq.num_tokens - 1) // bs):
            bid = self.cached.get(self._key(seq, i))
            if bid is None or self.blocks[bid].token_ids != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break
            hits.append(bid)
        return hits

    def blocks_needed(self, seq, num_new_tokens: int) -> int:
        total = -(-(seq.num_computed + num_new_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def can_admit(self, seq, hits: list[int], num_new_tokens: int) -> bool:
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        total = -(-(len(hits) * self.block_size + num_new_tokens) // self.block_size)
        return self.num_free - revived >= total - len(hits)

    def admit(self, seq, hits: list[int]) -> None:
        """Give a waiting sequence (no blocks) the prefix-cache hits; it starts computing after them."""
        assert not seq.block_table and seq.num_computed == 0
        for bid in hits:
            block = self.blocks[bid]
            if block.ref_count == 0:
                del self.free[bid]
            block.ref_count += 1
        seq.block_table = list(hits)
        seq.num_registered = len(hits)
        seq.num_computed = len(hits) * self.block_size
        self.num_hits += seq.num_computed

    def _take(self) -> int:
        bid, _ = self.free.popitem(last=False)
        block = self.blocks[bid]
        if block.key is not None and self.cached.get(block.key) == bid:
            del self.cached[block.key]
        block.key, block.token_ids, block.ref_count = None, None, 1
        return bid

    def allocate(self, seq, num_new_tokens: int, need: int | None = None) -> None:
        """Add the blocks seq needs to compute `num_new_tokens` more tokens (`need`: blocks_needed(...) when the
        caller has it), then key its blocks that these tokens fill. Caller checked `need <= num_free`."""
        if need is None:
            need = self.blocks_needed(seq, num_new_tokens)
        if need:
            if need > len(self.free):
                raise RuntimeError(f"BlockManager.allocate: need {need} blocks, {self.num_free} free")
            seq.block_table.extend(self._take() for _ in range(need))
        bs = self.block_size
        # a block whose last token is a placeholder (async scheduling) is keyed by a later call
        full = min(seq.num_computed + num_new_tokens, len(seq.token_ids) - (seq.pending_row >= 0)) // bs
        if not self.enable_prefix_caching or full <= seq.num_registered:  # a decode step inside a block: nothing
            return
        for i in range(seq.num_registered, full):
            key = self._key(seq, i)
            block = self.blocks[seq.block_table[i]]
            block.key, block.token_ids = key, tuple(seq.token_ids[i * bs : (i + 1) * bs])
            self.cached.setdefault(key, block.block_id)
        seq.num_registered = max(seq.num_registered, full)

    def release(self, seq) -> None:
        """Drop seq's references (tail blocks first, so they are reused before its prefix)."""
        for bid in reversed(seq.block_table):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[bid] = None
        seq.block_table = []
        seq.num_registered = 0

    def reset_prefix_cache(self) -> None:
        """Forget every key (weights changed, cached k/v are stale)."""
        self.cached.clear()
        for block in self.blocks:
            block.key, block.token_ids = None, None


def kv_bytes_per_block(config, block_size: int, dtype: torch.dtype) -> int:
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim * elem


def auto_num_blocks(config, block_size: int, max_num_seqs: int, dtype: torch.dtype, device: torch.device,
                    memory_fraction: float) -> int:
    """Blocks for max_num_seqs full-context sequences, capped by memory (see EngineConfig)."""
    want = max_num_seqs * -(-config.max_position_embeddings // block_size)
    per_block = kv_bytes_per_block(config, block_size, dtype)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * memory_fraction)
    else:
        try:
            physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            physical = 8 << 30
        budget = min(int(physical * memory_fraction), 4 << 30)
    cap = budget // per_block
    if cap < 1:
        raise ValueError(f"engine.num_blocks: not even one KV block ({per_block} bytes) fits the memory budget "
                         f"({budget} bytes); set num_blocks or kv_cache_memory_fraction")
    return max(1, min(want, cap))


def allocate_kv_caches(config, num_blocks: int, block_size: int, dtype: torch.dtype, device, extra_slots: int = 0) -> list:
    """One (k_cache, v_cache) pair per layer, each [num_blocks * block_size + extra_slots, Hkv, D], zero
    filled; the extra slots (past every block) are scratch space for CUDA-graph pad rows."""
    shape = (num_blocks * block_size + extra_slots, config.num_key_value_heads, config.head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(config.num_hidden_layers)]
