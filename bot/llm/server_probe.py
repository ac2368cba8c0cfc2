"""What a model server offers beyond the chat API: its tokenizer and context size (llama.cpp's servers),
and what its chat template adds around the messages, measured from the prompt sizes it reports, so that
prompts sent to it are counted as it counts them.

The server applies the model's own template, which the bot does not have: counting a ChatML-like text
over-counted by 5-12 %, so a window on a server filled only 0.62-0.70 of its budget. At connect, three tiny
chats whose sizes the server reports (`usage.prompt_tokens`) give the template's cost: what it adds with
the first (system) message, and around each later message by its role. A prompt then counts as that plus
its messages' contents, each tokenized by the server's own tokenizer (and remembered, so a turn asks only
for its new messages).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai

_log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 30.0

# Probe contents: one token each in every tokenizer the bot meets.
PROBE = ({"role": "system", "content": "a"}, {"role": "user", "content": "b"})
PROBE_MORE = ({"role": "assistant", "content": "c"}, {"role": "user", "content": "d"})


@dataclass(frozen=True)
class TemplateCost:
    head: int  # tokens the template adds with the first message (and the reply's opening), beyond content
    around: dict[str, int]  # tokens it adds around each later message, by role

    def count(self, chat: Sequence[dict[str, str]], tokens: Callable[[str], int]) -> int:
        """The prompt size the server will report for `chat`."""
        wrapped = sum(self.around.get(m["role"], self.around["user"]) for m in chat[1:])
        return self.head + wrapped + sum(tokens(m["content"]) for m in chat)


async def measure(
    client: openai.AsyncOpenAI, model: str, extra: dict[str, Any], tokens: Callable[[str], int]
) -> TemplateCost | None:
    """The server's template cost, from three one-token answers; None when the server reports no sizes
    (or sizes no template could give)."""
    sizes = []
    for chat in (PROBE, PROBE + PROBE_MORE[:1], PROBE + PROBE_MORE):
        try:
            response = await client.with_options(timeout=PROBE_TIMEOUT_SECONDS).chat.completions.create(
                model=model,
                messages=list(chat),  # type: ignore[arg-type]  # plain role/content dicts
                max_tokens=1,
                temperature=0.0,
                extra_body=extra,
            )
        except openai.OpenAIError as exc:
            _log.debug("template probe failed: %s", exc)
            return None
        usage = response.usage
        if usage is None or not usage.prompt_tokens:
            return None
        sizes.append(usage.prompt_tokens)
    first, second, third = sizes
    assistant = second - first - tokens("c")
    user = third - second - tokens("d")
    head = first - user - tokens("a") - tokens("b")
    if min(assistant, user, head) < 0:
        return None
    return TemplateCost(head, {"user": user, "assistant": assistant, "system": user})


def post_json(url: str, payload: dict[str, Any], timeout: float) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def probe_extras(root: str) -> tuple[str | None, int]:
    """The server's tokenize endpoint and context size, where it has them (llama.cpp's servers do)."""
    timeout = PROBE_TIMEOUT_SECONDS
    tokenize_url = None
    for path in ("/extras/tokenize", "/tokenize"):  # llama-cpp-python, llama-server
        try:
            if isinstance(
                post_json(root + path, {"input": "hi", "content": "hi"}, timeout).get("tokens"), list
            ):
                tokenize_url = root + path
                break
        except (OSError, ValueError, AttributeError):
            continue
    n_ctx = 0
    try:
        with urllib.request.urlopen(root + "/props", timeout=timeout) as response:
            n_ctx = int(json.loads(response.read())["default_generation_settings"]["n_ctx"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return tokenize_url, n_ctx
