"""Client for generative judges behind an OpenAI-compatible HTTP API (scripts/serve.py, vLLM).

    client = JudgeClient("http://127.0.0.1:8000/v1", model="judge", timeout_s=30)
    texts = client.complete(["Rate this answer ...", ...], max_tokens=64, temperature=0)
    # one list of n completions per prompt; None where the request failed for good

Concurrency is capped (`concurrency` requests in flight); each request has a timeout and is
retried with exponential backoff on connection errors, timeouts and 5xx answers; results of
deterministic requests (temperature 0) are cached (LRU, `cache_size` entries). Nothing
raises for a failed request: the caller gets None and decides (a flagged sample).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger("rewardmill.judge")


@dataclass
class Completion:
    text: str
    finish_reason: str = ""
    top_logprobs: list[dict[str, float]] | None = None  # per generated token: token -> logprob


class JudgeClient:
    def __init__(self, base_url: str, model: str = "judge", timeout_s: float = 30.0,
                 max_retries: int = 2, concurrency: int = 8, cache_size: int = 10000,
                 api_key: str | None = None):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.timeout_s, self.max_retries = model, timeout_s, max_retries
        self.api_key = api_key
        self.pool = cf.ThreadPoolExecutor(concurrency, thread_name_prefix="judge")
        self.cache: OrderedDict = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0}

    def complete(self, prompts: list[str], max_tokens: int = 256, temperature: float = 0.0,
                 n: int = 1, stop: list[str] | None = None, logprobs: int | None = None,
                 seed: int | None = None) -> list[list[Completion] | None]:
        params = {"max_tokens": max_tokens, "temperature": temperature, "n": n}
        for key, value in (("stop", stop), ("logprobs", logprobs), ("seed", seed)):
            if value is not None:
                params[key] = value
        futures = [self.pool.submit(self._one, prompt, params) for prompt in prompts]
        return [f.result() for f in futures]

    def _one(self, prompt: str, params: dict) -> list[Completion] | None:
        key = json.dumps([prompt, params], sort_keys=True)
        cacheable = params["temperature"] == 0 or params.get("seed") is not None
        if cacheable:
            with self.lock:
                if key in self.cache:
                    self.cache.move_to_end(key)
                    self.stats["cache_hits"] += 1
                    return self.cache[key]
        result = self._post({"model": self.model, "prompt": prompt, **params})
        if result is not None and cacheable:
            with self.lock:
                self.cache[key] = result
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        return result

    def _post(self, body: dict) -> list[Completion] | None:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        why = ""
        for attempt in range(self.max_retries + 1):
            with self.lock:
                self.stats["requests"] += 1
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers)
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return [_completion(c) for c in json.loads(response.read())["choices"]]
            except urllib.error.HTTPError as err:
                why = f"HTTP {err.code}: {err.read()[:200]!r}"
                if err.code < 500:  # our request is wrong: retrying will not help
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError,
                    json.JSONDecodeError, KeyError) as err:
                why = f"{type(err).__name__}: {err}"
            if attempt < self.max_retries:
                with self.lock:
                    self.stats["retries"] += 1
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
        with self.lock:
            self.stats["failures"] += 1
        log.warning("judge request failed (%d tries): %s", attempt + 1, why)
        return None


def _completion(choice: dict) -> Completion:
    top = None
    if choice.get("logprobs") and choice["logprobs"].get("top_logprobs") is not None:
        top = choice["logprobs"]["top_logprobs"]
    return Completion(choice.get("text", ""), choice.get("finish_reason", ""), top)


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
