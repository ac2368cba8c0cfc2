"""The model's chat template (from the GGUF, so untrusted), rendered by llama-cpp-python's formatter in
Jinja's immutable sandbox, with the sandbox's safety verdicts remembered.

The sandbox decides whether an attribute may be read from its name and the type of the object it is read
from (private names, internals of functions and frames, methods that mutate lists and dicts), then checks
every read again: `loop.first` in a 1,700-message prompt cost 6 of the 8 ms a 32k render took. The verdict
for a (type, name) pair never changes, so it is decided once.
"""

from __future__ import annotations

from typing import Any


class RememberedVerdicts:
    """The sandbox's `is_safe_attribute`, decided once per (type of object, attribute name)."""

    def __init__(self, decide: Any) -> None:
        self._decide = decide
        self._verdicts: dict[tuple[type, str], bool] = {}

    def __call__(self, obj: Any, attribute: str, value: Any) -> bool:
        key = (type(obj), attribute)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = bool(self._decide(obj, attribute, value))
        return verdict


def chat_formatter(template: str, eos_token: str, bos_token: str) -> Any:
    """llama-cpp-python's Jinja formatter for the template, its sandbox's verdicts remembered."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
    environment: Any = formatter._environment.environment  # the compiled template's sandbox
    environment.is_safe_attribute = RememberedVerdicts(environment.is_safe_attribute)
    return formatter
