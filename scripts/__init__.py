"""Benchmarks, the determinism demo, the doctor and plotting: run each as a module from the repository root,
`python -m scripts.<name> [--help]`, so `onpolicy` and `scripts.common` (the shared helpers) import without an
install or any sys.path edit."""
