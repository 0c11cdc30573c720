"""A run that fails keeps its progress: the last consistent state is saved and the resume command printed.

`StepMark` records, before the first step and after each completed one, what a step changes besides the
weights: the prompt-iterator position, the RNG states and the optimizer's count of started updates. On any
failure inside the step loop (a reward or data error, a NaN, Ctrl-C, SIGTERM) `train()` calls `keep_progress`:
when no optimizer update started since the mark, the weights and optimizer state in memory are those of the
mark, so it rewinds the prompt position and RNG to the mark and saves that step's checkpoint (the same bits a
periodic checkpoint there would hold; skipped when that step is already on disk, and for step 0 except after
a NaN, which keeps the pre-RL policy). Mid-update (an update started: mixed state), or with several processes
(the others may wait in a collective), nothing new is saved and the newest checkpoint on disk is named.
`resume_command(cfg)` reruns the run's own `config.yaml` with `--trainer.resume true`. `stop_signals()` turns
SIGTERM into `RunInterrupted` while the run is in the step loop (main thread only). Left out: saving on
kill -9 or power loss (periodic checkpoints cover those), saving from several processes.
"""
from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from pathlib import Path

from onpolicy.trainer.health import NonFiniteError, RunInterrupted

RECIPES = ("grpo.py", "dapo.py", "rloo.py", "dr_grpo.py")


class StepMark:
    """The state that makes "after `completed` steps" a checkpoint, besides weights and optimizer state."""

    def __init__(self, trainer):
        self.set(trainer, trainer.start_step)

    def set(self, trainer, completed: int) -> None:
        from onpolicy import determinism

        self.completed = completed
        self.prompts = trainer.prompts.state_dict()
        self.rng = determinism.rng_state()
        self.started = trainer.optimizer.steps_started

    def consistent(self, trainer) -> bool:
        """No optimizer update started since the mark (the weights in memory are the mark's)."""
        return trainer.optimizer.steps_started == self.started


def _on_disk(cfg) -> list[tuple[int, Path]]:
    from onpolicy.trainer.checkpoint import checkpoint_root, is_complete, list_checkpoints

    return [(s, p) for s, p in list_checkpoints(checkpoint_root(cfg)) if is_complete(p)]


def keep_progress(trainer, mark: StepMark, error: BaseException, log) -> str | None:
    """Save the mark's checkpoint when that is safe (module doc); returns the policy directory that holds the
    last good state on disk (None when there is none)."""
    from onpolicy import determinism
    from onpolicy.trainer.checkpoint import POLICY_DIR

    k = mark.completed
    wanted = k > 0 or isinstance(error, NonFiniteError)
    saved = [s for s, _ in _on_disk(trainer.cfg)]
    if wanted and trainer.dist.world_size == 1 and mark.consistent(trainer) and k not in saved:
        try:
            trainer.prompts.load_state_dict(mark.prompts)
            determinism.set_rng_state(mark.rng)
            path = trainer.save(k)
            log(f"saved the state after step {k} in {path}")
            return f"{path}/{POLICY_DIR}"
        except Exception as e:  # noqa: BLE001 -- the run's own error is the one to report
            log(f"could not save the state after step {k}: {' '.join(str(e).split())}")
    elif wanted and not mark.consistent(trainer):
        log(f"not saved: the failure came inside an optimizer update of step {k + 1} (the weights in memory are "
            "mixed)")
    done = _on_disk(trainer.cfg)
    return f"{done[-1][1]}/{POLICY_DIR}" if done else None


def resume_command(cfg, world_size: int = 1) -> str:
    """The command that continues this run from its newest checkpoint."""
    import sys

    out = Path(cfg.logging.output_dir).resolve()
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name in RECIPES and argv0.is_file():
        recipe = str(argv0)
    else:
        recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "grpo.py")
    launcher = "accelerate launch --config_file <the same accelerate config> " if world_size > 1 else "python "
    return (f"{launcher}{shlex.quote(recipe)} --config {shlex.quote(str(out / 'config.yaml'))} "
            f"--logging.output_dir {shlex.quote(str(out))} --trainer.resume true")


def interrupted(error: BaseException, step: int, saved: str | None, command: str) -> RunInterrupted:
    """The one-line message of a run stopped by Ctrl-C or SIGTERM."""
    how = getattr(error, "signal_name", "Ctrl-C")
    where = f"the last good state is in {saved}; resume with: {command}" if saved else "nothing was saved"
    out = RunInterrupted(f"stopped by {how} during step {step + 1}; {where}")
    out.exit_code = getattr(error, "exit_code", 130)
    return out


def _on_sigterm(signum, frame):
    error = RunInterrupted("SIGTERM")
    error.signal_name, error.exit_code = "SIGTERM", 128 + signal.SIGTERM
    raise error


@contextlib.contextmanager
def stop_signals():
    """SIGTERM raises RunInterrupted inside the block (the previous handler is restored after it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
