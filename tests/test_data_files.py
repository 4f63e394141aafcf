"""Malformed rows in a user's file are skipped and counted, or stop the run naming row and field."""
import json

import pytest

from tasks.datasets import BadRowError, load_prompt_file


def _write(tmp_path, rows, name="train.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


ROWS = [
    {"prompt": "1+2=", "answer": 3},
    {"prompt": "2+2="},                              # row 1: answer missing
    {"prompt": "   ", "answer": 1},                  # row 2: empty prompt
    {"prompt": "1+" * 100 + "1=", "answer": 101},    # row 3: over-long
    {"prompt": "4+4=", "answer": None},              # row 4: null answer
    {"prompt": "5+5=", "answer": 10, "solution": "5+5=10;#10"},
]


def test_skip_mode_counts_each_kind_and_logs(tmp_path, caplog):
    path = _write(tmp_path, ROWS)
    prompts, skipped = load_prompt_file(path, "prompt", "answer", "solution", max_prompt_tokens=50,
                                        count_tokens=len, on_bad_row="skip")
    assert [p.text for p in prompts] == ["1+2=", "5+5="]
    assert prompts[1].metadata["solution"] == "5+5=10;#10"
    assert skipped == {"missing field": 2, "empty prompt": 1, "over-long prompt": 1}
    assert "skipped 4 malformed rows" in caplog.text and "train.jsonl" in caplog.text


@pytest.mark.parametrize("rows, message", [
    (ROWS[:2], "row 1: missing field: 'answer'"),
    ([ROWS[0], ROWS[2]], "row 1: empty prompt: field 'prompt'"),
    ([ROWS[3]], "row 0: over-long prompt: field 'prompt' has 202 tokens"),
])
def test_error_mode_names_file_row_and_field(tmp_path, rows, message):
    path = _write(tmp_path, rows)
    with pytest.raises(BadRowError, match="train.jsonl: " + message.replace("(", r"\(")):
        load_prompt_file(path, "prompt", "answer", max_prompt_tokens=50, count_tokens=len,
                         on_bad_row="error")


def test_parquet_and_missing_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"q": ["1+1=", "2+3="], "a": [2, 5]}), path)
    prompts, _ = load_prompt_file(str(path), "q", "a")
    assert [(p.text, p.answer) for p in prompts] == [("1+1=", 2), ("2+3=", 5)]
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompt_file(str(tmp_path / "nope.jsonl"), "q", "a")
