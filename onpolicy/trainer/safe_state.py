"""Checkpoint files that cannot run code, and a checksum manifest that proves they are the files written.

`save_tree(state, stem)` writes a nested state (dicts, lists, tuples, tensors, numpy arrays, JSON scalars: an
optimizer or scheduler `state_dict`, `onpolicy.determinism.rng_state()`) as `<stem>.safetensors` (every tensor,
bit for bit, dtype kept) and `<stem>.json` (the structure, tensors referenced by key); `load_tree(stem)` rebuilds
it. Neither format can execute code when read (no pickle). Python floats round-trip exactly through JSON.
`write_manifest(dir)` records the sha256 and size of every file under a checkpoint directory in
`manifest.json`; `verify_manifest(dir)` re-hashes them and raises ValueError naming the first file that is
missing or differs (a flipped bit in the weights included). Left out: encryption or signatures (the manifest
detects corruption, not a forger who rewrites it too); torch.distributed.checkpoint's own `.metadata` file
(FSDP2 shards) is read by torch with pickle after the manifest check passes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 22
_verified: dict[tuple[str, int], bool] = {}  # (manifest path, mtime_ns) already checked in this process


def _encode(obj, tensors: dict, where: str):
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, (bool, int, float, str)) or obj is None:
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise ValueError(f"checkpoint: {where} is a {type(obj).__name__}, which cannot be stored without pickle; "
                     "allowed: tensors, numpy arrays, dicts, lists, tuples, numbers, strings, None")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in obj["__dict__"]}
    if "__ndarray__" in obj:
        import numpy as np

        return np.array(obj["__ndarray__"], dtype=obj["dtype"])
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


def save_tree(state, stem: str | Path) -> None:
    """`<stem>.safetensors` + `<stem>.json` (see module doc)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors, "state")
    seen: set[int] = set()
    for key, t in tensors.items():  # safetensors refuses tensors sharing memory: give repeats their own copy
        if t.numel() and t.data_ptr() in seen:
            tensors[key] = t.clone()
        seen.add(tensors[key].data_ptr())
    save_file(tensors, f"{stem}.safetensors")
    Path(f"{stem}.json").write_text(json.dumps({"format": FORMAT, "tree": tree}))


def load_tree(stem: str | Path):
    """The state `save_tree` wrote (tensors on CPU)."""
    from safetensors.torch import load_file

    tensors = load_file(f"{stem}.safetensors")
    doc = json.loads(Path(f"{stem}.json").read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"checkpoint: {stem}.json has format {doc.get('format')!r}; this version reads {FORMAT}")
    return _decode(doc["tree"], tensors)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: str | Path) -> Path:
    """sha256 and size of every file under `root` (relative paths) into `root/manifest.json`."""
    root = Path(root)
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(root).as_posix()] = {"sha256": _sha256(path), "size": path.stat().st_size}
    out = root / MANIFEST
    out.write_text(json.dumps({"format": FORMAT, "files": files}, indent=1))
    return out


def verify_manifest(root: str | Path) -> None:
    """Raise ValueError unless every file `root/manifest.json` lists is present with its size and sha256."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"checkpoint: {str(root)!r} has no {MANIFEST} (an incomplete checkpoint)")
    memo = (str(manifest.resolve()), manifest.stat().st_mtime_ns)
    if _verified.get(memo):
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"checkpoint: {str(manifest)!r} is not a valid manifest") from None
    for rel, want in files.items():
        path = root / rel
        if not path.is_file():
            raise ValueError(f"checkpoint: {str(path)!r} is missing (listed in {MANIFEST})")
        if path.stat().st_size != want["size"] or _sha256(path) != want["sha256"]:
            raise ValueError(f"checkpoint: {str(path)!r} does not match its sha256 in {MANIFEST} (corrupted or "
                             "modified after it was saved); not loaded")
    _verified[memo] = True

