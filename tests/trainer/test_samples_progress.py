"""Sample completions (samples.jsonl, console, W&B table) and the progress bar: what a user sees of a run."""
import io
import json

import pytest
import torch

from onpolicy.config import ExperimentConfig
from onpolicy.logging import RunLogger
from onpolicy.samples import console_lines
from onpolicy.trainer.rollout import Rollout
from onpolicy.trainer.scoring import ScoredBatch


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _cfg(tmp_path, resume=False, **logging):
    return ExperimentConfig(logging={"output_dir": str(tmp_path / "run"), "plot": False, **logging},
                            trainer={"steps": 4, "resume": resume})


def _scored(step: int) -> ScoredBatch:
    """2 prompts x 2 completions."""
    ro = Rollout(group_size=2, prompt_ids=[[1]] * 4, completion_ids=[[5, 6]] * 4,
                 sampler_logprobs=[torch.zeros(2)] * 4, texts=[f"a{step}", "b\nc", "x" * 300, "d"],
                 finish_reasons=["stop", "stop", "length", "stop"], group_index=[0, 0, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    return ScoredBatch(rollout=ro, rewards=rewards, advantages=torch.tensor([0.7, -0.7, 0.0, 0.0]),
                       loss_mask=torch.ones(8, dtype=torch.bool), truncated=torch.tensor([0, 0, 1, 0]).bool(),
                       kept_groups=2, reward_by_name={"exact": [1.0, 0.0, 0.0, 0.0], "fmt": [0.0, 0.0, 5.0, 5.0]})


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_samples_every_n_steps_to_jsonl_and_console(tmp_path):
    out = io.StringIO()
    logger = RunLogger(_cfg(tmp_path, log_samples_every=2, num_samples=1), stream=out)
    for step in (1, 2, 3, 4):
        logger.log_samples(step, ["P0", "P1"], _scored(step))
    logger.close()
    rows = _rows(tmp_path / "run" / "samples.jsonl")
    assert [r["step"] for r in rows] == [2] * 4 + [4] * 4
    assert rows[0] == {"step": 2, "group": 0, "prompt": "P0", "completion": "a2", "reward": 1.0,
                       "rewards": {"exact": 1.0, "fmt": 0.0}, "advantage": pytest.approx(0.7),
                       "finish_reason": "stop"}
    assert rows[2]["prompt"] == "P1" and rows[2]["completion"] == "x" * 300 and rows[2]["finish_reason"] == "length"
    text = out.getvalue()
    assert text.count("samples at step") == 2 and "samples at step 2 (1 of 4; all in samples.jsonl):" in text
    assert '"P0" -> "a2"' in text and "reward 1 | adv +0.7 | stop" in text


def test_console_samples_are_one_line_each_and_short():
    from onpolicy.samples import sample_rows

    lines = console_lines(sample_rows(3, ["P0", "P1"], _scored(3)), 5)
    assert len(lines) == 3  # header + the first completion of each of the 2 groups
    assert '"P0" -> "a3"' in lines[1] and lines[2].endswith('..."') and len(lines[2]) < 200
    assert all("\n" not in line for line in lines)


def test_samples_off_and_resume_keeps_earlier_rows(tmp_path):
    logger = RunLogger(_cfg(tmp_path, log_samples_every=0), stream=io.StringIO())
    logger.log_samples(10, ["P0", "P1"], _scored(10))
    logger.close()
    assert not (tmp_path / "run" / "samples.jsonl").exists()
    logger = RunLogger(_cfg(tmp_path, log_samples_every=1), stream=io.StringIO())
    for step in (1, 2, 3):
        logger.log_samples(step, ["P0", "P1"], _scored(step))
    logger.close()
    with open(tmp_path / "run" / "samples.jsonl", "a") as f:
        f.write('{"step": 4, "gro')  # cut short by a kill
    logger = RunLogger(_cfg(tmp_path, resume=True, log_samples_every=1), stream=io.StringIO(), start_step=2)
    logger.log_samples(3, ["P0", "P1"], _scored(3))
    logger.close()
    assert [r["step"] for r in _rows(tmp_path / "run" / "samples.jsonl")] == [1] * 4 + [2] * 4 + [3] * 4


def test_samples_table_on_wandb(tmp_path):
    logged = []

    class Table:
        def __init__(self, columns):
            self.columns, self.data = columns, []

        def add_data(self, *row):
            self.data.append(row)

    class Run:
        def log(self, row, step):
            logged.append((step, row))

    import sys
    import types

    logger = RunLogger(_cfg(tmp_path, log_samples_every=1), stream=io.StringIO())
    logger._wandb = Run()
    fake = types.SimpleNamespace(Table=Table)
    sys.modules["wandb"], saved = fake, sys.modules.get("wandb")
    try:
        logger.log_samples(1, ["P0", "P1"], _scored(1))
    finally:
        del sys.modules["wandb"]
        if saved is not None:
            sys.modules["wandb"] = saved
    (step, row), = logged
    table = row["samples"]
    assert step == 1 and table.columns[-2:] == ["reward/exact", "reward/fmt"] and len(table.data) == 4
    assert table.data[0][:4] == (1, 0, "P0", "a1")


def _metrics(step):
    return {"reward/mean": 0.25 * step, "onpolicy/kl": 0.0, "time/step": 0.1}


def test_progress_bar_with_eta_keeps_console_lines_whole(tmp_path):
    term = Terminal()
    logger = RunLogger(_cfg(tmp_path, run_name="t"), stream=term, bar_stream=term)
    assert logger._bar is not None
    for step in (1, 2, 3):
        logger.log(_metrics(step), step=step)
        logger.beside_bar(lambda text: term.write(text + "\n"))(f"note {step}")
    logger.close()
    screen = term.getvalue()
    assert "3/4" in screen and "<" in screen  # tqdm's "[elapsed<remaining" ETA
    pieces = [p for chunk in screen.split("\n") for p in chunk.split("\r")]
    for step in (1, 2, 3):  # each console line lands whole, on a line of its own
        assert any(p.startswith(f"step {step} | reward") for p in pieces)
        assert f"note {step}" in pieces


@pytest.mark.parametrize("terminal, switch, bar", [(False, True, False), (True, False, False), (True, True, True)])
def test_progress_bar_only_on_a_terminal_and_when_on(tmp_path, terminal, switch, bar):
    stream = Terminal() if terminal else io.StringIO()
    logger = RunLogger(_cfg(tmp_path, progress_bar=switch), stream=io.StringIO(), bar_stream=stream)
    assert (logger._bar is not None) == bar
    logger.close()
    off = RunLogger(_cfg(tmp_path), enabled=False, bar_stream=Terminal())  # other ranks: no bar
    assert off._bar is None


def test_sft_warmup_has_a_bar_and_calls_on_step(tmp_path, monkeypatch):
    from onpolicy.config import parse_args
    from onpolicy.logging import progress_bar
    from onpolicy.model.tiny import build_tiny
    from onpolicy.trainer import setup

    term, made = Terminal(), []

    def bar(total, desc, enabled=True, initial=0, stream=None):
        made.append(progress_bar(total, desc, enabled, initial, stream=term))
        return made[-1]

    monkeypatch.setattr("onpolicy.logging.progress_bar", bar)
    cfg = parse_args(["--trainer.sft_warmup_steps", "3", "--model.tiny.num_hidden_layers", "1",
                      "--model.tiny.hidden_size", "64", "--model.tiny.num_attention_heads", "1",
                      "--model.tiny.num_key_value_heads", "1",
                      "--logging.output_dir", str(tmp_path / "run")])
    model, tok = build_tiny(seed=0, **cfg.model.tiny)
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]
    steps = []
    setup.run_sft(cfg, model, tok, rows, lambda s: list(tok.encode(s)), log=lambda *a: None,
                  on_step=lambda: steps.append(1))
    assert len(steps) == 3 and made and made[0].n == 3 and "sft warm-up" in term.getvalue()
