"""Rollout: turn prompts into sampled responses with behaviour log-probs.

An engine implements `generate(prompts, sampling, group_tag) -> list[Sample]` and
`load_weights(state, version)`. `HFEngine` uses Hugging Face `generate` (CPU or one GPU); a
vLLM engine plugs in behind the same two methods. `RolloutWorker` is what the scheduler
spawns (in-process or as a Ray actor); it picks the engine by name.

An engine that also offers the `PolicyScorer` methods can run policy-coupled reward sources
(`runs_on: policy`): they score samples with the very weights that sampled them.
"""
from __future__ import annotations

import os
import time
from typing import Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from core.models import load_policy, load_tokenizer
from core.records import Prompt, SamplingParams, Sample, Weights
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


class PolicyScorer(Protocol):
    """What policy-coupled rewards may ask of the rollout policy (current weights, T = 1)."""

    tokenizer: object
    version: int

    def token_logprobs(self, prefixes: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """log p(target_t | prefix, target_<t) of every target token, per row."""

    def self_certainty(self, samples: list[Sample]) -> list[float]:
        """Per sample, the mean over response tokens of KL(uniform || p_t) (arXiv:2502.18581)."""


class SampledLogprobs(LogitsProcessor):
    """Behaviour log-probs during HF generate: log p(sampled token) under softmax(logits / T)
    of the full distribution (before top-k/top-p, as the learner computes them), keeping one
    step's [rows, V] log-softmax at a time. (output_logits=True keeps every step's logits:
    rows x T x V floats, ~80 GB at 256 rows, 512 tokens and a 152k vocabulary.)

    Custom processors run before generate's temperature/top-k/top-p warpers, so `scores` are
    the raw logits; the token sampled from step t shows up as input_ids[:, -1] at step t + 1."""

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.previous: torch.Tensor | None = None   # [rows, V] log-softmax of the last step
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._pick(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float() / self.temperature, -1)
        return scores

    def _pick(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.picked.append(self.previous.gather(-1, tokens[:, None]).squeeze(-1))

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[rows, generated steps] log-probs, once generate has returned `sequences`."""
        self._pick(sequences[:, -1])
        self.previous = None
        return torch.stack(self.picked, 1)


class HFEngine:
    def __init__(self, model_path: str, max_batch_prompts: int = 64, threads: int = 0,
                 dtype: str = "float32", step_delimiter: str | None = None,
                 add_special_tokens: bool = True):
        # False for chat-rendered prompts: the template already wrote BOS and role markers
        self.step_delimiter, self.add_special_tokens = step_delimiter, add_special_tokens
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
        enc = tok([p.text for p in prompts], padding=True, return_tensors="pt",
                  add_special_tokens=self.add_special_tokens).to(self.device)
        greedy = sp.temperature == 0
        recorder = SampledLogprobs(1.0 if greedy else sp.temperature)
        options = dict(do_sample=not greedy, max_new_tokens=sp.max_new_tokens,
                       num_return_sequences=sp.n, return_dict_in_generate=True,
                       logits_processor=LogitsProcessorList([recorder]),
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if not greedy:
            options.update(temperature=sp.temperature, top_p=sp.top_p,
                           top_k=sp.top_k if sp.top_k > 0 else None)
        out = self.model.generate(**enc, **options)
        P = enc["input_ids"].shape[1]
        generated = out.sequences[:, P:]
        logprobs = recorder.finish(out.sequences)
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


    # --- PolicyScorer --------------------------------------------------------------------

    @torch.no_grad()
    def _forward(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, L, V] of right-padded rows, and their attention mask."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, :len(r)] = 1
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return out.logits.float(), mask

    def _chunks(self, n: int):
        step = self.max_batch_prompts
        return (range(i, min(i + step, n)) for i in range(0, n, step))

    def token_logprobs(self, prefixes: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        out: list[list[float]] = []
        for rows in self._chunks(len(prefixes)):
            logits, _ = self._forward([prefixes[i] + targets[i] for i in rows])
            logp = torch.log_softmax(logits, -1)
            for k, i in enumerate(rows):
                start, t = len(prefixes[i]), torch.tensor(targets[i], dtype=torch.long)
                picked = logp[k, start - 1:start - 1 + len(t)].gather(-1, t.to(logp.device)[:, None])
                out.append(picked.squeeze(-1).tolist())
        return out

    def self_certainty(self, samples: list[Sample]) -> list[float]:
        out: list[float] = []
        for rows in self._chunks(len(samples)):
            logits, _ = self._forward([samples[i].prompt_ids + samples[i].response_ids for i in rows])
            # logsumexp(z) - mean(z) = KL(U || softmax(z)) + log V: no softmax is materialised
            per_token = logits.logsumexp(-1) - logits.mean(-1) - torch.log(torch.tensor(logits.shape[-1]))
            for k, i in enumerate(rows):
                start, n = len(samples[i].prompt_ids), len(samples[i].response_ids)
                out.append(float(per_token[k, start - 1:start - 1 + n].mean()) if n else 0.0)
        return out


ENGINES: dict[str, type[Engine]] = {"hf": HFEngine}


class RolloutWorker:
    """Holds one engine; the unit the scheduler spawns and sends weights to. Each generate
    call names the weights it must run with, so a worker restarted after a crash (back on
    its initial weights) catches up by itself before sampling."""

    def __init__(self, engine: str, model_path: str, reward_sources: list[dict] | None = None,
                 **engine_options):
        if engine not in ENGINES:
            raise ValueError(f"rollout.engine={engine!r} is unknown; choose one of {sorted(ENGINES)}")
        self.engine = ENGINES[engine](model_path, **engine_options)
        self.busy_s = 0.0
        # the reward sources marked runs_on: policy, scored here with the sampling weights
        self.policy_rewards = None
        if any(s.get("runs_on") == "policy" for s in reward_sources or []):
            from actors.reward import RewardWorker
            self.policy_rewards = RewardWorker(reward_sources, threads_per_source=1,
                                               context={"policy": self.engine})

    def generate(self, prompts: list[Prompt], sampling: SamplingParams,
                 group_tag: str = "", weights: Weights | None = None) -> list[Sample]:
        start = time.perf_counter()
        if weights is not None and weights.version != self.engine.version:
            self.engine.load_weights(weights.fetch(), weights.version)
        samples = self.engine.generate(prompts, sampling, group_tag)
        if self.policy_rewards:
            self.policy_rewards.score(samples)
        self.busy_s += time.perf_counter() - start
        return samples

    def vitals(self) -> dict:
        """Seconds spent generating since this process started, and its PID (a new PID: the
        worker was restarted). The scheduler reads it as the stage's busy share."""
        return {"busy_s": self.busy_s, "pid": os.getpid()}

    def state_dict(self) -> dict:
        """State of stateful policy-side reward sources (e.g. RLPR's cached baselines)."""
        return self.policy_rewards.state_dict() if self.policy_rewards else {}

    def load_state_dict(self, state: dict) -> None:
        if self.policy_rewards:
            self.policy_rewards.load_state_dict(state)

    def load_weights(self, state: dict, version: int) -> int:
        self.engine.load_weights(state, version)
        return version
