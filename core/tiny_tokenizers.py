"""Tokenizers built offline, for the tiny models of tests and the toy tasks (core/models.py
writes them into model folders): a character tokenizer, and a byte-level BPE tokenizer in
Qwen2.5-Instruct's layout (ChatML special tokens and chat template) trained on a small built-in
corpus, so tests take the path a hub chat model takes.
"""
from __future__ import annotations

import json
import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


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


# --- The chat tokenizer: byte-level BPE in Qwen2.5's layout, trained offline on tiny_corpus() ---

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_SPECIALS = (ENDOFTEXT, IM_START, IM_END)  # Qwen's order: last in the vocabulary
DEFAULT_BPE_VOCAB = 2048
# ChatML, as Qwen2.5 renders it, but with no default system message: one is written only when
# the conversation has one.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

TINY_PROSE = """\
The assistant reads the question carefully, thinks step by step, and then gives a short answer.
A good answer is correct, clear and honest; when the answer is not known, say so.
Numbers are added one column at a time, starting from the right, and the carry moves left.
Multiply the first number by the second, then subtract the smaller value from the larger one.
Please write a function that returns the sum of a list of integers.
She opened the window because the room was warm, and the wind carried the sound of rain.
We tested the program with small inputs first, then with large ones, and every test passed.
Thank you for your help! Could you explain why this works? Sure, here is the reason.
The model learns from rewards: good responses are reinforced and bad ones become less likely.
If the result is wrong, check each step again and fix the first mistake you find.
"""
TINY_WORDS = """
a about above across act action add after again against age ago agree air all allow almost alone
along already also although always am among amount an and animal another answer any anyone
anything appear apply are area argument arm around arrive art as ask at average away back bad
ball bank base be bear beautiful became because become bed been before begin behind being
believe below best better between big bird bit black blue board boat body book both bottom box
boy break bring brother build business but buy by call came can car care carry case cat cause
center certain chair chance change character check child choose city class clean clear close
cold color come common company compare complete condition consider contain continue control
correct cost could count country course cover create cross cup current cut dark data day deal
decide deep describe design detail develop did difference different difficult direction discover
distance do doctor does dog done door down draw dream drive drop dry during each early earth easy
eat edge effect eight either else end energy enough enter entire equal error even evening event
ever every exact example exist expect experience explain eye face fact fall family far fast
father fear feel few field figure fill final find fine finish fire first fish five floor follow
food foot for force form forward found four free friend from front full game garden gave general
get girl give glass go gold good got great green ground group grow guess had half hand happen
happy hard has have he head hear heart heat heavy held help her here high him his history hold
home hope horse hot hour house how however human hundred idea if important in include increase
inside instead interest into is island it its job join just keep kind king know land language
large last late later laugh lead learn least leave left less let letter level life light like
line list listen little live long look lost lot love low machine made main make man many map mark
market matter may me mean measure meet member memory method middle might mind minute miss moment
money month more most mother mountain move much music must my name nation natural near need never
new next night nine no noise north note nothing notice now number object ocean of off offer
office often old on once one only open order other our out over own page paper part pass past
path pattern pay people perhaps period person picture piece place plan plant play point poor
position possible power practice prepare present press pretty print probably problem process
produce product program provide pull push put question quick quiet quite race rain raise rather
reach read ready real reason receive record red region remember repeat reply report rest result
return rich ride right river road rock room round rule run safe said same save say school science
score sea season second section see seem self sell send sense sentence serve set seven several
shape share she short should show side sign simple since sing single sister sit six size skill
sleep slow small smile snow so soft some son song soon sound south space speak special speed
spell spend stand star start state station stay step still stone stop story street strong student
study such sudden summer sun supply support sure surface system table take talk teach team tell
ten term test than thank that the their them then there these they thing think third this those
though thought thousand three through time to today together told too took top total toward town
trade train travel tree true try turn twenty two type under unit until up upon us use usual
valley value very view visit voice wait walk wall want warm was watch water wave way we wear
weather week weight well went were west what wheel when where whether which while white who whole
why wide will win wind window winter wish with within without woman wonder wood word work world
would write wrong yard year yes yet you young your zero
"""
TINY_CODE = '''\
import math
from collections import Counter, defaultdict
from typing import Optional


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    den = sum((x - mean_x) ** 2 for x in xs)
    slope = num / den if den != 0 else 0.0
    return slope, mean_y - slope * mean_x


class Tally:
    def __init__(self, start: int = 0):
        self.value = start

    @property
    def is_zero(self) -> bool:
        return self.value == 0


async def clean(items, limit=None):
    results = []
    for i, item in enumerate(items):
        if item is None or not isinstance(item, str):
            continue
        elif len(item) > 10 and i % 2 == 1:
            break
        else:
            results.append(item.strip().lower())
    while results and results[-1] == "":
        results.pop()
    try:
        total = int(results[0]) // 3
    except (ValueError, IndexError) as error:
        raise RuntimeError(f"bad input: {error!r}") from error
    finally:
        pass
    with open("data.txt", "w", encoding="utf-8") as handle:
        handle.write("\\n".join(results))
    squares = {k: v ** 2 for k, v in dict(a=1, b=2).items() if v >= 1}
    assert all(v > 0 for v in squares.values()), "positive"
    pair = lambda x, y: [x, y]
    global counter
    flag = True and False or None
    del squares["a"]
    yield from range(len(items))
    await asyncio.sleep(0.1)
    return print(sorted(set(results)), max(1, min(2, abs(-3))), round(3.14159, 2))


if __name__ == "__main__":
    data = [float(v) for v in input().split()]
    print(f"{fit_line(data, data)}")
'''


def tiny_corpus() -> list[str]:
    """What the chat tokenizer is trained on: English, Python, arithmetic and chat turns.

    Words also appear capitalised, upper-cased and with common endings, so the corpus holds
    enough distinct pieces for vocabularies up to about 6,500 tokens.
    """
    words = TINY_WORDS.split()
    endings = [w + end for w in words if len(w) > 3 for end in ("s", "ed", "ing", "er")]
    sums = [f"What is {a} + {b}? {a} + {b} = {a + b}. The answer is {a + b}.\n"
            f"{a} * {b} = {a * b}, {a} - {b} = {a - b}, {a} / {b} = {a / b:.2f}"
            for a in range(0, 100, 7) for b in range(3, 60, 11)]
    # Chat turns without their markers: those are special tokens, never learned from text.
    chats = [f"system\nYou are a helpful assistant.\nuser\n{q}\nassistant\n{a}\n" for q, a in (
        ("What is 2 + 3?", "2 + 3 = 5"), ("Hello!", "Hi! How can I help you today?"),
        ("Write a Python function that adds two numbers.",
         "```python\ndef add(a, b):\n    return a + b\n```"))]
    return [TINY_PROSE, TINY_CODE, " ".join(words), " ".join(map(str.capitalize, words)),
            " ".join(endings), " ".join(map(str.upper, words)), *sums, *chats]


def build_chat_tokenizer(vocab_size: int = DEFAULT_BPE_VOCAB,
                         model_max_length: int | None = None):
    """A Qwen2-style tokenizer of exactly `vocab_size` tokens: byte-level BPE (any text
    encodes, decode gives it back), ChatML special tokens last, eos <|im_end|> as in
    Qwen2.5-Instruct (generation stops at the end of the assistant's turn), pad
    <|endoftext|>, and the ChatML chat template."""
    from transformers import Qwen2Tokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    merges_wanted = vocab_size - len(alphabet) - len(CHAT_SPECIALS)
    if merges_wanted < 1:
        raise ValueError(f"model.tiny.vocab_size={vocab_size}: a byte-level BPE vocabulary "
                         f"needs more than {len(alphabet) + len(CHAT_SPECIALS)} tokens")
    # Train with the very normalizer and pre-tokenizer Qwen2Tokenizer rebuilds on load (NFC,
    # digits one by one, then bytes), so training and loading split text alike.
    qwen = Qwen2Tokenizer().backend_tokenizer
    core = Tokenizer(models.BPE())
    core.normalizer, core.pre_tokenizer = qwen.normalizer, qwen.pre_tokenizer
    core.train_from_iterator(tiny_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size - len(CHAT_SPECIALS), initial_alphabet=alphabet,
        show_progress=False))
    learned = json.loads(core.to_str())["model"]
    vocab = dict(learned["vocab"])
    if len(vocab) + len(CHAT_SPECIALS) != vocab_size:
        raise ValueError(f"model.tiny.vocab_size={vocab_size}: the offline corpus supports at "
                         f"most {len(vocab) + len(CHAT_SPECIALS)} tokens")
    for token in CHAT_SPECIALS:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[tuple(m) for m in learned["merges"]], unk_token=None,
        bos_token=None, eos_token=IM_END, pad_token=ENDOFTEXT, extra_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE, clean_up_tokenization_spaces=False,
        **({"model_max_length": model_max_length} if model_max_length else {}))
    tok.padding_side = "left"
    return tok


def chat_token_ids(tok) -> dict:
    """The model config's special ids, as in Qwen2.5-Instruct's config.json."""
    end_of_text = tok.convert_tokens_to_ids(ENDOFTEXT)
    return dict(pad_token_id=end_of_text, bos_token_id=end_of_text,
                eos_token_id=tok.convert_tokens_to_ids(IM_END))
