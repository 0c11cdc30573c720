"""onpolicy.data: load_prompts from embedded tasks and local files, filtering, chat template, PromptIterator."""
import builtins
import csv
import json
import warnings

import pytest

from onpolicy.config import DataArgs
from onpolicy.data import PromptIterator, load_prompts

ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} plus {i}\n#### {2 * i}", "id": i} for i in range(6)]


class WordTokenizer:
    """Stand-in tokenizer: one token per whitespace-separated word; a fixed chat template."""

    chat_template = "fixed"

    def encode(self, text, add_special_tokens=True):
        return text.split()

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        body = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return body + ("<assistant>" if add_generation_prompt else "")


def _write(tmp_path, kind):
    path = tmp_path / f"d.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif kind == "json":
        path.write_text(json.dumps(ROWS))
    elif kind == "csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)
    return path


def _args(dataset, **kw):
    return DataArgs(dataset=str(dataset), prompt_column="question", **kw)


def test_embedded():
    tasks = pytest.importorskip("onpolicy.tasks")
    rows = load_prompts(DataArgs(dataset="embedded:arith", num_examples=5, shuffle_seed=3))
    assert rows == [dict(r) for r in tasks.make_examples("arith", 5, seed=3)]
    assert all(isinstance(r["prompt"], str) and isinstance(r["answer"], str) for r in rows)
    with pytest.raises(ValueError, match="embedded task must be one of"):
        load_prompts(DataArgs(dataset="embedded:nope"))


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
@pytest.mark.parametrize("with_datasets", [True, False])
def test_local_files(tmp_path, kind, with_datasets, monkeypatch):
    if with_datasets:
        pytest.importorskip("datasets")
    else:  # the H100 image has no `datasets`: json/jsonl/csv must still load
        real_import = builtins.__import__

        def no_datasets(name, *a, **k):
            if name == "datasets" or name.startswith("datasets."):
                raise ImportError("no datasets")
            return real_import(name, *a, **k)

        monkeypatch.setattr(builtins, "__import__", no_datasets)
    rows = load_prompts(_args(_write(tmp_path, kind)))
    assert [r["prompt"] for r in rows] == [r["question"] for r in ROWS]
    assert [r["answer"] for r in rows] == [r["answer"] for r in ROWS]
    assert [str(r["id"]) for r in rows] == [str(r["id"]) for r in ROWS]  # other columns are kept
    if not with_datasets:
        (tmp_path / "d.parquet").write_bytes(b"PAR1")
        for path in (tmp_path / "d.parquet", tmp_path):
            with pytest.raises(ValueError, match="needs the `datasets` package"):
                load_prompts(_args(path))


def test_parquet_and_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    assert [r["prompt"] for r in load_prompts(_args(tmp_path / "d.parquet"))] == [r["question"] for r in ROWS]
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "saved"))
    assert len(load_prompts(_args(tmp_path / "saved", split="test"))) == 2
    with pytest.raises(ValueError, match="data.split: 'dev' not in .*allowed: train, test"):
        load_prompts(_args(tmp_path / "saved", split="dev"))


def test_data_directory_with_split_files(tmp_path):
    pytest.importorskip("datasets")
    d = tmp_path / "gsm"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    assert len(load_prompts(_args(d, split="test"))) == 3
    assert len(load_prompts(_args(d))) == 6


def test_filter_chat_template_and_num_examples(tmp_path):
    path = _write(tmp_path, "jsonl")
    tok = WordTokenizer()
    rows = load_prompts(_args(path, num_examples=4), tok)
    assert len(rows) == 4
    with pytest.warns(UserWarning, match="dropped 6 of 6 prompts longer than data.max_prompt_tokens=3"), \
            pytest.raises(ValueError, match="no usable prompts"):
        load_prompts(_args(path, max_prompt_tokens=3), tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped -> no warning
        rows = load_prompts(_args(path, chat_template=True, system_prompt="Be brief."), tok)
    assert rows[0]["prompt"] == "<system>Be brief.</system><user>What is 0 + 0?</user><assistant>"
    assert rows[0]["question"] == "What is 0 + 0?"


def test_bad_data_args(tmp_path):
    path = _write(tmp_path, "jsonl")
    with pytest.raises(ValueError, match="data.prompt_column: 'prompt' is not a column .*allowed: question, answer"):
        load_prompts(DataArgs(dataset=str(path)))
    with pytest.raises(ValueError, match="data.dataset: .* does not exist"):
        load_prompts(_args(tmp_path / "missing.jsonl"))
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'; allowed: .json, .jsonl, .parquet, .csv"):
        load_prompts(_args(tmp_path / "d.txt"))
    with pytest.raises(ValueError, match="chat template"):
        load_prompts(_args(path, chat_template=True), tokenizer=None)


def test_missing_answer_column_gives_none(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "hi"}\n')
    assert load_prompts(_args(path))[0]["answer"] is None


def test_prompt_iterator_epochs_and_determinism():
    rows = list(range(10))
    it = PromptIterator(rows, batch_size=4, seed=1)
    batches = [next(it) for _ in range(5)]  # 20 rows = 2 epochs exactly
    assert sorted(sum(batches[:2], []) + batches[2][:2]) == rows  # epoch 0 is a permutation
    assert sorted(batches[2][2:] + sum(batches[3:], [])) == rows  # epoch 1 is one too
    assert sum(batches[:2], []) + batches[2][:2] != batches[2][2:] + sum(batches[3:], [])  # new order per epoch
    again = PromptIterator(rows, batch_size=4, seed=1)
    assert [next(again) for _ in range(5)] == batches
    other = PromptIterator(rows, batch_size=4, seed=2)
    assert [next(other) for _ in range(5)] != batches
    assert it.state_dict() == {"epoch": 1, "position": 10, "seed": 1, "num_rows": 10}


def test_prompt_iterator_exact_resume():
    rows = [f"p{i}" for i in range(7)]
    full = PromptIterator(rows, batch_size=3, seed=5)
    expected = [next(full) for _ in range(8)]
    part = PromptIterator(rows, batch_size=3, seed=5)
    for _ in range(3):
        next(part)
    state = part.state_dict()
    resumed = PromptIterator(rows, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert [next(resumed) for _ in range(5)] == expected[3:]
    with pytest.raises(ValueError, match="state is for 7 rows / seed 5"):
        PromptIterator(rows[:6], batch_size=3, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        PromptIterator(rows, batch_size=0)
    with pytest.raises(ValueError, match="rows must be a non-empty list"):
        PromptIterator([], batch_size=1)


@pytest.mark.parametrize("name, text, match", [
    ("e.jsonl", "", r"e\.jsonl' is empty"),
    ("e.csv", "", r"e\.csv' is empty"),
    ("b.jsonl", '{"question": "a"}\n\n{"question": "b" "c"}\n', r"b\.jsonl' line 3: invalid JSON \(Expecting ',' "),
    ("b.json", '[\n  {"question": "a"},\n  {"question": }\n]\n', r"b\.json' line 3: invalid JSON"),
    ("l.json", '{"question": "a"}\n{"question": "b"\n', r"l\.json' line 2: invalid JSON"),
])
def test_bad_files_give_one_line_errors(tmp_path, name, text, match):
    """Empty files and bad JSON name the file (and line), whether or not `datasets` is installed."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=r"^data\.dataset: '.*" + match) as e:
        load_prompts(_args(path))
    assert "\n" not in str(e.value)


def test_json_lines_in_a_json_file(tmp_path):
    path = tmp_path / "l.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert [r["id"] for r in load_prompts(_args(path))] == [r["id"] for r in ROWS]


def test_unreadable_file_through_datasets_is_one_line(tmp_path):
    pytest.importorskip("datasets")
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(ValueError, match=r"^data\.dataset: could not read '.*x\.parquet': ArrowInvalid") as e:
        load_prompts(_args(path))
    assert "\n" not in str(e.value)
