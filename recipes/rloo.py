"""RLOO (leave-one-out baseline):
recipes/grpo.py with `trainer.algo: rloo` fixed (a conflicting --trainer.algo is an error).

Usage as grpo.py: `python recipes/rloo.py --config configs/<exp>.yaml [--section.field value ...]`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grpo import main  # noqa: E402

if __name__ == "__main__":
    main(algo="rloo")
