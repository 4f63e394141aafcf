"""The generative judge a run serves itself, for judge sources that point at `${judge.url}`.

With `judge.url: null` and a reward source whose kwargs mention `${judge.url}`, the main job
starts `scripts/serve.py` (an OpenAI-compatible HTTP server) around `judge.model` before the
reward workers start, fills in `judge.url`, and stops the server when the run ends. With a URL
set (vLLM's server on a cluster, an API) nothing is started and the sources call that URL.
"""
from __future__ import annotations

import json
import logging
import selectors
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf, read_write

log = logging.getLogger("rewardmill")

SERVE = Path(__file__).resolve().parents[1] / "scripts" / "serve.py"
JUDGE_URL = "${judge.url}"


def sources_using_judge(cfg) -> list[str]:
    """Names of the reward sources with a kwarg that interpolates `${judge.url}`."""
    sources = OmegaConf.to_container(cfg.reward.sources, resolve=False)
    return [s["name"] for s in sources
            if any(v == JUDGE_URL for v in (s.get("kwargs") or {}).values())]


class JudgeServer:
    """`scripts/serve.py` in a child process; `url` is its OpenAI base URL."""

    def __init__(self, model: str, host: str, port: int, max_batch: int, threads: int,
                 start_timeout_s: float):
        command = [sys.executable, str(SERVE), "--model", model, "--host", host,
                   "--port", str(port), "--max-batch", str(max_batch), "--threads", str(threads)]
        self.model = model
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            self.url = self._read_url(start_timeout_s)
        except Exception:
            self.stop()
            raise

    def _read_url(self, timeout_s: float) -> str:
        # serve.py prints one JSON line with its URL once the model is loaded
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            raise TimeoutError(f"judge server did not start within {timeout_s:.0f}s "
                               f"(judge.start_timeout_s)")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"judge server exited with code {self.process.wait()} before "
                               f"serving {self.model} (see its log above; judge.model)")
        return json.loads(line)["url"]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_judge(cfg, policy: str, base: str) -> JudgeServer | None:
    """Serve `judge.model` when a source needs `${judge.url}` and none is given; sets judge.url."""
    users = sources_using_judge(cfg)
    if not users or cfg.judge.url:
        return None
    j = cfg.judge
    model = {"policy": policy, "base": base}.get(j.model, j.model)
    server = JudgeServer(model, j.host, j.port, j.max_batch, j.threads, j.start_timeout_s)
    with read_write(cfg):
        cfg.judge.url = server.url
    log.info("judge: serving %s at %s for %s", model, server.url, ", ".join(users))
    return server
