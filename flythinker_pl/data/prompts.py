"""LongLaMP prompts: each retrieved profile item rendered by the task's template, joined with
", and ", then the task's suffix with the query; wrapped in the model's chat template if it has one."""
from __future__ import annotations

from typing import Optional

from transformers import PreTrainedTokenizerBase

PROFILE_ITEM = {
    "product_review": '"{overall}" is a rating for the product with description "{description}". '
                      '"{summary}" is summary for "{reviewText}"',
    "abstract_generation": '"{abstract}" is the abstract for the title "{title}"',
    "topic_writing": '"{summary}" is a summary for "{content}"',
}
SUFFIX = {
    "product_review": ". Following the given patterns {input}",
    "abstract_generation": ". Use the above abstracts as context to understand the style and language of the user and, {input}",
    "topic_writing": ". Following the given patterns, {input}",
}
ABSTRACT_WORDS = 750  # LongLaMP keeps the first 750 words of each profile abstract


def render_profile_item(task: str, item: dict) -> str:
    if task == "abstract_generation":
        item = {**item, "abstract": " ".join(str(item["abstract"]).split(" ")[:ABSTRACT_WORDS])}
    return PROFILE_ITEM[task].format(**item)


def user_message(task: str, profile_texts: list[str], query: str) -> str:
    """The user turn; with no history the query stands alone."""
    if not profile_texts:
        return query
    return ", and ".join(profile_texts) + SUFFIX[task].format(input=query)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, message: str, system_prompt: Optional[str]) -> str:
    """The text the Generator reads before the response: chat template + assistant header when
    the tokenizer has one (system_prompt None keeps the template's default), else plain text."""
    if tokenizer.chat_template:
        turns = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
        turns.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    header = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{header}{message}\n\nResponse:\n"
