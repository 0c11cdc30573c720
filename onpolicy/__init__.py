"""onpolicy: true on-policy RL for LLMs -- one model, one set of batch-invariant kernels, bitwise parity."""
__version__ = "0.1.0"
