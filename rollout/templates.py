"""Prompt templates: how a question is rendered into the text fed to the model."""

from __future__ import annotations

TEMPLATES = {
    # the embedded world's plain format; the base model was pretrained on exactly this
    "world": "Question: {question}\nAnswer:",
    # the instruction Qwen2.5-Math and the DFT paper use, without a chat wrapper
    "qwen-boxed": "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}.\n",
}


def render(template: str, question: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[template].format(question=question)
