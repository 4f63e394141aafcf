"""Rollout: turn prompts into sampled responses with behaviour log-probs.

An engine implements `generate(prompts, sampling, group_tag) -> list[Sample]` and
`load_weights(state, version)`. `HFEngine` uses Hugging Face `generate` (CPU or one GPU); a
vLLM engine plugs in behind the same two methods. `RolloutWorker` is what the scheduler
spawns (in-process or as a Ray actor); it picks the engine by name.
"""
from __future__ import annotations

from typing import Protocol

import torch

from core.models import load_policy, load_tokenizer
from core.records import Prompt, SamplingParams, Sample
from core.steps import split_steps


class Engine(Protocol):
    """What a rollout engine provides; `version` is the learner step of its weights."""

    version: int

    def generate(self, prompts: list[Prompt], sampling: SamplingParams,
                 group_tag: str = "") -> list[Sample]:
        """`sampling.n` samples per prompt, with the log-prob of every sampled token under
        softmax(logits / temperature), in prompt order; `group_tag + prompt_id` is the group."""

    def load_weights(self, state: dict, version: int) -> None:
        """Take a full state dict from the learner and tag later samples with `version`."""


class HFEngine:
    def __init__(self, model_path: str, max_batch_prompts: int = 64, threads: int = 0,
                 dtype: str = "float32", step_delimiter: str | None = None):
        self.step_delimiter = step_delimiter
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_policy(model_path, getattr(torch, dtype)).to(self.device).eval()
        self.max_batch_prompts = max_batch_prompts
        self.version = 0

    def load_weights(self, state: dict, version: int) -> None:
        self.model.load_state_dict(state)
        self.version = version

    @torch.no_grad()
    def generate(self, prompts: list[Prompt], sampling: SamplingParams,
                 group_tag: str = "") -> list[Sample]:
        torch.manual_seed(sampling.seed)  # same seed, same samples: resume replays exactly
        samples: list[Sample] = []
        for i in range(0, len(prompts), self.max_batch_prompts):
            samples += self._generate_chunk(prompts[i:i + self.max_batch_prompts], sampling,
                                            group_tag)
        return samples

    def _generate_chunk(self, prompts: list[Prompt], sp: SamplingParams, group_tag: str):
        tok = self.tokenizer
        enc = tok([p.text for p in prompts], padding=True, return_tensors="pt").to(self.device)
        greedy = sp.temperature == 0
        options = dict(do_sample=not greedy, max_new_tokens=sp.max_new_tokens,
                       num_return_sequences=sp.n, return_dict_in_generate=True,
                       output_logits=True, pad_token_id=tok.pad_token_id,
                       eos_token_id=tok.eos_token_id)
        if not greedy:
            options.update(temperature=sp.temperature, top_p=sp.top_p,
                           top_k=sp.top_k if sp.top_k > 0 else None)
        out = self.model.generate(**enc, **options)
        P = enc["input_ids"].shape[1]
        generated = out.sequences[:, P:]
        # Log-probs of the tempered full distribution, as the learner computes them.
        logits = torch.stack(out.logits, 1).float() / (1.0 if greedy else sp.temperature)
        logprobs = torch.log_softmax(logits, -1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        is_eos = generated == tok.eos_token_id
        samples = []
        for row in range(generated.shape[0]):
            prompt = prompts[row // sp.n]
            eos_at = is_eos[row].nonzero()
            length = int(eos_at[0]) + 1 if len(eos_at) else generated.shape[1]
            ids = generated[row, :length].tolist()
            prompt_ids = enc["input_ids"][row // sp.n][enc["attention_mask"][row // sp.n] == 1]
            steps = step_ends = None
            if self.step_delimiter:
                pieces = [tok.decode([t], skip_special_tokens=True) for t in ids]
                steps, step_ends = split_steps(pieces, self.step_delimiter)
            samples.append(Sample(
                prompt_id=prompt.prompt_id, group_id=f"{group_tag}{prompt.prompt_id}",
                prompt_ids=prompt_ids.tolist(), response_ids=ids,
                behaviour_logprobs=logprobs[row, :length].tolist(),
                policy_version=self.version, prompt_text=prompt.text,
                response_text=tok.decode(ids, skip_special_tokens=True),
                truncated=not len(eos_at), answer=prompt.answer, steps=steps,
                step_ends=step_ends, metadata=dict(prompt.metadata)))
        return samples


ENGINES: dict[str, type[Engine]] = {"hf": HFEngine}


class RolloutWorker:
    """Holds one engine; the unit the scheduler spawns and sends weights to."""

    def __init__(self, engine: str, model_path: str, **engine_options):
        if engine not in ENGINES:
            raise ValueError(f"rollout.engine={engine!r} is unknown; choose one of {sorted(ENGINES)}")
        self.engine = ENGINES[engine](model_path, **engine_options)

    def generate(self, prompts: list[Prompt], sampling: SamplingParams,
                 group_tag: str = "") -> list[Sample]:
        return self.engine.generate(prompts, sampling, group_tag)

    def load_weights(self, state: dict, version: int) -> int:
        self.engine.load_weights(state, version)
        return version
