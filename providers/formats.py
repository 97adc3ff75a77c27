"""What one line of a training file holds, by training method.

A provider's descriptor says which formats it takes (`ProviderKind.example_format`);
the dataset checker in preflight asks the format to split a record into the
conversations it must check like any other (known roles, no empty content,
ending with the assistant) and count tokens of, plus the problems that belong
to the format itself (a broken preference pair). No provider is named here.

SFT, conversational: {"messages": [...]}.
DPO, preference pairs (OpenAI's and Together's shape):
    {"input": {"messages": [...]},
     "preferred_output": [{"role": "assistant", "content": "..."}],
     "non_preferred_output": [{"role": "assistant", "content": "..."}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# problem codes the formats add, with what they mean (for reports)
DESCRIPTIONS = {
    "dpo_input": "missing or malformed DPO input",
    "dpo_pair": "broken preference pair",
}


@dataclass(frozen=True)
class Split:
    # (where, messages): each a conversation the checker checks and counts
    conversations: tuple[tuple[str, Any], ...] = ()
    # (code, message) found by the format itself
    problems: tuple[tuple[str, str], ...] = ()


class ExampleFormat:
    name = "sft"

    def __init__(self, keys: frozenset[str]):
        # the top-level keys an example may hold; anything else is rejected
        self.keys = keys

    def split(self, record: dict[str, Any]) -> Split:
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            return Split(problems=(("missing_messages", 'missing or empty "messages"'),))
        return Split(conversations=(("messages", messages),))


class PreferenceFormat(ExampleFormat):
    """DPO: a prompt (input.messages) and two answers, the preferred first."""

    name = "dpo"
    OUTPUTS = ("preferred_output", "non_preferred_output")
    KEYS = frozenset({"input", *OUTPUTS})

    def split(self, record: dict[str, Any]) -> Split:
        problems: list[tuple[str, str]] = []
        source = record.get("input")
        prompt = source.get("messages") if isinstance(source, dict) else None
        if not isinstance(prompt, list) or not prompt:
            problems.append(("dpo_input", 'missing or empty "input.messages"'))
        elif isinstance(prompt[-1], dict) and prompt[-1].get("role") == "assistant":
            problems.append(("dpo_input", '"input.messages" ends with the assistant: the outputs are the answer'))
        outputs = {}
        for key in self.OUTPUTS:
            value = record.get(key)
            if value is None:
                problems.append(("dpo_pair", f'missing "{key}"'))
            elif (not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], dict)
                  or value[0].get("role") != "assistant"):
                problems.append(("dpo_pair", f'"{key}" must be a list of one assistant message'))
            else:
                outputs[key] = value[0]
        if len(outputs) == 2 and _text(outputs[self.OUTPUTS[0]]) == _text(outputs[self.OUTPUTS[1]]):
            problems.append(("dpo_pair", "preferred_output and non_preferred_output are the same: no preference"))
        if problems:
            return Split(problems=tuple(problems))
        return Split(conversations=tuple((f"input.messages + {key}", prompt + [outputs[key]]) for key in self.OUTPUTS))


def _text(message: dict[str, Any]) -> Any:
    return message.get("content"), message.get("tool_calls")


FORMATS: dict[str, type[ExampleFormat]] = {"sft": ExampleFormat, "dpo": PreferenceFormat}


def format_for(method: str, example_keys: frozenset[str]) -> ExampleFormat:
    """The format of `method`; SFT examples may hold the provider's own extra keys."""
    cls = FORMATS[method]
    return cls(example_keys if cls is ExampleFormat else PreferenceFormat.KEYS)
