"""Rollout: turn prompts into sampled responses with behaviour log-probs.

An engine implements `generate(prompts, sampling, group_tag) -> list[Sample]` and
`load_weights(state, version)`. `HFEngine` samples from a Hugging Face model with our own
decode loop (actors/decode.py: finished rows leave the batch; CPU or one GPU); a vLLM engine
plugs in behind the same two methods. `RolloutWorker` is what the scheduler
spawns (in-process or as a Ray actor); it picks the engine by name.

An engine that also offers the `PolicyScorer` methods can run policy-coupled reward sources
(`runs_on: policy`): they score samples with the very weights that sampled them.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Protocol

import torch

from actors.decode import sample
from actors.restart_state import restore_after_restart
from core.cpu import keep_freed_memory
from core.models import load_policy, load_tokenizer
from core.records import Prompt, SamplingParams, Sample, Weights
from core.steps import split_steps


class Engine(Protocol):
    """What a rollout engine provides; `version` is the learner step of its weights."""

    version: int
    offered: Weights | None   # set from another thread while `generate` runs (partial
                              # rollouts): newer weights to switch to before the next token

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


class HFEngine:
    def __init__(self, model_path: str, max_batch_prompts: int = 64, threads: int = 0,
                 dtype: str = "float32", step_delimiter: str | None = None,
                 add_special_tokens: bool = True):
        # False for chat-rendered prompts: the template already wrote BOS and role markers
        self.step_delimiter, self.add_special_tokens = step_delimiter, add_special_tokens
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cpu":
            keep_freed_memory()   # each batch's activations and KV cache reuse the last one's pages
        self.tokenizer = load_tokenizer(model_path)
        self.model = load_policy(model_path, getattr(torch, dtype)).to(self.device).eval()
        self.max_batch_prompts = max_batch_prompts
        self.version = 0
        self.offered: Weights | None = None   # newer weights to switch to between tokens
        self.pieces: dict[int, str] = {}      # token id -> its text alone (step splitting)

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
        decoded = sample(self.model, enc["input_ids"], enc["attention_mask"], sp,
                         {tok.eos_token_id}, self._weights_version)
        samples = []
        for row, ids in enumerate(decoded.tokens):
            prompt = prompts[row // sp.n]
            prompt_ids = enc["input_ids"][row // sp.n][enc["attention_mask"][row // sp.n] == 1]
            versions = decoded.versions[row]
            steps = step_ends = None
            if self.step_delimiter:
                steps, step_ends = split_steps([self._piece(t) for t in ids], self.step_delimiter)
            samples.append(Sample(
                prompt_id=prompt.prompt_id, group_id=f"{group_tag}{prompt.prompt_id}",
                prompt_ids=prompt_ids.tolist(), response_ids=ids,
                behaviour_logprobs=decoded.logprobs[row], policy_version=versions[0],
                token_versions=None if versions[0] == versions[-1] else versions,
                prompt_text=prompt.text, response_text=tok.decode(ids, skip_special_tokens=True),
                truncated=decoded.truncated[row], answer=prompt.answer, steps=steps,
                step_ends=step_ends, metadata=dict(prompt.metadata)))
        return samples

    @torch.no_grad()
    def continue_from(self, samples: list[Sample], prefix_lengths: list[int],
                      sampling: SamplingParams) -> list[Sample]:
        """`sampling.n` continuations of each sample's prompt + response_ids[:prefix_length]
        (token ids as they are, never re-tokenised), n per input in input order (SCOPE repair:
        a guide writes on from the last correct step, actors/repair.py).

        Each new sample's response is the prefix + the continuation; its behaviour log-probs
        are the original prefix's followed by the continuation's under this engine, and
        `metadata["continued_from"]` is the prefix length. The whole response stays within
        `sampling.max_new_tokens`: the continuation gets the tokens the prefix leaves, and a
        prefix that leaves none comes back as it is, truncated. Rewards start empty."""
        if len(samples) != len(prefix_lengths):
            raise ValueError(f"{len(samples)} samples but {len(prefix_lengths)} prefix lengths")
        for s, k in zip(samples, prefix_lengths):
            if not 0 <= k <= len(s.response_ids):
                raise ValueError(f"prefix length {k} outside the {len(s.response_ids)} response "
                                 f"tokens of sample {s.prompt_id!r}")
        torch.manual_seed(sampling.seed)  # same seed, same continuations, as generate
        out: list[Sample | None] = [None] * (len(samples) * sampling.n)
        room = [sampling.max_new_tokens - k for k in prefix_lengths]
        for i, (s, k) in enumerate(zip(samples, prefix_lengths)):
            if room[i] < 1:   # no budget left: the prefix as it is
                for j in range(sampling.n):
                    out[i * sampling.n + j] = self._continued(s, k, [], [], [], True)
        todo = [i for i in range(len(samples)) if room[i] >= 1]
        for c in range(0, len(todo), self.max_batch_prompts):
            chunk = todo[c:c + self.max_batch_prompts]
            rows = [samples[i].prompt_ids + samples[i].response_ids[:prefix_lengths[i]]
                    for i in chunk]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):   # left padding, as the tokenizer pads prompts
                ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
                mask[r, width - len(row):] = 1
            # one decode for the chunk, run to its largest budget; each row is cut to its own
            sp = replace(sampling, max_new_tokens=max(room[i] for i in chunk))
            end_ids = {self.tokenizer.eos_token_id}
            decoded = sample(self.model, ids.to(self.device), mask.to(self.device), sp,
                             end_ids, self._weights_version)
            for row, tokens in enumerate(decoded.tokens):
                i = chunk[row // sp.n]
                cut = room[i]
                tokens = tokens[:cut]
                truncated = not (tokens and tokens[-1] in end_ids)
                out[i * sampling.n + row % sp.n] = self._continued(
                    samples[i], prefix_lengths[i], tokens, decoded.logprobs[row][:cut],
                    decoded.versions[row][:cut], truncated)
        return out

    def _continued(self, original: Sample, k: int, tokens: list[int], logprobs: list[float],
                   versions: list[int], truncated: bool) -> Sample:
        """A new sample: `original`'s first k response tokens, then `tokens`."""
        ids = original.response_ids[:k] + tokens
        steps = step_ends = None
        if self.step_delimiter:
            steps, step_ends = split_steps([self._piece(t) for t in ids], self.step_delimiter)
        # the prefix keeps the versions that sampled it; tagged only when they differ
        before = (original.token_versions or [original.policy_version] * len(original.response_ids))[:k]
        every = before + versions
        version = versions[0] if versions else self.version
        return Sample(
            prompt_id=original.prompt_id, group_id=original.group_id,
            prompt_ids=list(original.prompt_ids), response_ids=ids,
            behaviour_logprobs=list(original.behaviour_logprobs[:k]) + list(logprobs),
            policy_version=version,
            token_versions=None if len(set(every)) <= 1 else every,
            prompt_text=original.prompt_text,
            response_text=self.tokenizer.decode(ids, skip_special_tokens=True),
            truncated=truncated, answer=original.answer, steps=steps, step_ends=step_ends,
            metadata=dict(original.metadata) | {"continued_from": k})

    def _piece(self, token: int) -> str:
        """The text of one token alone, memoised: decoding each token of every response
        one call at a time was about 15% of generation's CPU."""
        piece = self.pieces.get(token)
        if piece is None:
            piece = self.pieces[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return piece

    def _weights_version(self) -> int:
        """Called by the decode loop between tokens: loads weights offered since it started
        (partial rollouts) and says which version samples the next token."""
        offered = self.offered
        if offered is not None and offered.version > self.version:
            self.load_weights(offered.fetch(), offered.version)
        return self.version

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
                 state_file: str | None = None, **engine_options):
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
        restore_after_restart(self, state_file)   # state_file: actors/restart_state.py

    def generate(self, prompts: list[Prompt], sampling: SamplingParams,
                 group_tag: str = "", weights: Weights | None = None) -> list[Sample]:
        start = time.perf_counter()
        offered = self.engine.offered
        if weights is not None and offered is not None and offered.version > weights.version:
            weights = offered   # partial rollouts: newer weights arrived after this call was sent
        if weights is not None and weights.version != self.engine.version:
            self.engine.load_weights(weights.fetch(), weights.version)
        samples = self.engine.generate(prompts, sampling, group_tag)
        if self.policy_rewards:
            self.policy_rewards.score(samples)
        self.busy_s += time.perf_counter() - start
        return samples

    def offer_weights(self, weights: Weights) -> None:
        """Newer weights for the generation running now (partial rollouts): the engine loads
        them before its next token. Runs beside `generate` (the control concurrency group)."""
        self.engine.offered = weights

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
