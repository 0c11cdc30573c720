"""Resume helpers: config comparison and metrics.jsonl trimming (onpolicy.trainer.resume)."""
import json
from types import SimpleNamespace

import pytest

from onpolicy.config import ExperimentConfig
from onpolicy.trainer.resume import config_differences, trim_metrics


def test_config_differences():
    a = ExperimentConfig(trainer={"lr": 1e-4, "steps": 10}).to_dict()
    same_meaning = ExperimentConfig(trainer={"lr": 1e-4, "steps": 20, "save_every": 5, "resume": True},
                                    logging={"run_name": "x"}, engine={"max_num_seqs": 8}).to_dict()
    assert config_differences(a, same_meaning) == []
    other = ExperimentConfig(trainer={"lr": 2e-4, "algo": "dapo"}, model={"dtype": "bfloat16"},
                             rewards=[{"name": "format"}]).to_dict()
    diffs = config_differences(a, other)
    assert "trainer.lr: 0.0001 -> 0.0002" in diffs and "trainer.algo: 'grpo' -> 'dapo'" in diffs
    assert "model.dtype: 'float32' -> 'bfloat16'" in diffs and any(d.startswith("rewards:") for d in diffs)
    assert "trainer.steps" not in " ".join(diffs)


def _cfg(tmp_path):
    return SimpleNamespace(logging=SimpleNamespace(output_dir=str(tmp_path)))


def test_trim_metrics_drops_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    msgs = []
    trim_metrics(_cfg(tmp_path), 2, msgs.append)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert any("truncated last line" in m for m in msgs)
    # a complete last row without its newline gets one, so the next append starts a new line
    path.write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}))
    trim_metrics(_cfg(tmp_path), 2, msgs.append)
    assert path.read_text().endswith("}\n") and len(path.read_text().splitlines()) == 2


def test_trim_metrics_refuses_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2 is not JSON"):
        trim_metrics(_cfg(tmp_path), 3, lambda *a: None)
    trim_metrics(_cfg(tmp_path), 0, lambda *a: None)  # a fresh run does not care: it starts an empty file
    assert path.read_text() == ""


def test_memory_knobs_may_change_on_resume_mini_batches_may_not():
    """A run resumed after an OOM may use smaller micro-batches or checkpointing; more updates per step is
    another run."""
    from onpolicy.trainer.resume import config_differences

    saved = {"trainer": {"micro_batch_tokens": None, "activation_checkpointing": False, "mini_batches": 1}}
    now = {"trainer": {"micro_batch_tokens": 4096, "activation_checkpointing": True, "mini_batches": 1}}
    assert config_differences(saved, now) == []
    now["trainer"]["mini_batches"] = 2
    assert config_differences(saved, now) == ["trainer.mini_batches: 1 -> 2"]
