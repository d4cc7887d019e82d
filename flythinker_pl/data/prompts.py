"""LongLaMP prompts: each retrieved profile item rendered by the task's template, joined with
", and " (the history), then the task's suffix with the query; wrapped in the model's chat
template when the tokenizer has one, else in a plain template. Also the text layout of
chain-of-thought targets (rationale, then response) and how to split a generated one."""

from __future__ import annotations

from typing import Optional

from transformers import PreTrainedTokenizerBase

from .schema import DataError

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
# Chain-of-thought targets: RATIONALE_PREFIX + rationale + RESPONSE_MARKER + response. Both end in a
# newline, a pre-tokenisation boundary of byte-level BPE, so the pieces tokenise as the whole does.
RATIONALE_PREFIX = "Reasoning:\n"
RESPONSE_MARKER = "\n\nAnswer:\n"
_MESSAGE_SLOT = "\x00user message\x00"  # stands in for the message to find where a template puts it


def render_profile_item(task: str, item: dict) -> str:
    if task == "abstract_generation":
        item = {**item, "abstract": " ".join(item["abstract"].split()[:ABSTRACT_WORDS])}
    return PROFILE_ITEM[task].format(**item)


def history(rendered_items: list[str]) -> str:
    return SEPARATOR.join(rendered_items)


def user_message(task: str, history_text: str, query: str) -> str:
    """The user turn: the history first (characters [0, len(history_text)), see `history_span`),
    then the task's suffix with the query; with no history (empty profile, retriever none) the
    query stands alone."""
    return history_text + SUFFIX[task].format(input=query) if history_text else query


def chat_prompt(tokenizer: PreTrainedTokenizerBase, message: str, system_prompt: Optional[str]) -> str:
    """The text the Generator reads before the response: chat template + assistant header when
    the tokenizer has one (system_prompt None keeps the template's default), else plain text."""
    if tokenizer.chat_template:
        turns = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        turns.append({"role": "user", "content": message})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    header = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{header}{message}\n\nResponse:\n"


def template_head(tokenizer: PreTrainedTokenizerBase, system_prompt: Optional[str]) -> str:
    """What chat_prompt(tokenizer, message, system_prompt) puts before the message: where the template
    puts a stand-in message (so a system prompt that quotes the history cannot be mistaken for it).
    It depends on the tokenizer and the system prompt only: find it once for a split, not per record."""
    return chat_prompt(tokenizer, _MESSAGE_SLOT, system_prompt).partition(_MESSAGE_SLOT)[0]


def history_span(
    tokenizer: PreTrainedTokenizerBase, prompt: str, message: str, history_text: str, head: str
) -> tuple[int, int]:
    """Character span [start, end) of the history in `prompt` = chat_prompt(tokenizer, message,
    system_prompt), where `message` = user_message(task, history_text, query) and `head` =
    template_head(tokenizer, system_prompt).

    A template that rewrites the message (e.g. trims it) falls back to the message's last
    occurrence: the user turn is the last turn."""
    if not history_text:
        return 0, 0
    start = len(head) if prompt.startswith(head) and prompt.startswith(message, len(head)) else prompt.rfind(message)
    if start < 0:
        raise DataError(
            f"the chat template of {tokenizer.name_or_path or type(tokenizer).__name__} changes the "
            "user message, so the profile history cannot be located in the prompt (profile_mask)"
        )
    return start, start + len(history_text)


def with_rationale(rationale: str, response: str = "") -> str:
    """A chain-of-thought target: RATIONALE_PREFIX + rationale + RESPONSE_MARKER + response."""
    return RATIONALE_PREFIX + rationale + RESPONSE_MARKER + response


def split_rationale(generated_text: str) -> tuple[str, str]:
    """(rationale, response) of a generated chain-of-thought text: the response is everything after
    the first RESPONSE_MARKER, the rationale what precedes it (without RATIONALE_PREFIX). If the
    marker is missing (the model never finished reasoning, or never reasoned), the whole text is
    the response and the rationale is empty, so it is still scored, not dropped."""
    rationale, marker, response = generated_text.partition(RESPONSE_MARKER)
    if not marker:
        return "", generated_text
    return rationale.removeprefix(RATIONALE_PREFIX), response
