"""ONI's asynchronous LLM labeler and the reward source that reads it (arXiv:2410.23022).

    labeler = Labeler(url, kind="classification", batch_size=100)
    rewards, labeled = labeler.annotate(["7+5=12", "4+8=13"])   # never waits for the judge

`annotate(keys)` answers at once from what is known: the label table (retrieval) or the
intrinsic model trained on it (classification, ranking; rewards/oni.py). Keys without a label
get `default` and are queued for the judge. A daemon thread takes the newest `batch_size` queued
keys (newest first: fresh text is labeled first), asks the judge, merges the verdicts into the
table (its version goes up by one per merge), and trains the intrinsic model on them; the next
`annotate` sees the new labels, however late they arrived.

No key is sent to the judge twice: a key is queued only if it is neither labeled nor pending
(queued or being labeled). A key whose request failed (judge unreachable, timed out) leaves
the pending set unlabeled, so it is queued again the next time it is seen; a verdict that does
not parse counts as label 0 (ONI) and is final. The queue holds at most `max_pending` keys; when
full the oldest is dropped (counted, logged at most once per `log_every_s`), never the caller
blocked. Ranking labels pairs instead: every `subsample`-th key seen joins an observation store,
and while fewer than 2 x batch_size pairs are queued, `annotate` queues random unlabeled pairs.

Where it runs: a plain object (tests, cluster=inline via LOCAL_LABELERS) or one named Ray actor
shared by every reward worker (`spawn_labeler`). The reward source `OniReward` finds it by name,
and builds a private one from its own kwargs when there is none (one per reward worker).
"""
from __future__ import annotations

import inspect
import json
import logging
import random
import re
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Sequence

from core.records import Sample
from core.registry import register
from rewards.oni import KINDS, LABEL_TARGET, IntrinsicModel, count_scaled

log = logging.getLogger("rewardmill.labeler")

DEFAULT_NAME = "rewardmill-labeler"
# A key is "question<SEP>text" when the question is part of it (context: question), else the
# text. The ASCII unit separator never occurs in ordinary text, so the split is unambiguous.
SEP = "\x1f"

SYSTEM = "You are a helpful and honest judge of answers to questions."
CLASSIFY_TEMPLATE = (
    "Question: {question}\n\n"
    "Part of an answer to it (a reasoning step, the final answer, or the whole response):\n"
    "{text}\n\n"
    "Is this part correct and helpful for answering the question? "
    "Reply with <label>yes</label> or <label>no</label>.")
RANK_TEMPLATE = (
    "Two parts of answers, each written for the question shown with it.\n\n"
    "(1) Question: {question1}\nPart: {text1}\n\n"
    "(2) Question: {question2}\nPart: {text2}\n\n"
    "Which part is more correct and helpful? End with {{\"best_description\": 1}}, "
    "{{\"best_description\": 2}}, or {{\"best_description\": None}} if neither is better.")
POSITIVE = r"<label>\s*yes\s*</label>|^\s*yes\b"
NEGATIVE = r"<label>\s*no\s*</label>|^\s*no\b"
PREFERENCE = r"\"?best_description\"?\s*:\s*\"?(1|2|none)"


def make_key(text: str, question: str | None = None) -> str:
    return text if question is None else f"{question}{SEP}{text}"


def split_key(key: str) -> tuple[str, str]:
    """(question, text); the question is "(not shown)" for a key made without one."""
    question, sep, text = key.partition(SEP)
    return (question, text) if sep else ("(not shown)", key)


def parse_verdict(text: str, positive: str = POSITIVE, negative: str = NEGATIVE) -> float | None:
    """1.0 or 0.0 from the last positive or negative match in the judge's reply; None if neither."""
    flags = re.I | re.M
    hits = [(m.start(), 1.0) for m in re.finditer(positive, text, flags)]
    hits += [(m.start(), 0.0) for m in re.finditer(negative, text, flags)]
    return max(hits)[1] if hits else None


def parse_preference(text: str) -> float | None:
    """Motif's `"best_description": 1|2|None` (the last one): the soft target p (0: the first
    is better, 1: the second, 0.5: a tie); None if absent."""
    found = re.findall(PREFERENCE, text, re.I)
    if not found:
        return None
    return LABEL_TARGET[{"1": "first", "2": "second"}.get(found[-1], "tie")]


def take_newest(queue: deque, n: int) -> list:
    """Pop up to n items from the right (newest) end: newest first."""
    return [queue.pop() for _ in range(min(n, len(queue)))]


def _canonical(item):
    """Pending/done identity: a key, or an unordered pair (a, b) ~ (b, a)."""
    return tuple(sorted(item)) if isinstance(item, tuple) else item


class Labeler:
    """See the module docstring. Every argument is a `kwargs` entry of the `oni` reward source
    (conf/reward/oni.yaml documents each with its unit)."""

    def __init__(self, url: str | None = None, model: str = "judge", kind: str = "retrieval",
                 default: float = 0.0, batch_size: int = 100, max_pending: int = 10000,
                 template: str | None = None, system: str | None = SYSTEM,
                 positive: str = POSITIVE, negative: str = NEGATIVE, api: str = "chat",
                 max_tokens: int = 64, temperature: float = 0.1, request_timeout_s: float = 60.0,
                 retries: int = 2, concurrency: int = 8, train_steps: int = 32,
                 train_batch: int = 256, lr: float = 1e-4, grad_clip: float | None = 10.0,
                 dataset_cap: int = 25000, threshold: float = 0.5, normalise: bool = True,
                 eps_threshold: float | None = -0.5, subsample: int = 10,
                 pairs_per_refill: int = 10, max_observations: int = 10000,
                 log_every_s: float = 60.0, seed: int = 0, label_log: str | None = None,
                 start: bool = True):
        if kind not in KINDS:
            raise ValueError(f"labeler kind {kind!r}: choose one of {KINDS}")
        if batch_size < 1 or max_pending < 1 or subsample < 1:
            raise ValueError("labeler batch_size, max_pending and subsample must be >= 1")
        if start and not url:
            raise ValueError("the labeler has no judge URL (kwargs.url, e.g. ${judge.url})")
        self.url, self.judge_model, self.api = url, model, api
        self.kind, self.batch_size, self.max_pending = kind, batch_size, max_pending
        self.template = template or (RANK_TEMPLATE if kind == "ranking" else CLASSIFY_TEMPLATE)
        self.system, self.positive, self.negative = system, positive, negative
        self.max_tokens, self.temperature = max_tokens, temperature
        self.request_timeout_s, self.retries = request_timeout_s, retries
        self.concurrency = concurrency
        self.n_train_steps, self.train_batch = train_steps, train_batch
        self.subsample, self.pairs_per_refill = subsample, pairs_per_refill
        self.max_observations, self.log_every_s = max_observations, log_every_s
        self.model = IntrinsicModel(kind, default, threshold, normalise, eps_threshold, lr,
                                    grad_clip, dataset_cap, seed=seed)
        # `lock` guards everything annotate reads or writes (queue, pending, table, the served
        # network, counters); `train_lock` the network under training and its optimiser, so a
        # checkpoint never copies a half-taken step. Order: train_lock, then lock.
        self.lock = threading.Lock()
        self.train_lock = threading.Lock()
        self.ready = threading.Condition(self.lock)   # signalled when keys are queued
        self.queue: deque = deque()          # keys (or pairs) to label, oldest left
        self.pending: set = set()            # queued or being labeled (canonical form)
        self.flight: list = []               # the batch the judge is labeling now
        self.done_pairs: set = set()         # ranking: pairs already labeled (canonical)
        self.observations: list[str] = []    # ranking: keys pairs are drawn from
        self.observed: set[str] = set()
        self.seen = 0                        # keys annotated (ranking's subsample counter)
        self.version = 0                     # label merges so far
        self.rng = random.Random(seed)
        self.counters = dict.fromkeys(
            ("hits", "misses", "enqueued", "dropped", "labeled", "unparsed", "judge_calls",
             "judge_prompts", "judge_failures", "train_rounds"), 0)
        self.last_loss = float("nan")
        self._drops_unreported, self._last_drop_log = 0, -float("inf")
        self._client = None
        self._closed = threading.Event()
        # every judge answer, appended as it is merged: a labeler restarted after its process
        # died (or a resumed run) reads them back instead of asking the judge again
        self.label_log = Path(label_log) if label_log else None
        self.replay_label_log()
        if start:
            # imported here, where a judge is called, and now rather than at the first batch:
            # the openai SDK's import takes about 1 s of CPU, and holding the GIL in this
            # process it stalled the reward calls of the run's first steps
            from rewards.judge_client import client_for
            self._client = client_for(url, model, request_timeout_s, retries, concurrency)
            # the thread holds the labeler only weakly: a labeler nobody uses any more is
            # collected and its thread ends (no HTTP calls to a judge that was stopped)
            threading.Thread(target=_work, args=(weakref.ref(self),), daemon=True,
                             name="oni-labeler").start()

    # --- the caller's side: never waits for the judge -----------------------------------------

    def annotate(self, keys: Sequence[str], enqueue: bool = True) -> tuple[list[float], list[bool]]:
        """Per key: r_int now, and whether it came from a label or trained model (else
        `default`). enqueue=False (held-out evaluation) only reads: nothing is sent to the judge."""
        keys = list(keys)
        with self.lock:
            rewards, labeled = self.model.rewards(keys)
            hits = sum(labeled)
            self.counters["hits"] += hits
            self.counters["misses"] += len(keys) - hits
            if enqueue:
                before = self.counters["enqueued"]
                if self.kind == "ranking":
                    self._observe(keys)
                    self._refill_pairs()
                else:
                    for key in keys:
                        if key not in self.model.table and key not in self.pending:
                            self._enqueue(key)
                if self.counters["enqueued"] > before:
                    self.ready.notify()
        return rewards, labeled

    def merge(self, labels: dict[str, float] | None = None,
              pairs: Sequence[tuple[str, str, float]] = (), train: bool = False) -> int:
        """Add labels (key -> 0/1) or labeled pairs (a, b, p) as if the judge gave them (to
        seed a table, say); train: then run one training round, as a judge's batch does.
        Returns the new table version."""
        with self.train_lock:
            with self.lock:
                version = self._merge(labels or {}, list(pairs), [])
            if train:
                self._train()
        return version

    def stats(self) -> dict[str, float]:
        """Counters: hits/misses (keys answered from a label or model / with `default`),
        enqueued, dropped (queue full), labeled, unparsed (judged 0), judge_calls (batches),
        judge_prompts, judge_failures (prompts without an answer), train_rounds; and now:
        pending (queued + in flight), queue_depth, in_flight, table_version, dataset,
        model_version (training rounds published), observations (ranking), last_loss."""
        with self.lock:
            return {**self.counters, "pending": len(self.pending), "queue_depth": len(self.queue),
                    "in_flight": len(self.flight), "table_version": self.version,
                    "dataset": self.model.dataset_size, "model_version": self.model.published,
                    "observations": len(self.observations), "last_loss": self.last_loss}

    def close(self) -> None:
        """Stop the worker thread after its current batch."""
        self._closed.set()
        with self.lock:
            self.ready.notify_all()

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Table, model (weights, optimiser, dataset, running stats), counters, and the keys
        still pending (in flight first, then the queue, oldest first). Waits for a training
        round in progress to end."""
        with self.train_lock, self.lock:
            return {"model": self.model.state_dict(), "version": self.version,
                    "counters": dict(self.counters), "pending": self.flight + list(self.queue),
                    "done_pairs": sorted(self.done_pairs), "observations": list(self.observations),
                    "seen": self.seen, "rng": self.rng.getstate(), "last_loss": self.last_loss}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict. Its pending keys are queued again (they were seen but never
        labeled; the pending/label checks keep each one labeled once)."""
        with self.train_lock, self.lock:
            self.model.load_state_dict(state["model"])
            self.version = state["version"]
            self.done_pairs = {tuple(p) for p in state["done_pairs"]}
            self.observations = list(state["observations"])
            self.observed, self.seen = set(self.observations), state["seen"]
            self.rng.setstate(state["rng"])
            self.last_loss = state["last_loss"]
            self.queue.clear()
            self.pending = {_canonical(x) for x in self.flight}
            for item in state["pending"]:
                item = tuple(item) if isinstance(item, list) else item
                if not self._is_done(item) and _canonical(item) not in self.pending:
                    self._enqueue(item)
            self.counters = dict(state["counters"])   # re-queueing is not new work
            self.ready.notify()
        self.replay_label_log()   # labels the judge gave after that checkpoint was taken

    def replay_label_log(self) -> int:
        """Merge every label and pair in `label_log` (a restarted labeler, or one just loaded
        from a checkpoint older than the log), then train on them. Returns how many."""
        if not self.label_log or not self.label_log.exists():
            return 0
        labels, pairs = {}, []
        for line in self.label_log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue   # a line cut short when the process died mid-write
            if "pair" in entry:
                pairs.append((*entry["pair"], entry["p"]))
            else:
                labels[entry["key"]] = entry["label"]
        with self.train_lock:
            with self.lock:
                self._merge({k: v for k, v in labels.items() if k not in self.model.table},
                            [p for p in pairs if _canonical(p[:2]) not in self.done_pairs], [],
                            log=False)
                for item in list(self.pending):
                    if self._is_done(item):
                        self.pending.discard(item)
                self.queue = deque(x for x in self.queue if not self._is_done(x))
            if labels or pairs:
                self._train()
        return len(labels) + len(pairs)

    # --- queueing (callers hold self.lock) ------------------------------------------------------

    def _is_done(self, item) -> bool:
        if isinstance(item, tuple):
            return _canonical(item) in self.done_pairs
        return item in self.model.table

    def _enqueue(self, item) -> None:
        # full: drop the oldest, the key newest-first batching would reach last
        if len(self.queue) >= self.max_pending:
            old = self.queue.popleft()
            self.pending.discard(_canonical(old))
            self.counters["dropped"] += 1
            self._drops_unreported += 1
            now = time.monotonic()
            if now - self._last_drop_log >= self.log_every_s:
                log.warning("labeler queue full (max_pending=%d): dropped %d oldest keys since "
                            "the last report, %d in all", self.max_pending,
                            self._drops_unreported, self.counters["dropped"])
                self._drops_unreported, self._last_drop_log = 0, now
        self.queue.append(item)
        self.pending.add(_canonical(item))
        self.counters["enqueued"] += 1

    def _observe(self, keys: list[str]) -> None:
        """Ranking: every `subsample`-th key joins the observation store (distinct keys; when
        full, a random one makes room)."""
        for key in keys:
            self.seen += 1
            if self.seen % self.subsample or key in self.observed:
                continue
            if len(self.observations) >= self.max_observations:
                i = self.rng.randrange(len(self.observations))
                self.observed.discard(self.observations[i])
                self.observations[i] = key
            else:
                self.observations.append(key)
            self.observed.add(key)

    def _refill_pairs(self) -> None:
        """Ranking: while the queue is short, queue up to `pairs_per_refill` random pairs that
        are neither labeled nor pending."""
        if len(self.queue) >= 2 * self.batch_size or len(self.observations) < 2:
            return
        added = 0
        for _ in range(3 * self.pairs_per_refill):
            if added == self.pairs_per_refill:
                break
            pair = tuple(self.rng.sample(self.observations, 2))
            if _canonical(pair) in self.done_pairs or _canonical(pair) in self.pending:
                continue
            self._enqueue(pair)
            added += 1

    # --- the worker thread's side ---------------------------------------------------------------

    def _take_batch(self, wait_s: float) -> list:
        with self.lock:
            if not self.queue and not self._closed.is_set():
                self.ready.wait(wait_s)
            self.flight = take_newest(self.queue, self.batch_size)
            return list(self.flight)

    def _prompt(self, item) -> str | list[dict]:
        if isinstance(item, tuple):
            (q1, t1), (q2, t2) = split_key(item[0]), split_key(item[1])
            user = self.template.format(question1=q1, text1=t1, question2=q2, text2=t2)
        else:
            question, text = split_key(item)
            user = self.template.format(question=question, text=text)
        if self.api == "completions":
            return f"{self.system}\n\n{user}\n" if self.system else user
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}]

    def _judge(self, batch: list) -> list:
        try:
            return self._client.generate(self.api, [self._prompt(x) for x in batch],
                                         max_tokens=self.max_tokens, temperature=self.temperature)
        except Exception as err:   # a bad template, a client bug: the batch fails, the run goes on
            log.warning("labeler: judge call failed: %s: %s", type(err).__name__, err)
            return [None] * len(batch)

    def _label(self, batch: list) -> bool:
        """Label one batch, merge, train. False when every request failed (back off)."""
        answers = self._judge(batch)
        labels: dict[str, float] = {}
        pairs, unparsed = [], []
        for item, answer in zip(batch, answers):
            if answer is None:
                continue
            text = answer[0].text if answer else ""
            if isinstance(item, tuple):
                p = parse_preference(text)
                if p is None:
                    unparsed.append(item)
                else:
                    pairs.append((item[0], item[1], p))
            else:
                verdict = parse_verdict(text, self.positive, self.negative)
                if verdict is None:
                    unparsed.append(item)
                labels[item] = 0.0 if verdict is None else verdict   # ONI: unparseable -> 0
        failed = sum(a is None for a in answers)
        with self.train_lock:
            with self.lock:
                self.counters["judge_calls"] += 1
                self.counters["judge_prompts"] += len(batch)
                self.counters["judge_failures"] += failed
                self.counters["unparsed"] += len(unparsed)
                self._merge(labels, pairs, unparsed)
                for item in batch:      # failed ones too: they may be queued again when seen
                    self.pending.discard(_canonical(item))
                self.flight = []
            if labels or pairs:
                self._train()
        return failed < len(batch)

    def _merge(self, labels: dict[str, float], pairs: list, unparsed_pairs: list,
               log: bool = True) -> int:
        """Caller holds train_lock and lock."""
        if log and self.label_log and (labels or pairs):
            self.label_log.parent.mkdir(parents=True, exist_ok=True)
            with self.label_log.open("a") as f:
                f.writelines(json.dumps({"key": k, "label": v}) + "\n" for k, v in labels.items())
                f.writelines(json.dumps({"pair": [a, b], "p": p}) + "\n" for a, b, p in pairs)
        if labels:
            self.model.add_labels(labels)
        if pairs:
            self.model.add_pairs(pairs)
        done = [(a, b) for a, b, _ in pairs] + [p for p in unparsed_pairs if isinstance(p, tuple)]
        self.done_pairs.update(_canonical(p) for p in done)
        self.counters["labeled"] += len(labels) + len(done)
        if labels or done:
            self.version += 1
        return self.version

    def _train(self) -> None:
        """Caller holds train_lock (not lock: annotate goes on meanwhile). Trains the model's
        own copy, then publishes it under lock in one swap."""
        metrics = self.model.train_steps(self.n_train_steps, self.train_batch)
        if metrics:
            with self.lock:
                self.model.publish()
                self.counters["train_rounds"] += 1
                self.last_loss = metrics["loss"]


def _work(ref: "weakref.ref[Labeler]") -> None:
    backoff = 0.5
    while True:
        labeler = ref()
        if labeler is None or labeler._closed.is_set():
            return
        batch = labeler._take_batch(wait_s=0.5)
        if batch and not labeler._label(batch):
            # the judge answered nothing: wait before the next batch (up to 30 s)
            labeler._closed.wait(backoff)
            backoff = min(2 * backoff, 30.0)
        elif batch:
            backoff = 0.5
        del labeler


# --- finding the shared labeler ---------------------------------------------------------------

LOCAL_LABELERS: dict[str, Labeler] = {}   # name -> labeler, for cluster=inline


class RemoteLabeler:
    """A named Ray actor behind the Labeler's calls (blocking on each, which returns at once)."""

    def __init__(self, handle):
        self.handle = handle

    def annotate(self, keys, enqueue=True):
        import ray
        return ray.get(self.handle.annotate.remote(list(keys), enqueue))

    def stats(self):
        import ray
        return ray.get(self.handle.stats.remote())


def find_labeler(name: str = DEFAULT_NAME, namespace: str | None = None):
    """The Ray actor named `name` if Ray runs here and has one, else LOCAL_LABELERS[name], else
    None. Ray is only asked if this process already imported and started it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        try:
            return RemoteLabeler(ray.get_actor(name, namespace=namespace))
        except ValueError:   # no such actor
            pass
    return LOCAL_LABELERS.get(name)


def spawn_labeler(kwargs: dict, name: str = DEFAULT_NAME, remote: bool = True,
                  namespace: str | None = None, max_concurrency: int = 4,
                  max_restarts: int = -1, num_cpus: float = 0.0):
    """Start the labeler every `oni` source named `name` will use. remote: a named Ray actor
    (returns its handle) that answers `max_concurrency` calls at once and comes back after its
    process dies (`max_restarts`), with the labels of its `label_log`; else a plain
    object in LOCAL_LABELERS (cluster=inline). `kwargs`: the Labeler's, e.g.
    `OniReward.split_kwargs(source_kwargs)[1]`."""
    if not remote:
        LOCAL_LABELERS[name] = Labeler(**kwargs)
        return LOCAL_LABELERS[name]
    import ray
    # annotate may run again after a restart: the pending/label checks make that harmless
    return ray.remote(Labeler).options(
        name=name, namespace=namespace, max_concurrency=max_concurrency, num_cpus=num_cpus,
        max_restarts=max_restarts, max_task_retries=3 if max_restarts else 0,
        get_if_exists=True).remote(**kwargs)


# --- the reward source ------------------------------------------------------------------------

KEYS, CONTEXTS = ("answer", "response", "step"), ("question", "none")
GRANULARITIES = ("response", "step")


@register("reward", "oni")
class OniReward:
    """ONI's intrinsic term r_int(m) * c(m) per sample, summed over its keys (granularity
    "response") or one per step (granularity "step", with key "step").

    ONI's total c_ext * r_ext + c_int * r_int(m) * c(m) is the weighted sum of the sources:
    this source's `weight` is c_int, the other sources (the task's check) are r_ext with
    weight c_ext. c(m) = 1 / N(m)^beta counts occurrences within one response.

    key: step (one key per sample.steps entry; needs rollout.step_delimiter) | answer (the
    answer extracted with `answer_format`, e.g. ${data.answer_format}) | response (the whole
    response). context: question (the key includes the question, so a verdict is for this
    question) | none (the text alone, so identical text shares a label across questions, as
    ONI's captions do). `labeler`: the name of the shared labeler to use (a Ray actor or
    LOCAL_LABELERS entry); with none, this source builds its own from the remaining kwargs
    (Labeler's arguments) and checkpoints it. A shared labeler is its owner's to checkpoint.
    """

    OWN = ("key", "context", "beta", "granularity", "answer_format", "labeler", "namespace")

    def __init__(self, key: str = "step", context: str = "question", beta: float = 3.0,
                 granularity: str = "response", answer_format: str | None = None,
                 labeler: str = DEFAULT_NAME, namespace: str | None = None, **labeler_kwargs):
        for name, value, choices in (("key", key, KEYS), ("context", context, CONTEXTS),
                                     ("granularity", granularity, GRANULARITIES)):
            if value not in choices:
                raise ValueError(f"oni: kwargs.{name}={value!r}: choose one of {choices}")
        if granularity == "step" and key != "step":
            raise ValueError("oni: granularity step scores steps: it needs kwargs.key=step")
        if key == "answer" and not answer_format:
            raise ValueError("oni: key=answer needs kwargs.answer_format (${data.answer_format}); "
                             "this task states none")
        try:   # a misspelt kwarg fails now, not at the first reward call
            inspect.signature(Labeler).bind(**labeler_kwargs)
        except TypeError as err:
            raise TypeError(f"oni: kwargs: {err}") from None
        self.key, self.context, self.beta, self.granularity = key, context, beta, granularity
        self.answer_format = answer_format
        self.name, self.namespace, self.labeler_kwargs = labeler, namespace, labeler_kwargs
        self.labeler = None       # resolved at the first call (the owner may spawn it later)
        self.own = False
        self.saved: dict | None = None   # a checkpoint that arrived before the labeler
        self.learning = True      # the reward worker sets False for held-out samples

    @classmethod
    def split_kwargs(cls, kwargs: dict) -> tuple[dict, dict]:
        """(this source's own kwargs, the Labeler's): how an orchestrator spawns the shared one."""
        kwargs = dict(kwargs)
        return ({k: kwargs.pop(k) for k in cls.OWN if k in kwargs}, kwargs)

    def keys_of(self, sample: Sample) -> list[str | None]:
        """The sample's keys in order; None for an empty step or an answer not stated."""
        question = sample.question if self.context == "question" else None
        if self.key == "step":
            if sample.steps is None:
                raise ValueError("oni key=step needs sample.steps: set rollout.step_delimiter")
            texts = [step.strip() or None for step in sample.steps]
        elif self.key == "answer":
            from core.answers import extract_answer
            texts = [extract_answer(sample.response_text, self.answer_format)]
        else:
            texts = [sample.response_text.strip() or None]
        return [None if t is None else make_key(t, question) for t in texts]

    def __call__(self, samples: Sample | list[Sample]):
        single = isinstance(samples, Sample)
        samples = [samples] if single else list(samples)
        keys = [self.keys_of(s) for s in samples]
        flat = [k for ks in keys for k in ks if k is not None]
        rewards = iter(self._labeler().annotate(flat, enqueue=self.learning)[0] if flat else [])
        out = []
        for ks in keys:
            real = [k for k in ks if k is not None]
            scaled = iter(count_scaled([next(rewards) for _ in real], real, self.beta))
            per_key = [0.0 if k is None else next(scaled) for k in ks]
            out.append(per_key if self.granularity == "step" else sum(per_key))
        return out[0] if single else out

    def _labeler(self):
        if self.labeler is None:
            found = find_labeler(self.name, self.namespace)
            if found is None:
                found, self.own = Labeler(**self.labeler_kwargs), True
                if self.saved is not None:
                    found.load_state_dict(self.saved)
            self.labeler, self.saved = found, None
        return self.labeler

    def stats(self) -> dict[str, float]:
        return self._labeler().stats()

    def state_dict(self) -> dict:
        """This source's own labeler (a shared one is checkpointed by its owner)."""
        if self.own:
            return {"labeler": self.labeler.state_dict()}
        return {"labeler": self.saved} if self.saved is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("labeler"):
            return
        if self.labeler is None:
            self.saved = state["labeler"]     # loaded once the labeler is built
        elif self.own:
            self.labeler.load_state_dict(state["labeler"])
        else:
            log.info("oni: ignoring a checkpointed labeler: the shared one %r is its owner's",
                     self.name)

    def close(self) -> None:
        if self.own:
            self.labeler.close()
