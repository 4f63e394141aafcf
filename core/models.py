"""Policies and tokenizers: a hub/local Hugging Face model, or a tiny one built offline.

Every process loads the policy the same way, `from_pretrained(folder)`. The tiny model is
first written as such a folder (config, weights, tokenizer), so a rollout actor on CPU and an
FSDP rank load identical weights without sharing a random seed. Its tokenizer is either
  char  one token per character (the toy tasks' default; loaded through a marker file), or
  bpe   a byte-level BPE tokenizer with a ChatML chat template, laid out like the
        Qwen2.5-Instruct hub folder, so tests take the path a hub model takes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import transformers
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                          PreTrainedTokenizerFast)

from core.tiny_tokenizers import (DEFAULT_BPE_VOCAB, build_char_tokenizer, build_chat_tokenizer,
                                  chat_token_ids)

CHAR_MARKER = "rewardmill_tokenizer.json"  # a char-tokenizer folder: spec, and how to load it
SPEC_FILE = "rewardmill_spec.json"         # a bpe folder's build spec (loading ignores it)
transformers.utils.logging.disable_progress_bar()  # a bar per load and save, in every worker, is noise


def hub_generation_config(tok) -> GenerationConfig:
    """generation_config.json as Qwen2.5-Instruct ships it: both end tokens stop generation,
    and sampling defaults that `generate` applies unless the caller overrides them (load_policy
    drops them; a folder read by other code keeps them, as a hub download would)."""
    ids = chat_token_ids(tok)
    return GenerationConfig(
        bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]],
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer for generation: left padding, and a pad token even if the hub has none."""
    if (Path(path) / CHAR_MARKER).exists():
        # AutoTokenizer would rebuild a Qwen2 tokenizer here, which drops spaces.
        tok = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Save the tokenizer of folder `src` into `dst` (with the marker that says how to load it)."""
    load_tokenizer(src).save_pretrained(dst)
    marker = Path(src) / CHAR_MARKER
    if marker.exists():
        (Path(dst) / marker.name).write_text(marker.read_text())


def build_tiny_policy(folder: str | os.PathLike, arch: dict, seed: int) -> Path:
    """Write a randomly initialised tiny causal LM and its tokenizer as a HF folder.

    `arch` holds `model_type` (e.g. "qwen2" or "llama") and the config fields to override,
    plus optionally `tokenizer`: "char" (default) or "bpe", and for bpe `vocab_size` (the
    exact size of the tokenizer and of the embedding; default 2048).
    Skips the work when the folder already holds a model built from the same spec.
    """
    from transformers import AutoConfig

    folder = Path(folder)
    spec = {"arch": dict(arch), "seed": seed}
    fields = dict(arch)
    kind, vocab_size = fields.pop("tokenizer", "char"), fields.pop("vocab_size", None)
    if kind not in ("char", "bpe"):
        raise ValueError(f"model.tiny.tokenizer={kind!r}: use char or bpe")
    # The char folder's spec doubles as the marker load_tokenizer looks for; a bpe folder must
    # load as a hub folder does, so its spec lives in a file nothing else reads.
    spec_file = folder / (CHAR_MARKER if kind == "char" else SPEC_FILE)
    if spec_file.exists() and json.loads(spec_file.read_text()) == spec:
        return folder
    if kind == "char":
        if vocab_size is not None:
            raise ValueError("model.tiny.vocab_size is for tokenizer: bpe (the char "
                             "tokenizer's vocabulary is fixed)")
        tok = build_char_tokenizer()
        ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   bos_token_id=tok.eos_token_id)
    else:
        tok = build_chat_tokenizer(vocab_size or DEFAULT_BPE_VOCAB,
                                   fields.get("max_position_embeddings"))
        ids = chat_token_ids(tok)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, vocab_size=len(tok), **ids, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    if kind == "bpe":
        model.generation_config = hub_generation_config(tok)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a build that died midway
    model.save_pretrained(tmp)
    # The chat template goes into tokenizer_config.json, where Qwen2.5's hub folder keeps it
    # (transformers would otherwise write chat_template.jinja).
    tok.save_pretrained(tmp, save_jinja_files=False)
    (tmp / spec_file.name).write_text(json.dumps(spec))
    replace_dir(tmp, folder)
    return folder


def load_policy(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.use_cache = True
    model.generation_config = neutral_generation_config(model.generation_config)
    return model


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks of a Hugging Face model, found by the class names the
    model lists as never to be split across devices (`_no_split_modules`, e.g.
    Qwen2DecoderLayer): the units FSDP shards and torch.compile compiles one by one."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} names no transformer block class in "
                         f"_no_split_modules ({sorted(names)}): it cannot be sharded or "
                         "compiled block by block")
    return blocks


def neutral_generation_config(shipped: GenerationConfig) -> GenerationConfig:
    """Keep only the special-token ids of a folder's generation_config.json.

    Hub instruct models ship sampling defaults (Qwen2.5-Instruct: temperature 0.7, top_p 0.8,
    top_k 20, repetition_penalty 1.05) that `generate` applies whenever a caller does not pass
    that option; rollout must sample from exactly the distribution it records and trains on.
    """
    return GenerationConfig(bos_token_id=shipped.bos_token_id, eos_token_id=shipped.eos_token_id,
                            pad_token_id=shipped.pad_token_id)


def load_reward_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                      seed: int = 0):
    """A scalar reward model: a sequence-classification head with one output on the model at
    `path`. From a causal-LM folder (a policy) the head starts fresh and the body is reused.
    The score is read at the last non-pad token, so the pad id must be known."""
    from transformers import AutoModelForSequenceClassification
    # A fresh head is drawn from torch's global RNG: seed a private copy of it, so the head is
    # the same in every process and after whatever ran before (and the caller's RNG is kept).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(path).pad_token_id
    return model


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; readers never see a half-written `dst`."""
    dst = Path(dst)
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
