"""Serve a local Hugging Face causal LM behind an OpenAI-compatible HTTP API.

    python scripts/serve.py --model PATH_OR_HUB_ID [--port 8000] [--host 127.0.0.1]

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
(prompt or messages, max_tokens, temperature, top_p, n, stop, seed, logprobs / top_logprobs).
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


class Generator:
    """Batches concurrent requests with the same sampling settings into one `generate`."""

    def __init__(self, model_path: str, max_batch: int = 32, latency_s: float = 0.0):
        self.tokenizer = load_tokenizer(model_path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_policy(model_path).to(self.device).eval()
        self.name = model_path
        self.max_batch, self.latency_s = max_batch, latency_s
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, prompts: list[str], params: dict) -> list[dict]:
        done, box = threading.Event(), {}
        self.requests.put((prompts, params, done, box))
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["choices"]

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
            choices = self._generate(prompts, params)
        except Exception as err:  # reported to every waiting request
            for _, _, done, box in items:
                box["error"] = err
                done.set()
            return
        n = params.get("n", 1)
        start = 0
        for item_prompts, _, done, box in items:
            count = len(item_prompts) * n
            box["choices"] = choices[start:start + count]
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
        top_logprobs = int(params.get("logprobs") or 0)
        if params.get("seed") is not None:
            torch.manual_seed(int(params["seed"]))
        options = dict(max_new_tokens=int(params.get("max_tokens", 16)), num_return_sequences=n,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       return_dict_in_generate=True, output_logits=bool(top_logprobs),
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
            finish = "length"
            if tok.eos_token_id in ids:
                ids, finish = ids[:ids.index(tok.eos_token_id)], "stop"
            text = tok.decode(ids, skip_special_tokens=True)
            for stop in stops:
                if stop in text:
                    text, finish = text[:text.index(stop)], "stop"
            choice = {"index": len(choices), "text": text, "finish_reason": finish}
            if top_logprobs:
                choice["logprobs"] = self._logprobs(out.logits, row, ids, top_logprobs)
            choices.append(choice)
        return choices

    def _logprobs(self, logits, row: int, ids: list[int], k: int) -> dict:
        tok = self.tokenizer
        tokens, token_logprobs, top = [], [], []
        for t, token_id in enumerate(ids):
            logp = torch.log_softmax(logits[t][row].float(), -1)
            values, indices = logp.topk(min(k, logp.shape[-1]))
            tokens.append(tok.decode([token_id]))
            token_logprobs.append(float(logp[token_id]))
            top.append({tok.decode([int(i)]): float(v) for v, i in zip(values, indices)})
        if not ids:  # nothing generated: still report the first position's distribution
            logp = torch.log_softmax(logits[0][row].float(), -1)
            values, indices = logp.topk(min(k, logp.shape[-1]))
            top.append({tok.decode([int(i)]): float(v) for v, i in zip(values, indices)})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top}

    def chat_prompt(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def make_handler(gen: Generator):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: one line per request is noise
            log.debug(fmt, *args)

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                log.debug("client went away before the answer (it timed out)")

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": gen.name, "object": "model"}]})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, json.JSONDecodeError) as err:
                return self._send(400, {"error": {"message": f"bad JSON: {err}"}})
            chat = self.path == "/v1/chat/completions"
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                if chat:
                    prompts = [gen.chat_prompt(body["messages"])]
                else:
                    prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            except (KeyError, TypeError) as err:
                return self._send(400, {"error": {"message": f"missing field {err}"}})
            params = {k: body[k] for k in ("max_tokens", "temperature", "top_p", "n", "stop", "seed")
                      if k in body and body[k] is not None}
            if chat and body.get("logprobs"):
                params["logprobs"] = body.get("top_logprobs") or 1
            elif not chat and body.get("logprobs"):
                params["logprobs"] = body["logprobs"]
            try:
                choices = gen.submit(prompts, params)
            except Exception as err:
                return self._send(500, {"error": {"message": f"{type(err).__name__}: {err}"}})
            if chat:
                choices = [_chat_choice(c) for c in choices]
            self._send(200, {"id": f"cmpl-{uuid.uuid4().hex[:12]}", "object":
                             "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": gen.name, "choices": choices})
    return Handler


def _chat_choice(c: dict) -> dict:
    out = {"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
           "finish_reason": c["finish_reason"]}
    if "logprobs" in c:
        lp = c["logprobs"]
        out["logprobs"] = {"content": [
            {"token": t, "logprob": l, "top_logprobs": [{"token": k, "logprob": v}
                                                        for k, v in top.items()]}
            for t, l, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"])]}
    return out


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
