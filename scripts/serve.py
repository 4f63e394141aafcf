"""Serve a local Hugging Face causal LM behind an OpenAI-compatible HTTP API.

    python scripts/serve.py --model PATH_OR_HUB_ID [--port 8000] [--host 127.0.0.1]

Endpoints:
  GET  /health, GET /v1/models        liveness; the served folder and its weight version
  POST /v1/completions                prompt (a string or a list), max_tokens, temperature,
                                      top_p, n, stop, seed, logprobs (top-k per token)
  POST /v1/chat/completions           messages, the same settings (max_completion_tokens is
                                      an alias of max_tokens), logprobs: true + top_logprobs: k
  POST /v1/reload {"path": folder, "version": n}
                                      swap in the weights of another HF folder of the same
                                      architecture, between batches; answers the new version
                                      (`version` if given, else the old one + 1)

Chat messages are rendered with the tokenizer's chat template when it has one. Otherwise
(e.g. the tiny character model) each message becomes a line "role: content" and the prompt
ends with "assistant: ", so the model continues as the assistant.

Log-probs follow OpenAI's schemas: completions answer `logprobs.{tokens, token_logprobs,
top_logprobs}` (top_logprobs: one {token: logprob} dict per position); chat answers
`logprobs.content[j].{token, logprob, bytes, top_logprobs[k].{token, logprob, bytes}}`.
Positions are the generated tokens, including the end-of-sequence token that stopped a
sequence, so a judge reading the first position always gets its distribution.

Requests arriving together are generated in one batch. It is meant for judges on a CPU box
or a single GPU; on clusters point the judge client at vLLM's own OpenAI server instead.
`--latency-s` adds a fixed delay to every completion (to exercise client timeouts in tests).
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.models import load_policy, load_tokenizer  # noqa: E402

log = logging.getLogger("rewardmill.serve")

SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "n", "stop", "seed")


class Generator:
    """Batches concurrent requests with the same sampling settings into one `generate`."""

    def __init__(self, model_path: str, max_batch: int = 32, latency_s: float = 0.0):
        self.tokenizer = load_tokenizer(model_path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_policy(model_path).to(self.device).eval()
        self.name, self.version = model_path, 0
        self.max_batch, self.latency_s = max_batch, latency_s
        self.weights_lock = threading.Lock()   # held by a batch; a reload waits for it
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, prompts: list[str], params: dict) -> tuple[list[dict], int]:
        """The choices for `prompts` and the version of the weights that wrote them."""
        done, box = threading.Event(), {}
        self.requests.put((prompts, params, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["choices"], box["version"]

    def reload(self, path: str, version: int | None = None) -> dict:
        """Copy the weights of HF folder `path` into the served model between two batches.
        The new weights load on CPU first, so serving goes on meanwhile and the device holds
        one copy only."""
        start = time.perf_counter()
        state = load_policy(path).state_dict()
        served = self.model.state_dict()
        mismatched = sorted(set(state) ^ set(served)) or [
            k for k in state if state[k].shape != served[k].shape]
        if mismatched:   # refuse before copying anything: half-swapped weights would serve garbage
            raise ValueError(f"{path} is not the served architecture (e.g. {mismatched[0]})")
        with self.weights_lock:
            self.model.load_state_dict(state)
            self.name = path
            self.version = self.version + 1 if version is None else int(version)
        log.info("reloaded %s as version %d", path, self.version)
        return {"model": self.name, "version": self.version,
                "reload_s": time.perf_counter() - start}

    def _loop(self) -> None:
        while True:
            batch = [self.requests.get()]
            time.sleep(0.005)  # let requests sent together arrive together
            while not self.requests.empty() and len(batch) < self.max_batch:
                batch.append(self.requests.get())
            groups: dict[str, list] = {}
            for item in batch:
                groups.setdefault(json.dumps(item[1], sort_keys=True), []).append(item)
            for items in groups.values():
                self._run(items)

    def _run(self, items) -> None:
        params = items[0][1]
        prompts = [p for item in items for p in item[0]]
        try:
            with self.weights_lock:
                choices, version = self._generate(prompts, params), self.version
        except Exception as err:  # reported to every waiting request
            for _, _, done, box in items:
                box["error"] = err
                done.set()
            return
        n = params.get("n", 1)
        start = 0
        for item_prompts, _, done, box in items:
            count = len(item_prompts) * n
            box["choices"], box["version"] = choices[start:start + count], version
            start += count
            done.set()

    @torch.no_grad()
    def _generate(self, prompts: list[str], params: dict) -> list[dict]:
        if self.latency_s:
            time.sleep(self.latency_s)
        tok = self.tokenizer
        enc = tok(prompts, padding=True, return_tensors="pt").to(self.device)
        temperature = float(params.get("temperature", 1.0))
        n = int(params.get("n", 1))
        want_logprobs = "logprobs" in params
        if params.get("seed") is not None:
            torch.manual_seed(int(params["seed"]))
        options = dict(max_new_tokens=int(params.get("max_tokens", 16)), num_return_sequences=n,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       return_dict_in_generate=True, output_logits=want_logprobs,
                       do_sample=temperature > 0)
        if temperature > 0:
            options.update(temperature=temperature, top_p=float(params.get("top_p", 1.0)))
        out = self.model.generate(**enc, **options)
        P = enc["input_ids"].shape[1]
        stops = params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        choices = []
        for row in range(out.sequences.shape[0]):
            ids = out.sequences[row, P:].tolist()
            finish, scored = "length", ids
            if tok.eos_token_id in ids:
                end = ids.index(tok.eos_token_id)
                ids, scored, finish = ids[:end], ids[:end + 1], "stop"
            text = tok.decode(ids, skip_special_tokens=True)
            for stop in stops:
                if stop in text:
                    text, finish = text[:text.index(stop)], "stop"
            choice = {"index": len(choices), "text": text, "finish_reason": finish}
            if want_logprobs:
                choice["positions"] = self._positions(out.logits, row, scored,
                                                      int(params["logprobs"]))
            choices.append(choice)
        return choices

    def _positions(self, logits, row: int, ids: list[int], k: int) -> list[dict]:
        """Per generated token: its text, its log-prob, and the k likeliest (text, log-prob)."""
        positions = []
        for t, token_id in enumerate(ids):
            logp = torch.log_softmax(logits[t][row].float(), -1)
            values, indices = logp.topk(min(k, logp.shape[-1]))
            positions.append({"token": self.tokenizer.decode([token_id]),
                              "logprob": float(logp[token_id]),
                              "top": [(self.tokenizer.decode([int(i)]), float(v))
                                      for v, i in zip(values, indices)]})
        return positions

    def chat_prompt(self, messages: list[dict]) -> str:
        messages = [{**m, "content": message_text(m.get("content"))} for m in messages]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def message_text(content) -> str:
    """A message's text: OpenAI allows a string or a list of parts ({type: text, text})."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def text_choice(c: dict) -> dict:
    out = {k: c[k] for k in ("index", "text", "finish_reason")}
    if "positions" in c:
        ps = c["positions"]
        out["logprobs"] = {"tokens": [p["token"] for p in ps],
                           "token_logprobs": [p["logprob"] for p in ps],
                           "top_logprobs": [top_dict(p["top"]) for p in ps]}
    return out


def top_dict(top: list[tuple[str, float]]) -> dict[str, float]:
    """OpenAI's completions form, a dict per position: of tokens with the same text (e.g.
    special tokens decoding to ""), the likelier one stays."""
    merged: dict[str, float] = {}
    for token, logprob in top:
        merged.setdefault(token, logprob)
    return merged


def chat_choice(c: dict) -> dict:
    out = {"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
           "finish_reason": c["finish_reason"], "logprobs": None}
    if "positions" in c:
        out["logprobs"] = {"content": [
            {**token_logprob(p["token"], p["logprob"]),
             "top_logprobs": [token_logprob(t, v) for t, v in p["top"]]}
            for p in c["positions"]]}
    return out


def token_logprob(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def make_handler(gen: Generator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request is noise
            log.debug(fmt, *args)

        def _send(self, code: int, body: dict, version: int | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                # the weights can change (POST /v1/reload): clients key cached answers by this
                self.send_header("X-Weights-Version",
                                 str(gen.version if version is None else version))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("client went away before the answer (it timed out)")

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"status": "ok", "model": gen.name, "version": gen.version})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [
                    {"id": gen.name, "object": "model", "version": gen.version}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, json.JSONDecodeError) as err:
                return self._send(400, {"error": {"message": f"bad JSON: {err}"}})
            if self.path == "/v1/reload":
                return self._reload(body)
            chat = self.path == "/v1/chat/completions"
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                if chat:
                    prompts = [gen.chat_prompt(body["messages"])]
                else:
                    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            except (KeyError, TypeError, AttributeError) as err:
                return self._send(400, {"error": {"message": f"missing or bad field {err}"}})
            if chat and body.get("max_completion_tokens") is not None:
                body.setdefault("max_tokens", body["max_completion_tokens"])
            params = {k: body[k] for k in SAMPLING_FIELDS if body.get(k) is not None}
            if chat and body.get("logprobs"):
                params["logprobs"] = int(body.get("top_logprobs") or 0)
            elif not chat and body.get("logprobs") is not None:
                params["logprobs"] = int(body["logprobs"])
            try:
                choices, version = gen.submit(prompts, params)
            except Exception as err:
                return self._send(500, {"error": {"message": f"{type(err).__name__}: {err}"}})
            self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:12]}",
                             "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": gen.name,
                             "choices": [(chat_choice if chat else text_choice)(c)
                                         for c in choices]}, version)

        def _reload(self, body: dict) -> None:
            if not isinstance(body.get("path"), str):
                return self._send(400, {"error": {"message": "reload needs {\"path\": folder}"}})
            try:
                self._send(200, gen.reload(body["path"], body.get("version")))
            except Exception as err:   # a missing folder, another architecture
                self._send(500, {"error": {"message": f"{type(err).__name__}: {err}"}})
    return Handler


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32,
          latency_s: float = 0.0) -> ThreadingHTTPServer:
    """Start the server in a background thread and return it (`.shutdown()` stops it)."""
    server = ThreadingHTTPServer((host, port), make_handler(Generator(model, max_batch, latency_s)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="HF hub id or local folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=32, help="requests per generate call")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default, all cores)")
    parser.add_argument("--latency-s", type=float, default=0.0,
                        help="extra seconds per completion (for timeout tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    server = serve(args.model, args.host, args.port, args.max_batch, args.latency_s)
    print(json.dumps({"serving": args.model, "url": f"http://{args.host}:{server.server_port}/v1"}),
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
