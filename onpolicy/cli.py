"""The recipes' command line: `train_command(argv, algo)` parses the config and runs `onpolicy.train`; any
command runs inside `user_errors`, which turns a user error into one line on stderr and an exit status.

    ValueError (ConfigError: config, data, launch)   -> "error: <message>", exit 2
    RunStopped (NaN, strict on-policy, disk full)    -> "error: <message>", exit 1
    Ctrl-C / SIGTERM in the step loop                -> "interrupted: <message>", exit 130 / 143

`--debug` in argv (or ONPOLICY_DEBUG=1) keeps the traceback instead. Under torchrun the message also goes to
the agent's failure summary. Left out: sub-commands (each recipe is its own script).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from onpolicy.config_cli import DEBUG_ENV


def split_debug(argv: list[str] | None) -> tuple[list[str], bool]:
    """(argv without `--debug`, whether the traceback is wanted); argv None: sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return [a for a in argv if a != "--debug"], debug


def _record_for_torchrun(message: str) -> None:
    """Under torchrun, put the message in the agent's failure summary ("Root Cause") instead of 'N/A'."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    import json
    import time

    with open(path, "w") as f:
        json.dump({"message": {"message": message, "extraInfo": {"py_callstack": message,
                                                                 "timestamp": str(int(time.time()))}}}, f)


@contextlib.contextmanager
def user_errors(debug: bool = False):
    """User errors inside the block become one line and SystemExit (module doc); `debug`: re-raised as is."""
    from onpolicy.trainer.health import RunStopped

    try:
        yield
    except (ValueError, RunStopped) as e:
        if debug:
            raise
        message = "error: " + (" ".join(str(e).split("\n")) or type(e).__name__)
        print(message, file=sys.stderr, flush=True)
        _record_for_torchrun(message)
        raise SystemExit(1 if isinstance(e, RunStopped) else 2) from None
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(f"interrupted: {' '.join(str(e).split()) or 'stopped by Ctrl-C'}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(e, "exit_code", 130)) from None


def train_command(argv: list[str] | None = None, algo: str | None = None, parts=None) -> dict:
    """A training recipe: parse argv (`onpolicy.config.parse_args`; `algo` fixes trainer.algo) and run
    `onpolicy.train` on it (`parts`: onpolicy.trainer.TrainerParts to swap, default the standard ones); returns
    the run summary."""
    from onpolicy.api import train
    from onpolicy.config import parse_args

    argv, debug = split_debug(argv)
    with user_errors(debug):
        cfg = parse_args(argv, forced={"trainer.algo": algo} if algo else None)
        return train(cfg, parts=parts)


def command(main, argv: list[str] | None = None) -> Any:
    """Any other recipe: `main(argv)` (without `--debug`) inside `user_errors`."""
    argv, debug = split_debug(argv)
    with user_errors(debug):
        return main(argv)
