"""Prompt datasets and the resumable stream of training prompts.

A dataset is anything with `__getitem__(i) -> Prompt` and `__len__` (None for the endless
toy generator). `PromptStream` walks it epoch by epoch in a seeded order and keeps its
position in `state_dict()`, so a resumed run continues with the very next prompt.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable

from core.answers import extract_answer
from core.records import Prompt
from tasks.toy_arith import ToyArithmetic, scratchpad
from tasks.toy_code import ToyCode

log = logging.getLogger("rewardmill.data")


class ToyDataset:
    """Problems of a toy task (anything with `problem(split, index)`: ToyArithmetic, ToyCode)
    by index. With `twin_views` (addition only), each prompt carries a rephrased twin (the
    operands in reverse order: same answer, other wording), which the prompt stream serves
    right after it as a second group (Co-Reward's cross-view pairs; see `with_twins`)."""

    def __init__(self, task: ToyArithmetic | ToyCode, split: str, size: int | None = None,
                 twin_views: bool = False):
        self.task, self.split, self.size, self.twin_views = task, split, size, twin_views
        self.views_per_prompt = 2 if twin_views else 1   # groups sampled per prompt

    def __len__(self):
        return self.size

    def __getitem__(self, index: int) -> Prompt:
        p = self.task.problem(self.split, index)
        metadata = {"solution": p.solution}
        if self.twin_views:
            numbers = [int(n) for n in p.prompt.rstrip("=").split("+")][::-1]
            metadata.update(pair=p.prompt_id, view=0, twin={
                "text": "+".join(map(str, numbers)) + "=", "solution": scratchpad(numbers)})
        return Prompt(p.prompt_id, p.prompt, p.answer, metadata)


def with_twins(prompts: list[Prompt]) -> list[Prompt]:
    """Each prompt followed by its twin view, if it has one (metadata["twin"]: text, solution)."""
    out = []
    for p in prompts:
        out.append(p)
        twin = p.metadata.get("twin")
        if twin:
            metadata = {"solution": twin.get("solution"), "pair": p.prompt_id, "view": 1}
            if "question" in twin:
                metadata["question"] = twin["question"]
            out.append(Prompt(f"{p.prompt_id}~twin", twin["text"], p.answer, metadata))
    return out


class BadRowError(ValueError):
    pass


def load_prompt_file(path: str, prompt_field: str, answer_field: str,
                     solution_field: str | None = None, max_prompt_tokens: int | None = None,
                     count_tokens: Callable[[str], int] | None = None,
                     on_bad_row: str = "skip", answer_format: str | None = None,
                     ) -> tuple[list[Prompt], dict[str, int]]:
    """Read prompts from a JSONL or Parquet file with the `datasets` library.

    `answer_format` (core/answers.py) reads the reference answer out of the answer field, for
    datasets that store a worked solution there (GSM8K: "... #### 72" with "hashes").
    A row with a missing field, an empty prompt, a prompt over `max_prompt_tokens` or (with
    `answer_format`) no answer in its answer field is skipped and counted (on_bad_row="skip") or stops the run with an error naming the
    file, the row and the field (on_bad_row="error").
    """
    if on_bad_row not in ("skip", "error"):
        raise ValueError(f"data.file.on_bad_row must be 'skip' or 'error', got {on_bad_row!r}")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"data file {path!r} does not exist (data.file.*_path)")
    import datasets
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(file.suffix)
    if kind is None:
        raise ValueError(f"data file {path!r}: use a .jsonl, .json or .parquet file")
    try:
        rows = datasets.load_dataset(kind, data_files=str(file), split="train")
    except Exception as err:
        raise ValueError(f"data file {path!r} could not be read as {kind}: {err}") from err
    prompts, skipped = [], {}
    for i, row in enumerate(rows):
        problem = _row_problem(row, prompt_field, answer_field, max_prompt_tokens, count_tokens)
        answer = row.get(answer_field)
        if not problem and answer_format:
            answer = extract_answer(str(answer), answer_format)
            if answer is None:
                problem = (f"no reference answer: field {answer_field!r} states none in "
                           f"data.file.answer_format={answer_format!r}")
        if problem:
            if on_bad_row == "error":
                raise BadRowError(f"{path}: row {i}: {problem} (set data.file.on_bad_row=skip "
                                  "to skip such rows)")
            reason = problem.split(":")[0]
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        meta = {"row": i}
        if solution_field and row.get(solution_field) is not None:
            meta["solution"] = str(row[solution_field])
        prompts.append(Prompt(f"{file.stem}-{i}", str(row[prompt_field]), answer, meta))
    if skipped:
        log.warning("%s: skipped %d malformed rows (%s); %d rows kept", path,
                    sum(skipped.values()), ", ".join(f"{k}: {v}" for k, v in skipped.items()),
                    len(prompts))
    if not prompts:
        raise BadRowError(f"{path}: no usable rows (fields {prompt_field!r}, {answer_field!r})")
    return prompts, skipped


def _row_problem(row: dict, prompt_field: str, answer_field: str,
                 max_tokens: int | None, count_tokens) -> str | None:
    for name in (prompt_field, answer_field):
        if row.get(name) is None:
            return f"missing field: {name!r} is absent or null"
    text = str(row[prompt_field])
    if not text.strip():
        return f"empty prompt: field {prompt_field!r} is empty"
    if max_tokens and count_tokens and count_tokens(text) > max_tokens:
        return (f"over-long prompt: field {prompt_field!r} has {count_tokens(text)} tokens, "
                f"over data.max_prompt_tokens={max_tokens}")
    return None


class PromptStream:
    """Endless, seeded, resumable walk over a dataset (reshuffled each epoch). Each prompt is
    followed by its other views, if the dataset has them (`views_per_prompt` groups each)."""

    def __init__(self, dataset, seed: int, shuffle: bool = True):
        self.dataset, self.seed, self.shuffle = dataset, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def _index(self, position: int) -> int:
        size = len(self.dataset) if self.dataset.__len__() is not None else None
        if size is None or not self.shuffle:
            return position
        if self._order is None:
            self._order = list(range(size))
            random.Random(f"{self.seed}/epoch{self.epoch}").shuffle(self._order)
        return self._order[position]

    def next(self, n: int) -> list[Prompt]:
        out = []
        size = self.dataset.__len__()
        for _ in range(n):
            if size is not None and self.position >= size:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
            out.append(self.dataset[self._index(self.position)])
            self.position += 1
        return with_twins(out)

    @property
    def views_per_prompt(self) -> int:
        return getattr(self.dataset, "views_per_prompt", 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
