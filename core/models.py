"""Policies and tokenizers: a hub/local Hugging Face model, or a tiny one built offline.

Every process loads the policy the same way, `from_pretrained(folder)`. The tiny model is
first written as such a folder (config, weights, character tokenizer), so a rollout actor on
CPU and an FSDP rank load identical weights without sharing a random seed.
"""
from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
transformers.utils.logging.disable_progress_bar()  # a bar per load and save, in every worker, is noise


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline), plus pad/eos/unk."""
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK] + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS,
                                  unk_token=UNK)
    tok.padding_side = "left"
    return tok


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer for generation: left padding, and a pad token even if the hub has none."""
    if (Path(path) / "rewardmill_tokenizer.json").exists():
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
    marker = Path(src) / "rewardmill_tokenizer.json"
    if marker.exists():
        (Path(dst) / marker.name).write_text(marker.read_text())


def build_tiny_policy(folder: str | os.PathLike, arch: dict, seed: int) -> Path:
    """Write a randomly initialised tiny causal LM and its tokenizer as a HF folder.

    `arch` holds `model_type` (e.g. "qwen2" or "llama") and the config fields to override.
    Skips the work when the folder already holds a model built from the same spec.
    """
    from transformers import AutoConfig

    folder = Path(folder)
    spec = {"arch": dict(arch), "seed": seed}
    marker = folder / "rewardmill_tokenizer.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    tok = build_char_tokenizer()
    fields = dict(arch)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "rewardmill_tokenizer.json").write_text(json.dumps(spec))
    replace_dir(tmp, folder)
    return folder


def load_policy(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.use_cache = True
    return model


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
