"""DAPO (clip-higher, token-level loss; dynamic sampling / overlong filter via config):
recipes/grpo.py with `trainer.algo: dapo` fixed (a conflicting --trainer.algo is an error).

Usage as grpo.py: `python recipes/dapo.py --config configs/<exp>.yaml [--section.field value ...]`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo import main  # noqa: E402

if __name__ == "__main__":
    main(algo="dapo")
