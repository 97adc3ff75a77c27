"""Base models: a local folder, an ftctl artifact (a folder with a
manifest: full weights, or a LoRA adapter over its own base, merged here),
or a Hugging Face id (from the local cache when HF_HUB_OFFLINE is set)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftctl.providers.trainer.protocol import MANIFEST

# for a tokenizer that comes without one: role and content, one turn a line
DEFAULT_CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")


class UnknownModel(Exception):
    pass


def manifest_of(model: str) -> dict[str, Any] | None:
    path = Path(model) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def root_of(model: str) -> str:
    """The base model at the root of a chain of ftctl artifacts."""
    seen = 0
    while (manifest := manifest_of(model)) is not None and seen < 32:
        model, seen = manifest.get("base_model") or model, seen + 1
    return model


def load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise UnknownModel(f"base model {model!r}: no tokenizer ({str(exc).splitlines()[0][:160]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


def load_model(model: str, dtype: Any = None) -> Any:
    """The model ready to train or answer: an adapter artifact comes merged
    into its base, so a pipeline stage trains on what its upstream learned."""
    from transformers import AutoModelForCausalLM

    manifest = manifest_of(model)
    if manifest is not None and manifest.get("adapter"):
        from peft import PeftModel

        base = load_model(manifest["base_model"], dtype)
        return PeftModel.from_pretrained(base, model).merge_and_unload()
    if not Path(model).exists() and (model.startswith(("/", ".", "~")) or model.count("/") > 1):
        raise UnknownModel(f"base model {model!r}: no such folder")
    try:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        return AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        raise UnknownModel(f"base model {model!r} cannot be loaded ({str(exc).splitlines()[0][:160]})") from None
