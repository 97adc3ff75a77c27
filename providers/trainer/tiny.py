"""A tiny causal LM built from a config, with a byte-level BPE tokenizer
trained on the given files with the `tokenizers` library: what the tests
and the demo train, offline (nothing is ever downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIAL = ["<pad>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]


def _texts(files: list[Path]):
    for path in files:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            msgs = record.get("messages") or (record.get("input") or {}).get("messages") or []
            msgs = msgs + record.get("preferred_output", []) + record.get("non_preferred_output", [])
            for m in msgs:
                if isinstance(m.get("content"), str):
                    yield m["content"]


def build(out: Path, files: list[Path], *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(list(_texts(files)) or ["hello"], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="<pad>",
                                  additional_special_tokens=SPECIAL[2:])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out
