"""Prompts as the model expects them: the task's question rendered once, in one place.

`data.prompt_template` picks the rendering:
    auto   the tokenizer's chat template when it has one (hub chat/instruct models), else raw
    raw    the question text as is (base models, the toy tasks' character model)
    chat   the tokenizer's chat template; an error when the tokenizer has none
    other  a format string with "{prompt}" (and optionally "{system}"), e.g. "Q: {prompt}\nA:"
`data.system_prompt` adds a system message (chat) or fills "{system}".

Rollout, the SFT warm start and evaluation all see the rendered text; the raw question stays in
`Prompt.metadata["question"]` for judges. A chat template writes its own special tokens (BOS
and role markers), so rendered chat text is tokenized without adding them again
(`add_special_tokens`).
"""
from __future__ import annotations

from dataclasses import replace

from core.records import Prompt


class PromptRenderer:
    def __init__(self, tokenizer, template: str = "auto", system_prompt: str | None = None):
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "auto":
            template = "chat" if has_chat else "raw"
        if template == "chat" and not has_chat:
            raise ValueError("data.prompt_template=chat, but the tokenizer of model.path has no "
                             "chat template: use raw, or a template string with {prompt}")
        if template not in ("raw", "chat") and "{prompt}" not in template:
            raise ValueError(f"data.prompt_template={template!r}: use auto, raw, chat, or a "
                             "string containing {prompt}")
        if template == "raw" and system_prompt:
            raise ValueError("data.system_prompt is set but data.prompt_template renders raw "
                             "text: use chat (or auto with a chat model), or a template with {system}")
        self.tokenizer, self.template, self.system_prompt = tokenizer, template, system_prompt

    @property
    def add_special_tokens(self) -> bool:
        return self.template != "chat"

    def render(self, question: str) -> str:
        if self.template == "raw":
            return question
        if self.template == "chat":
            messages = ([{"role": "system", "content": self.system_prompt}]
                        if self.system_prompt else []) + [{"role": "user", "content": question}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return self.template.format(prompt=question, system=self.system_prompt or "")

    def prompt(self, p: Prompt) -> Prompt:
        """`p` with its text rendered; the question kept in metadata["question"]."""
        if self.template == "raw":
            return p
        metadata = {**p.metadata, "question": p.text}
        if "twin" in metadata:   # a second view of the question (Co-Reward) is rendered alike
            twin = metadata["twin"]
            metadata["twin"] = {**twin, "text": self.render(twin["text"]), "question": twin["text"]}
        return replace(p, text=self.render(p.text), metadata=metadata)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]


class RenderedDataset:
    """A dataset whose prompts come out rendered (same length and indexing)."""

    def __init__(self, dataset, renderer: PromptRenderer):
        self.dataset, self.renderer = dataset, renderer
        self.views_per_prompt = getattr(dataset, "views_per_prompt", 1)

    def __len__(self):
        return self.dataset.__len__()

    def __getitem__(self, index: int) -> Prompt:
        return self.renderer.prompt(self.dataset[index])
