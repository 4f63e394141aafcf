"""The tiny chat model: a folder in a hub chat model's format (Qwen2 BPE tokenizer, ChatML
template, generation_config), built offline, loaded by the plain Hugging Face Auto classes."""
import json
import time
from pathlib import Path

import pytest
import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LogitsProcessor,
                          LogitsProcessorList)

from core.models import CHAR_MARKER, build_tiny_policy, copy_tokenizer, load_policy, load_tokenizer
from core.tiny_tokenizers import CHATML_TEMPLATE
from tests.conftest import compose

ARCH = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
            tie_word_embeddings=True, tokenizer="bpe", vocab_size=2048)
SYSTEM_AND_USER = [{"role": "system", "content": "You are terse."},
                   {"role": "user", "content": "What is 12 + 30?"}]
TEXTS = [
    "What is 12 + 30?  Two spaces,\ttab, trailing space ",
    "def add(a, b):\n    return a + b\n\n\nprint(add(2, 3))  # 5\n",
    "  leading spaces\r\nwindows line\n\n",
    "x = [i ** 2 for i in range(10) if i % 3 != 0]; y = {'k': -1.5e-3}",
    "Größe 😀 naïve",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    start = time.perf_counter()
    build_tiny_policy(folder, ARCH, seed=0)
    return folder, time.perf_counter() - start


@pytest.fixture(scope="module")
def folder(built):
    return built[0]


def test_autotokenizer_loads_it_as_a_hub_folder(folder):
    assert not (folder / CHAR_MARKER).exists()   # nothing for load_tokenizer to special-case
    tok = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder)
    assert type(tok).__name__ == "Qwen2Tokenizer" and tok.is_fast
    assert len(tok) == config.vocab_size == 2048
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    # Special tokens come last, in Qwen's order, and the model config agrees with the tokenizer.
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        2045, 2046, 2047]
    assert (config.eos_token_id, config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    # The template sits in tokenizer_config.json, as in Qwen2.5-Instruct's folder.
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == \
        CHATML_TEMPLATE
    assert not (folder / "chat_template.jinja").exists()


def test_chat_template_renders_chatml(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template(SYSTEM_AND_USER, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are terse.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n")
    # The system message is optional, and so is the generation prompt.
    user_only = tok.apply_chat_template(SYSTEM_AND_USER[1:], tokenize=False)
    assert user_only == "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
    # Markers are single special tokens, not spelled out in pieces.
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.eos_token_id) == 2
    assert tok.decode(ids, skip_special_tokens=True) == (
        "system\nYou are terse.\nuser\nWhat is 12 + 30?\nassistant\n")


def test_text_round_trips_through_bytes(folder):
    for tok in (AutoTokenizer.from_pretrained(folder), load_tokenizer(folder)):
        for text in TEXTS:
            assert tok.decode(tok(text)["input_ids"]) == text, repr(text)
    tok = load_tokenizer(folder)
    # Digits are split one by one, as Qwen's tokenizer does, and common words are whole.
    assert tok.tokenize("1234") == ["1", "2", "3", "4"]
    assert len(tok.tokenize(" return the answer")) == 3


def test_load_tokenizer_pads_left(folder):
    tok = load_tokenizer(folder)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.padding_side == "left" and tok.pad_token == "<|endoftext|>"
    batch = tok(["1 + 2 =", "what is 10 + 20 + 30 ="], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id and batch["attention_mask"][0][0] == 0


class ForceAt(LogitsProcessor):
    """Make `token` the only choice at generation step `step` (random weights rarely pick it)."""

    def __init__(self, prompt_len: int, step: int, token: int):
        self.at, self.token = prompt_len + step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token] = 0.0
        return scores


def test_generate_stops_at_im_end(folder):
    tok = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompts = [tok.apply_chat_template(SYSTEM_AND_USER, tokenize=False, add_generation_prompt=True),
               tok.apply_chat_template(SYSTEM_AND_USER[1:], tokenize=False,
                                       add_generation_prompt=True)]
    enc = tok(prompts, padding=True, add_special_tokens=False, return_tensors="pt")
    P = enc["input_ids"].shape[1]
    # No eos_token_id passed: the folder's generation_config must already stop at <|im_end|>.
    out = model.generate(**enc, do_sample=False, max_new_tokens=20,
                         logits_processor=LogitsProcessorList([ForceAt(P, 3, tok.eos_token_id)]))
    assert out.shape[1] == P + 4
    assert out[:, -1].tolist() == [tok.eos_token_id] * 2
    assert tok.decode(out[0, P:], skip_special_tokens=True) != ""


def test_load_policy_drops_hub_sampling_defaults(folder):
    shipped = AutoModelForCausalLM.from_pretrained(folder).generation_config
    assert (shipped.top_k, shipped.repetition_penalty) == (20, 1.05)   # as a hub folder ships
    gen = load_policy(folder).generation_config
    assert gen.repetition_penalty in (None, 1.0) and not gen.do_sample
    assert gen.temperature in (None, 1.0) and gen.top_p in (None, 1.0)
    assert gen.eos_token_id == shipped.eos_token_id and gen.pad_token_id == shipped.pad_token_id


def test_copy_tokenizer_keeps_the_chat_template(folder, tmp_path):
    copy_tokenizer(folder, tmp_path)
    copied = AutoTokenizer.from_pretrained(tmp_path)
    original = AutoTokenizer.from_pretrained(folder)
    assert copied.chat_template == CHATML_TEMPLATE
    assert not (tmp_path / CHAR_MARKER).exists()
    render = dict(tokenize=False, add_generation_prompt=True)
    assert copied.apply_chat_template(SYSTEM_AND_USER, **render) == \
        original.apply_chat_template(SYSTEM_AND_USER, **render)
    assert copied(TEXTS)["input_ids"] == original(TEXTS)["input_ids"]
    assert (copied.eos_token, copied.pad_token) == (original.eos_token, original.pad_token)


def _contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_spec_is_skipped_and_reproducible(built, tmp_path):
    folder, seconds = built
    assert seconds < 20, f"building the tiny chat model took {seconds:.1f}s"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    start = time.perf_counter()
    assert build_tiny_policy(folder, ARCH, seed=0) == folder
    assert time.perf_counter() - start < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    # Built afresh elsewhere, the same spec gives the same bytes; another seed other weights.
    assert _contents(build_tiny_policy(tmp_path / "again", ARCH, seed=0)) == _contents(folder)
    other = _contents(build_tiny_policy(tmp_path / "seed1", ARCH, seed=1))
    same = _contents(folder)
    assert other["tokenizer.json"] == same["tokenizer.json"]
    assert other["model.safetensors"] != same["model.safetensors"]


def test_bad_specs_are_refused(tmp_path):
    for tokenizer, vocab_size, words in [("bpe", 200, "needs more than"),
                                         ("bpe", 100_000, "supports at most"),
                                         ("char", 2048, "is for tokenizer: bpe"),
                                         ("sentencepiece", None, "use char or bpe")]:
        with pytest.raises(ValueError, match=words):
            build_tiny_policy(tmp_path / "bad", {**ARCH, "tokenizer": tokenizer,
                                                 "vocab_size": vocab_size}, seed=0)


def test_config_group_builds_it_through_base_model(tmp_path):
    from orchestrator.main import base_model

    cfg = compose(tmp_path, "model=tiny_chat", "model.tiny.vocab_size=1024")
    path = base_model(cfg)
    tok = load_tokenizer(path)
    assert len(tok) == 1024 and tok.chat_template == CHATML_TEMPLATE
    assert AutoConfig.from_pretrained(path).hidden_size == cfg.model.tiny.hidden_size


def test_script_writes_a_folder_for_model_path(tmp_path, capsys):
    from scripts.make_tiny_chat_model import main

    main([str(tmp_path / "hub-like"), "--vocab-size", "1024", "--seed", "1"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["path"] == str((tmp_path / "hub-like").resolve()) and line["vocab_size"] == 1024
    tok = AutoTokenizer.from_pretrained(line["path"])
    assert len(tok) == 1024 and tok.chat_template == CHATML_TEMPLATE
