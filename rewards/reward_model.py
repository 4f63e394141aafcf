"""Scalar reward models (a sequence-classification head with one output) as reward sources.

  reward_model  score each response with a trained RM (Bradley-Terry: scripts/train_preference.py
                loss=bradley_terry); optionally squashed by a sigmoid
  cooper        Cooper (arXiv:2508.05613): the policy reward is sigmoid(RM logit), and after
                scoring each batch the RM takes one Bradley-Terry step on fresh pairs, a rule-
                verified positive against a constructed negative, so it keeps up with the policy

Both are stateful sources (built once per reward worker); Cooper's RM weights and optimizer
are saved in checkpoints. `path: null` in the main job means: train one first (see
orchestrator/reward_model_prep.py).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import random

import torch

from core.models import load_reward_model, load_tokenizer
from core.records import Sample, groups_of
from core.registry import lookup, register
from core.preference_losses import bradley_terry_loss

log = logging.getLogger("rewardmill.reward")

COOPER_TEMPLATE = ("<question>{prompt}</question>\n<reference_answer>{answer}</reference_answer>\n"
                   "<completion>{response}</completion>")
NEGATIVE_INSTRUCTION = ("Generate a completely incorrect and misleading response to the question "
                        "below, similar in length to the correct one and plausible-sounding but "
                        "incorrect.\n\nQuestion: {prompt}\nCorrect response: {response}\n"
                        "Incorrect response:")


class ScalarRewardModel:
    """A reward model on this process's CPU/GPU: `logits(texts)` -> one score per text."""

    def __init__(self, path: str, batch_size: int = 64, max_tokens: int = 2048, seed: int = 0):
        self.tokenizer = load_tokenizer(path)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        # `seed`: the score head's init when `path` holds a policy (no trained head)
        self.model = load_reward_model(path, seed=seed).to(self.device).eval()
        self.batch_size, self.max_tokens = batch_size, max_tokens

    def logits(self, texts: list[str], grad: bool = False) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            rows = [self.tokenizer(t)["input_ids"][-self.max_tokens:] for t in texts[i:i + self.batch_size]]
            width = max(len(r) for r in rows)
            # right padding: the head reads the last non-pad token, positions start at 0
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for k, r in enumerate(rows):
                ids[k, :len(r)], mask[k, :len(r)] = torch.tensor(r), 1
            with torch.set_grad_enabled(grad):
                out.append(self.model(input_ids=ids.to(self.device),
                                      attention_mask=mask.to(self.device)).logits[:, 0].float())
        return torch.cat(out)


def _render(template: str, sample: Sample, response: str | None = None) -> str:
    return template.format(prompt=sample.question, answer=sample.answer,
                           response=sample.response_text if response is None else response)


@register("reward", "reward_model")
class RewardModelScore:
    """RM score of each response (scope "batch": one batched forward). `template` formats
    {prompt}, {response}, {answer}; `sigmoid: true` maps the logit to (0, 1)."""

    def __init__(self, path: str, template: str = "{prompt}{response}", sigmoid: bool = False,
                 batch_size: int = 64):
        if not path:
            raise ValueError("reward_model: kwargs.path is required (a folder written by "
                             "scripts/train_preference.py loss=bradley_terry, or a hub RM)")
        self.rm, self.template, self.sigmoid = ScalarRewardModel(path, batch_size), template, sigmoid

    def __call__(self, samples: list[Sample]) -> list[float]:
        logits = self.rm.logits([_render(self.template, s) for s in samples])
        return (torch.sigmoid(logits) if self.sigmoid else logits).tolist()


@register("reward", "cooper")
class Cooper:
    """Cooper's co-trained reward model.

    reward = sigmoid(RM logit) (binarised at 0.5 with `binarize`). Then, per group, the first
    response that the rule source `verifier_source` scores >= 1 is a positive; a negative is
    built from it by `negatives` and kept only if `verifier` (a registered sample-level
    reward) scores it < 1 (up to 3 tries); groups without either are skipped. The RM takes
    one AdamW step on mean -log sigmoid(s_pos - s_neg) (Cooper: lr 1e-5).
    negatives: "group" [inferred] (a response of the same group that `verifier_source`
    rejects: the policy's own failures, so whatever the policy drifts toward becomes a
    negative), "assistant" (an LLM behind `assistant_url` writes a plausible wrong answer,
    temperature 0.7), or the dotted path of a task's fn(solution, rng) -> a corrupted copy
    (tasks.toy_arith.corrupt changes one digit of a toy scratchpad)."""

    def __init__(self, path: str, verifier: str, verifier_kwargs: dict | None = None,
                 verifier_source: str = "correct", negatives: str = "group",
                 template: str = COOPER_TEMPLATE, lr: float = 1e-5, binarize: bool = False,
                 assistant_url: str | None = None, assistant_model: str = "judge", seed: int = 0,
                 batch_size: int = 64):
        if not path:
            raise ValueError("cooper: kwargs.path is required (the initial reward model)")
        if negatives == "assistant" and not assistant_url:
            raise ValueError("cooper: kwargs.negatives=assistant needs kwargs.assistant_url")
        # a corrupting function is resolved now, so a wrong path fails at start, not mid-run
        self.corrupt = None if negatives in ("group", "assistant") else lookup("corrupt", negatives)
        self.rm = ScalarRewardModel(path, batch_size, seed=seed)
        self.rm.model.train()
        self.optimizer = torch.optim.AdamW(self.rm.model.parameters(), lr=lr)
        self.verifier_source, self.verify = verifier_source, lookup("reward", verifier)
        self.verifier_kwargs = dict(verifier_kwargs or {})
        self.negatives, self.template, self.binarize = negatives, template, binarize
        self.assistant_url, self.assistant_model = assistant_url, assistant_model
        self.rng = random.Random(seed)
        self.updates = 0
        self.learning = True     # the reward worker sets False while scoring held-out samples

    def __call__(self, samples: list[Sample]) -> list[float]:
        rewards = torch.sigmoid(self.rm.logits([_render(self.template, s) for s in samples]))
        if self.binarize:
            rewards = (rewards > 0.5).float()
        if self.learning:
            self.update(samples)
        return rewards.tolist()

    def update(self, samples: list[Sample]) -> dict:
        pairs = [p for g in groups_of(samples) if (p := self._pair(g))]
        if not pairs:
            return {}
        texts = [_render(self.template, s, r) for s, pos, neg in pairs for r in (pos, neg)]
        scores = self.rm.logits(texts, grad=True)
        loss, gap = bradley_terry_loss(scores[0::2], scores[1::2])
        self.optimizer.zero_grad()
        loss.mean().backward()
        self.optimizer.step()
        self.updates += 1
        stats = {"rm_loss": float(loss.mean().detach()), "rm_pairs": len(pairs),
                 "rm_pair_accuracy": float((gap > 0).float().mean())}
        log.info("cooper RM update %d: %s", self.updates, stats)
        return stats

    def _pair(self, group: list[Sample]) -> tuple[Sample, str, str] | None:
        positive = next((s for s in group if s.rewards.get(self.verifier_source, 0.0) >= 1.0), None)
        if positive is None:
            return None
        if self.negatives == "group":
            rejected = [s for s in group if s.rewards.get(self.verifier_source, 0.0) < 1.0]
            return (positive, positive.response_text,
                    self.rng.choice(rejected).response_text) if rejected else None
        for _ in range(3):
            negative = self._negative(positive)
            if negative and self.verify(dataclasses.replace(positive, response_text=negative),
                                       **self.verifier_kwargs) < 1.0:
                return positive, positive.response_text, negative
        return None

    def _negative(self, positive: Sample) -> str | None:
        if self.corrupt is not None:
            try:
                return self.corrupt(positive.response_text, self.rng)
            except (IndexError, ValueError):  # nothing in this response to corrupt
                return None
        from rewards.judge_client import client_for
        words = len(positive.response_text.split())
        [out] = client_for(self.assistant_url, self.assistant_model).complete(
            [NEGATIVE_INSTRUCTION.format(prompt=positive.question, response=positive.response_text)],
            max_tokens=words + 500, temperature=0.7)
        return out[0].text if out else None

    def state_dict(self) -> dict:
        return {"model": copy.deepcopy(self.rm.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "rng": self.rng.getstate(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.rm.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.setstate(state["rng"])
        self.updates = state["updates"]
