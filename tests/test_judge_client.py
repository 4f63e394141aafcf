"""The judge client (openai SDK + our cache, cap, counters) against the real scripts/serve.py
around a tiny model, via chat and via completions; and against stub servers that stall or
fail, for its retries and timeouts."""
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from core.records import Sample
from rewards.judge_client import JudgeClient
from rewards.judges import rlbff, yes_no_margin
from tests.conftest import REPO

TINY_JUDGE = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
                  tie_word_embeddings=True)


def serve_tiny(model_dir, *extra):
    """scripts/serve.py in a child process; its base URL once the model is loaded."""
    proc = subprocess.Popen([sys.executable, "scripts/serve.py", "--model", str(model_dir),
                             "--port", "0", "--threads", "1", *extra], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    return proc, json.loads(proc.stdout.readline())["url"]


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    from core.models import build_tiny_policy
    model = build_tiny_policy(tmp_path_factory.mktemp("judge") / "tiny", TINY_JUDGE, seed=0)
    proc, url = serve_tiny(model)
    yield url
    proc.terminate()
    proc.wait()


def test_chat_renders_the_documented_fallback_and_completions_continue_raw_text(judge_url):
    client = JudgeClient(judge_url, timeout_s=30)
    # the character tokenizer has no chat template: "role: content" lines, then "assistant: "
    [chat], [as_messages], [raw] = (
        client.chat(["347+285="], max_tokens=8),
        client.chat([[{"role": "user", "content": "347+285="}]], max_tokens=8),
        client.complete(["user: 347+285=\nassistant: "], max_tokens=8))
    assert chat[0].text == as_messages[0].text == raw[0].text   # greedy: the same continuation
    assert chat[0].finish_reason in ("stop", "length")
    [sampled] = client.chat(["347+285="], max_tokens=4, temperature=1.0, n=3, seed=1)
    assert len(sampled) == 3
    assert client.stats["failures"] == 0


def test_chat_logprobs_follow_openais_schema_and_feed_rlbff(judge_url):
    # the raw answer, read by the SDK's own types: choices[i].logprobs.content[j].top_logprobs[k]
    sdk = openai.OpenAI(base_url=judge_url, api_key="unused")
    answer = sdk.chat.completions.create(model="judge", messages=[{"role": "user", "content": "x"}],
                                         max_tokens=2, logprobs=True, top_logprobs=5)
    positions = answer.choices[0].logprobs.content
    assert 1 <= len(positions) <= 2 and len(positions[0].top_logprobs) == 5
    best = positions[0].top_logprobs[0]
    assert isinstance(best.token, str) and best.logprob <= 0
    assert best.bytes == list(best.token.encode())

    # the same first-token distribution via chat and via completions of the rendered prompt
    client = JudgeClient(judge_url)
    [[chat]] = client.chat(["Is 2+2=4? Answer Y or N."], max_tokens=1, logprobs=100)
    [[raw]] = client.complete(["user: Is 2+2=4? Answer Y or N.\nassistant: "], max_tokens=1,
                              logprobs=100)
    margin = yes_no_margin(chat.top_logprobs[0], "Y", "N")
    assert margin == pytest.approx(yes_no_margin(raw.top_logprobs[0], "Y", "N"), abs=1e-4)

    sample = Sample("p", "p", [], [], [], 0, prompt_text="2+2=", response_text="4")
    rewards = [rlbff(sample, principle="the sum is right", url=judge_url, api=api, top_k=100,
                     yes_token="Y", no_token="N") for api in ("chat", "completions")]
    assert all(isinstance(r, float) for r in rewards) and rewards[0] != 0.0


def test_deterministic_requests_are_cached_and_sampled_ones_are_not(judge_url):
    client = JudgeClient(judge_url)
    first = client.chat(["cache me"], max_tokens=4)
    assert client.chat(["cache me"], max_tokens=4)[0] is first[0]      # the cached answer
    assert client.stats["cache_hits"] == 1
    client.complete(["cache me"], max_tokens=4)                         # another api: its own entry
    client.chat(["cache me"], max_tokens=4, temperature=1.0)
    client.chat(["cache me"], max_tokens=4, temperature=1.0)
    assert client.stats["cache_hits"] == 1


# --- retries and timeouts, against stub servers ---------------------------------------------

CHAT_ANSWER = {"id": "x", "object": "chat.completion", "created": 0, "model": "stub",
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "Score: 7"}}]}


@pytest.fixture
def stub():
    """A server that answers each POST with the next of `replies`: a status code, or
    "stall" (no answer for 5 s); it counts the requests it got."""
    state = {"replies": [], "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["hits"] += 1
            reply = state["replies"].pop(0) if state["replies"] else 200
            if reply == "stall":
                time.sleep(5)
                return
            answer = CHAT_ANSWER if reply == 200 else {"error": {"message": "no"}}
            data = json.dumps(answer).encode()
            self.send_response(reply)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    server.shutdown()
    server.server_close()


def test_a_stalling_judge_gives_none_after_the_configured_retries(stub):
    stub["replies"] = ["stall"] * 3
    client = JudgeClient(stub["url"], timeout_s=0.3, max_retries=2)
    start = time.monotonic()
    assert client.chat(["judge this"], max_tokens=4) == [None]   # the caller flags the sample
    assert time.monotonic() - start < 5                          # the timeouts cut the stalls
    assert stub["hits"] == 3
    assert client.stats == {"requests": 3, "cache_hits": 0, "retries": 2, "failures": 1}


def test_a_server_error_is_retried_and_a_bad_request_is_not(stub):
    stub["replies"] = [503, 200]
    client = JudgeClient(stub["url"], timeout_s=5, max_retries=1)
    [[answer]] = client.chat(["judge this"], max_tokens=4)
    assert answer.text == "Score: 7" and client.stats["retries"] == 1
    stub["replies"] = [400]
    assert client.chat(["something else"], max_tokens=4) == [None]
    assert client.stats["retries"] == 1 and client.stats["failures"] == 1   # 400: one try only


def test_an_unknown_api_is_refused():
    with pytest.raises(ValueError, match="chat"):
        JudgeClient("http://127.0.0.1:9/v1").generate("responses", ["x"])
