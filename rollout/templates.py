"""Prompt templates: how a question is rendered into the text fed to the model.

Built in:
- ``world``: the embedded world's plain format;
- ``qwen-boxed``: the Qwen2.5-Math evaluation harness's ``qwen-boxed`` prompt, character for
  character (its ``evaluation/utils.py``): a fixed ChatML text with the system turn "You are a
  helpful assistant.", whatever the model's own template, and the harness's stop strings. It is
  what the DFT paper's numbers were measured with, and the default for real benchmarks;
- ``qwen-boxed-plain``: the same instruction as plain text, no chat turns;
- ``chat``: that instruction inside the model's own chat template; it stops at the special token the template
  closes a turn with (Qwen's ``<|im_end|>``, which is not its tokenizer's EOS), and a demonstration ends in it.
Any other name is read as a file whose text contains ``{question}``.
"""

from __future__ import annotations

import re
from pathlib import Path

from rollout.files import read_text

QWEN_BOXED = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
TEMPLATES = {
    "world": "Question: {question}\nAnswer:",
    "qwen-boxed": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                   "<|im_start|>user\n" + QWEN_BOXED + "<|im_end|>\n<|im_start|>assistant\n"),
    "qwen-boxed-plain": QWEN_BOXED + "\n",
    "chat": None,  # rendered by the tokenizer's chat template
}
# Each template's default stop strings (--stop overrides): the harness stops at these, so that a base
# model whose EOS is <|endoftext|> cannot run past <|im_end|> into an invented next turn.
STOPS = {"qwen-boxed": ["</s>", "<|im_end|>", "<|endoftext|>"]}


class TemplateError(ValueError):
    pass


class Template:
    """Renders questions to prompt text and exact prompt token ids."""

    def __init__(self, name: str, tokenizer=None):
        self.name = name
        self.tokenizer = tokenizer
        self.stop = list(STOPS.get(name, []))
        self.end_of_turn = None  # the token a response ends in, where not the tokenizer's EOS
        if name == "chat":
            if tokenizer is None or not getattr(tokenizer, "chat_template", None):
                raise TemplateError("template 'chat' needs a model with a chat template; this one has none")
            self.text = None
            self.end_of_turn = end_of_turn(tokenizer)
            self.stop = [self.end_of_turn] if self.end_of_turn else []
        elif name in TEMPLATES:
            self.text = TEMPLATES[name]
            self.literal = False
        else:
            path = Path(name)
            if not path.exists():
                raise TemplateError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}, "
                                    "or a file holding {question}")
            self.text = read_text(path)  # TextError names the file and line
            self.literal = True  # a file's text is taken as it is; only {question} is replaced
            if "{question}" not in self.text:
                raise TemplateError(f"template file {path} has no {{question}} placeholder")
            unknown = [m for m in re.findall(r"(?<![A-Za-z\\])\{([A-Za-z_]\w*)\}", self.text) if m != "question"]
            if unknown:
                raise TemplateError(f"template file {path} has an unknown placeholder {{{unknown[0]}}}; only "
                                    "{question} is filled in")

    def render(self, question: str) -> str:
        if self.text is None:
            messages = [{"role": "user", "content": QWEN_BOXED.format(question=question)}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.literal:
            return self.text.replace("{question}", question)
        return self.text.format(question=question)

    def token_ids(self, prompt: str) -> list[int]:
        # a chat template already holds its special tokens; plain text gets the model's usual ones
        return self.tokenizer(prompt, add_special_tokens=self.text is not None)["input_ids"]


def end_of_turn(tokenizer) -> str | None:
    """The special token a chat template closes an assistant turn with (``<|im_end|>`` in ChatML, ``<|eot_id|>`` in
    Llama 3's), read off the template: the first added token after an assistant message's text; None if none."""
    marker = "7e1c0d5a"  # text no template adds or changes
    messages = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": marker}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that renders no assistant turn (or raises on one) closes none we can read
        return None
    tail = text[text.rfind(marker) + len(marker) :] if marker in text else ""
    found = [(tail.find(token), token) for token in tokenizer.get_added_vocab() if token and token in tail]
    return min(found)[1] if found else None


def default_template(source_kind: str, tokenizer=None) -> str:
    """``world`` for the world's splits; for every other source the harness prompt the paper measured with."""
    return "world" if source_kind == "world" else "qwen-boxed"


def render(template: str, question: str) -> str:
    """Render with a built-in text template (no tokenizer needed)."""
    if template not in TEMPLATES or TEMPLATES[template] is None:
        raise TemplateError(f"unknown text template {template!r}")
    return Template(template).render(question)
