"""LongLaMP prompts: each retrieved profile item rendered by the task's template, joined with
", and " (the history), then the task's suffix with the query; wrapped in the model's chat
template when the tokenizer has one, else in a plain template."""
from __future__ import annotations

from typing import Optional

from transformers import PreTrainedTokenizerBase

PROFILE_ITEM = {
    "product_review": '"{overall}" is a rating for the product with description "{description}". '
                      '"{summary}" is summary for "{reviewText}"',
    "abstract_generation": '"{abstract}" is the abstract for the title "{title}"',
    "topic_writing": '"{summary}" is a summary for "{content}"',
}
SEPARATOR = ", and "
SUFFIX = {
    "product_review": ". Following the given patterns {input}",
    "abstract_generation": ". Use the above abstracts as context to understand the style and language of the user and, {input}",
    "topic_writing": ". Following the given patterns, {input}",
}
ABSTRACT_WORDS = 750  # LongLaMP keeps the first 750 (whitespace-separated) words of a profile abstract


def render_profile_item(task: str, item: dict) -> str:
    if task == "abstract_generation":
        item = {**item, "abstract": " ".join(item["abstract"].split()[:ABSTRACT_WORDS])}
    return PROFILE_ITEM[task].format(**item)


def history(rendered_items: list[str]) -> str:
    return SEPARATOR.join(rendered_items)


def user_message(task: str, history_text: str, query: str) -> str:
    """The user turn; with no history (empty profile, retriever none) the query stands alone."""
    return history_text + SUFFIX[task].format(input=query) if history_text else query


def chat_prompt(tokenizer: PreTrainedTokenizerBase, message: str, system_prompt: Optional[str]) -> str:
    """The text the Generator reads before the response: chat template + assistant header when
    the tokenizer has one (system_prompt None keeps the template's default), else plain text."""
    if tokenizer.chat_template:
        turns = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
        turns.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    header = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{header}{message}\n\nResponse:\n"
