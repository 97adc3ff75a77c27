"""Token counts that match the provider's, offline.

Mistral models (and the Mistral family on other providers): the official
tokenizers shipped in `mistral-common`, in fine-tuning validation mode (the
conversation must end with the assistant). Models with no offline tokenizer
here get an approximate counter whose name says so.
OpenAI models: the model's real encoding from `bpe-openai` (which ships
o200k_base and cl100k_base; tiktoken would download them at run time), plus
the chat format's per-message overhead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


class TokenizerUnavailable(Exception):
    pass


class ExampleRejected(Exception):
    """The provider's own tokenizer refuses this conversation (message structure)."""


# Mistral model -> tokenizer file in mistral_common/data (from DESIGN.md and
# mistral-common's own model table). Matched by prefix, longest first.
MISTRAL_TOKENIZERS = {
    "open-mistral-7b": ("mistral_instruct_tokenizer_240323.model.v3", "v3 SentencePiece"),
    "mistral-tiny": ("mistral_instruct_tokenizer_240323.model.v3", "v3 SentencePiece"),
    "open-mixtral": ("mistral_instruct_tokenizer_240323.model.v3", "v3 SentencePiece"),
    "codestral": ("mistral_instruct_tokenizer_240323.model.v3", "v3 SentencePiece"),
    "mistral-large-2407": ("mistral_instruct_tokenizer_240323.model.v3", "v3 SentencePiece"),
    "open-mistral-nemo": ("tekken_240718.json", "v3 tekken"),
    "mistral-nemo": ("tekken_240718.json", "v3 tekken"),
    "ministral-8b": ("tekken_240718.json", "v3 tekken"),
    "ministral-3b": ("tekken_240718.json", "v3 tekken"),
    "mistral-small-2409": ("tekken_240718.json", "v3 tekken"),
    "mistral-small": ("tekken_240718.json", "v3 tekken"),
    "mistral-large": ("mistral_instruct_tokenizer_241114.model.v7", "v7 SentencePiece"),
}

# OpenAI model -> encoding (prefix match, longest first)
OPENAI_ENCODINGS = {
    "gpt-4o": "o200k_base",
    "gpt-4.1": "o200k_base",
    "o4-mini": "o200k_base",
    "o3": "o200k_base",
    "gpt-4": "cl100k_base",
    "gpt-3.5-turbo": "cl100k_base",
    "babbage-002": "cl100k_base",
    "davinci-002": "cl100k_base",
}

# OpenAI's chat format: every message costs 3 tokens beyond its fields, a
# name 1 more, and every reply is primed with 3 (OpenAI's cookbook formula)
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

_MISTRAL_MESSAGE_KEYS = {"role", "content", "tool_calls", "tool_call_id", "name", "prefix"}


def prefix_lookup(table: dict[str, Any], model: str) -> Any:
    for prefix in sorted(table, key=len, reverse=True):
        if model == prefix or model.startswith(prefix):
            return table[prefix]
    return None


@dataclass(frozen=True)
class Counter:
    provider: str
    model: str
    name: str  # which tokenizer, for reports
    count: Callable[[list[dict[str, Any]]], int]


@lru_cache(maxsize=8)
def _mistral_tokenizer(filename: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mistral_common.protocol.instruct.validator import ValidationMode
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        tokenizer = MistralTokenizer.from_file(str(MistralTokenizer._data_path() / filename),
                                               mode=ValidationMode.finetuning)
    # encode_instruct decodes its own tokens back into a debug string (`.text`,
    # "remove once 1.13.0 lands" upstream): that is half the time of a count.
    # This private instance never reads `.text`, so its decode is skipped; the
    # tokens are untouched (tests compare them with a stock tokenizer).
    tokenizer.instruct_tokenizer.decode = lambda tokens, special_token_policy=None: ""
    return tokenizer


def mistral_counter(model: str) -> Counter:
    found = prefix_lookup(MISTRAL_TOKENIZERS, model)
    if found is None:
        raise TokenizerUnavailable(f"no Mistral tokenizer known for model {model!r} "
                                   f"(known: {', '.join(sorted(MISTRAL_TOKENIZERS))})")
    return mistral_file_counter("mistral", model, *found)


def mistral_file_counter(provider: str, model: str, filename: str, label: str) -> Counter:
    """A count with one of mistral-common's tokenizer files (a Mistral-family
    model served by another provider uses the same tokenizer)."""
    tokenizer = _mistral_tokenizer(filename)
    from mistral_common.exceptions import MistralCommonException
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from pydantic import ValidationError

    def count(messages: list[dict[str, Any]]) -> int:
        clean = [{k: v for k, v in m.items() if k in _MISTRAL_MESSAGE_KEYS} for m in messages]
        try:
            request = ChatCompletionRequest.model_validate({"messages": clean})
            return len(tokenizer.encode_chat_completion(request).tokens)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ExampleRejected(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        except MistralCommonException as exc:
            raise ExampleRejected(str(exc)) from None

    return Counter(provider, model, f"mistral-common {label}", count)


@lru_cache(maxsize=4)
def _encoding(name: str):
    import bpe_openai

    return bpe_openai.get_encoding(name)


def openai_counter(model: str) -> Counter:
    name = prefix_lookup(OPENAI_ENCODINGS, model)
    if name is None:
        raise TokenizerUnavailable(f"no OpenAI encoding known for model {model!r}")
    enc = _encoding(name)

    def count(messages: list[dict[str, Any]]) -> int:
        total = REPLY_PRIMING
        for m in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in m.items():
                if key == "weight":
                    continue
                if isinstance(value, str):
                    total += len(enc.encode(value))
                elif value is not None and key in ("tool_calls", "function_call"):
                    import json

                    total += len(enc.encode(json.dumps(value)))
                if key == "name":
                    total += TOKENS_PER_NAME
        return total

    return Counter("openai", model, f"bpe-openai {name}", count)


def approximate_counter(provider: str, model: str, *, per_message: int = 5, priming: int = 1) -> Counter:
    """For a model without an offline tokenizer here (Llama 3, Qwen ...): its
    text in cl100k_base (shipped by bpe-openai; Llama 3's 128k vocabulary
    extends it, so counts come out close but not equal) plus a chat
    template's tokens per message. Its name says it is an approximation."""
    enc = _encoding("cl100k_base")

    def count(messages: list[dict[str, Any]]) -> int:
        total = priming
        for m in messages:
            total += per_message
            content = m.get("content")
            if isinstance(content, str):
                total += len(enc.encode(content))
            elif isinstance(content, list):
                total += sum(len(enc.encode(p["text"])) for p in content
                             if isinstance(p, dict) and isinstance(p.get("text"), str))
            if m.get("tool_calls"):
                import json

                total += len(enc.encode(json.dumps(m["tool_calls"])))
        return total

    return Counter(provider, model, f"approximate (cl100k_base + {per_message} a message; no offline tokenizer "
                                    f"for {model})", count)


def local_counter(provider: str, model: str, *, per_message: int = 3) -> Counter | None:
    """A model folder's own tokenizer (tokenizer.json, read with the
    `tokenizers` library) plus a chat template's tokens per message; None
    when the folder has none or the library is missing."""
    from pathlib import Path

    path = Path(model) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
    except (ImportError, OSError, ValueError, Exception):  # noqa: BLE001 - a file the library cannot read
        return None

    def count(messages: list[dict[str, Any]]) -> int:
        total = 0
        for m in messages:
            content = m.get("content")
            total += per_message + (len(tok.encode(content, add_special_tokens=False).ids)
                                    if isinstance(content, str) else 0)
        return total

    return Counter(provider, model, f"{path} (+{per_message} a message)", count)
