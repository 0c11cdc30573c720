"""onpolicy: true on-policy RL for LLMs -- one model, one set of batch-invariant kernels, bitwise parity.

The batch-invariant ops live in the repository's top-level `kernels/` folder (one op a file) and are imported
as `onpolicy.kernels`: a top-level `kernels` would clash with Hugging Face's `kernels` package. A regular
install ships the folder as onpolicy/kernels (pyproject's package-dir); in a checkout (editable install, or
`PYTHONPATH=$PWD`) the folder beside onpolicy/ is mapped below.
"""
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"


def __getattr__(name: str):
    """`onpolicy.train(config, reward_funcs=[...], reward_weights=[...])` (onpolicy.api), imported on first use."""
    if name == "train":
        from onpolicy.api import train

        return train
    raise AttributeError(f"module 'onpolicy' has no attribute {name!r}")


def _map_checkout_kernels() -> None:
    """In a checkout (pyproject.toml beside onpolicy/), register its own kernels/ as `onpolicy.kernels`, so a
    second worktree never picks up another checkout's kernels through an editable install's mapping."""
    name = __name__ + ".kernels"
    package = _Path(__file__).resolve().parent
    folder = package.parent / "kernels"
    if name in _sys.modules or (package / "kernels").is_dir() or not (package.parent / "pyproject.toml").is_file():
        return  # already imported, or a regular install that ships onpolicy/kernels itself
    spec = _util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    if spec is None or not folder.is_dir():
        raise ImportError(f"onpolicy.kernels: {folder} is missing from this checkout")
    module = _util.module_from_spec(spec)
    _sys.modules[name] = module
    spec.loader.exec_module(module)


def _hand_back_top_level_kernels() -> None:
    """kernels/__init__.py ran as top-level `kernels`: the checkout root is on sys.path (`python -m`, `-c`) and
    something (e.g. transformers' hub-kernels glue) imported Hugging Face's package by name. Put theirs in
    sys.modules when it is installed; otherwise leave ours, which has no `__version__`, so transformers'
    `is_kernels_available()` stays False (raising here would break transformers' own import, which probes it)."""
    from importlib.machinery import PathFinder

    root = _Path(__file__).resolve().parent.parent
    spec = PathFinder.find_spec("kernels", [p for p in _sys.path if _Path(p or ".").resolve() != root])
    if spec is None:
        return
    module = _util.module_from_spec(spec)
    _sys.modules["kernels"] = module
    spec.loader.exec_module(module)


from onpolicy import determinism as _determinism  # noqa: E402,F401  (MKL's reproducible mode, before any GEMM)

_map_checkout_kernels()
