"""Client for generative judges behind an OpenAI-compatible API (scripts/serve.py, vLLM, an API).

    client = JudgeClient("http://127.0.0.1:8000/v1", model="judge", timeout_s=30)
    outs = client.chat(["Rate this answer ...", ...], max_tokens=64, temperature=0)
    outs = client.complete(["Raw text the judge continues"], max_tokens=1, logprobs=20)
    # per prompt: a list of n Completions, or None where the request failed for good

The `openai` SDK does the HTTP: a timeout per request, and retries with exponential backoff
(from 0.5 s, with jitter) after connection errors, timeouts and 408/409/429/5xx answers. This
layer adds what reward sources need: at most `concurrency` requests in flight, an LRU cache of
deterministic requests (temperature 0 or a seed; `cache_size` entries), counters in `stats`,
and no exceptions for a failed request: the caller gets None and flags the sample.
A server whose weights can change between requests (scripts/serve.py after a reload) says
so with an `x-weights-version` header; a cached answer from such a server is reused only
while a cheap GET /models still reports the version that gave it.

`chat` sends messages (a plain string becomes one user message; the server renders the
judge's chat template); `complete` sends raw text for a judge to continue (legacy
completions). Log-probs: `logprobs=k` asks for the k likeliest tokens at every generated
position, read back as `Completion.top_logprobs` (one {token: logprob} dict per position).
The API key is `api_key`, else $OPENAI_API_KEY (as the SDK reads it); a self-served judge
needs none.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import openai

log = logging.getLogger("rewardmill.judge")

APIS = ("chat", "completions")


@dataclass
class Completion:
    text: str
    finish_reason: str = ""
    top_logprobs: list[dict[str, float]] | None = None  # per generated token: token -> logprob


class JudgeClient:
    def __init__(self, base_url: str, model: str = "judge", timeout_s: float = 30.0,
                 max_retries: int = 2, concurrency: int = 8, cache_size: int = 10000,
                 api_key: str | None = None):
        if not base_url:   # the SDK would fall back to api.openai.com
            raise ValueError("the judge has no URL (kwargs.url; judge.url is set once the job "
                             "serves its judge)")
        self.model = model
        # requests: HTTP requests sent (retries and version checks included); retries: attempts
        # after a call's first; failures: calls answered None; cache_hits: calls not sent
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}
        self.lock = threading.Lock()
        # what the HTTP layer saw for the call running in this thread: attempts, weights version
        self.seen = threading.local()
        http = openai.DefaultHttpxClient(event_hooks={"request": [self._count_attempt],
                                                      "response": [self._read_version]})
        # A self-served judge ignores the key, but the SDK insists on one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "unused"
        self.sdk = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout_s,
                                 max_retries=max_retries, http_client=http)
        self.pool = cf.ThreadPoolExecutor(concurrency, thread_name_prefix="judge")
        self.cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size

    def chat(self, prompts: list[str | list[dict]], **params) -> list[list[Completion] | None]:
        """Chat completions; each prompt is a string (one user message) or a messages list."""
        return self.generate("chat", prompts, **params)

    def complete(self, prompts: list[str], **params) -> list[list[Completion] | None]:
        """Legacy completions: the judge continues each raw text."""
        return self.generate("completions", prompts, **params)

    def generate(self, api: str, prompts: list, max_tokens: int = 256, temperature: float = 0.0,
                 n: int = 1, stop: list[str] | None = None, logprobs: int | None = None,
                 seed: int | None = None) -> list[list[Completion] | None]:
        """`api` "chat" or "completions"; one result per prompt, in order, None if it failed."""
        if api not in APIS:
            raise ValueError(f"judge api must be one of {APIS}, got {api!r}")
        params = {"max_tokens": max_tokens, "temperature": temperature, "n": n}
        for key, value in (("stop", stop), ("logprobs", logprobs), ("seed", seed)):
            if value is not None:
                params[key] = value
        futures = [self.pool.submit(self._cached, api, prompt, params) for prompt in prompts]
        return [f.result() for f in futures]

    def _cached(self, api: str, prompt, params: dict) -> list[Completion] | None:
        key = json.dumps([api, prompt, params], sort_keys=True)
        cacheable = params["temperature"] == 0 or params.get("seed") is not None
        if cacheable:
            with self.lock:
                entry = self.cache.get(key)
            if entry is not None and (entry[0] is None or entry[0] == self._served_version()):
                with self.lock:
                    self.cache.move_to_end(key)
                    self.stats["cache_hits"] += 1
                return entry[1]
        result = self._send(api, prompt, params)
        if result is not None and cacheable:
            with self.lock:
                self.cache[key] = (self.seen.version, result)
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return result

    def _served_version(self) -> str | None:
        """The weights version the server reports now (None if it cannot be asked)."""
        self.seen.version = None
        try:
            self.sdk.models.list()
        except openai.OpenAIError:
            return None
        return self.seen.version

    def _send(self, api: str, prompt, params: dict) -> list[Completion] | None:
        self.seen.attempts, self.seen.version = 0, None
        try:
            if api == "chat":
                return self._chat(prompt, params)
            return self._completions(prompt, params)
        except (openai.OpenAIError, AttributeError, TypeError, ValueError) as err:
            # OpenAIError: unreachable, timed out, an error status after the SDK's retries;
            # the others: an answer that is not the API's shape
            with self.lock:
                self.stats["failures"] += 1
            log.warning("judge request failed (%d tries): %s: %s", self.seen.attempts,
                        type(err).__name__, str(err)[:200])
            return None
        finally:
            with self.lock:
                self.stats["retries"] += max(self.seen.attempts - 1, 0)

    def _chat(self, prompt, params: dict) -> list[Completion]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        extra = {k: v for k, v in params.items() if k != "logprobs"}
        if params.get("logprobs") is not None:
            extra.update(logprobs=True, top_logprobs=params["logprobs"])
        response = self.sdk.chat.completions.create(model=self.model, messages=messages, **extra)
        return [Completion(c.message.content or "", c.finish_reason or "", chat_top_logprobs(c))
                for c in sorted(response.choices, key=lambda c: c.index)]

    def _completions(self, prompt: str, params: dict) -> list[Completion]:
        response = self.sdk.completions.create(model=self.model, prompt=prompt, **params)
        return [Completion(c.text or "", c.finish_reason or "",
                           c.logprobs.top_logprobs if c.logprobs else None)
                for c in sorted(response.choices, key=lambda c: c.index)]

    # httpx event hooks: they run in the calling thread, for every attempt the SDK sends
    def _count_attempt(self, request) -> None:
        self.seen.attempts = getattr(self.seen, "attempts", 0) + 1
        with self.lock:
            self.stats["requests"] += 1

    def _read_version(self, response) -> None:
        self.seen.version = response.headers.get("x-weights-version")


def chat_top_logprobs(choice) -> list[dict[str, float]] | None:
    """A chat choice's logprobs.content[j].top_logprobs as one {token: logprob} dict per
    position; of tokens with the same text the likelier stays."""
    if choice.logprobs is None or choice.logprobs.content is None:
        return None
    positions = []
    for position in choice.logprobs.content:
        top: dict[str, float] = {}
        for candidate in position.top_logprobs:
            top[candidate.token] = max(candidate.logprob, top.get(candidate.token, -float("inf")))
        positions.append(top)
    return positions


_CLIENTS: dict[tuple, JudgeClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(base_url: str, model: str = "judge", timeout_s: float = 30.0,
               max_retries: int = 2, concurrency: int = 8) -> JudgeClient:
    """One shared client per (url, model, settings) in this process, so its cache and
    concurrency cap hold across reward calls."""
    key = (base_url, model, timeout_s, max_retries, concurrency)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = JudgeClient(base_url, model, timeout_s, max_retries, concurrency)
        return _CLIENTS[key]
