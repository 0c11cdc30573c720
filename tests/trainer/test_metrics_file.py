"""metrics.jsonl deleted while a run writes it: the logger notices at the next row (and at close) and recreates the
file with every row this run logged, with a warning -- a finished run never leaves its metrics missing."""
import io
import json

from onpolicy.config import ExperimentConfig
from onpolicy.logging import RunLogger


def _rows(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_deleted_metrics_file_is_recreated_with_every_row(tmp_path):
    cfg = ExperimentConfig(logging={"output_dir": str(tmp_path), "plot": False})
    out = io.StringIO()
    logger = RunLogger(cfg, stream=out)
    for step in (1, 2):
        logger.log({"loss": 1.0}, step=step)
    path = tmp_path / "metrics.jsonl"
    path.unlink()
    logger.log({"loss": 1.0}, step=3)
    assert _rows(path) == [1, 2, 3]
    assert "metrics.jsonl was deleted during the run; recreated it with the 2 rows logged before" in out.getvalue()
    path.unlink()  # after the last row: close() notices too
    logger.close()
    assert _rows(path) == [1, 2, 3]
