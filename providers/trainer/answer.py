"""The evaluation gate's job on the cluster: answer each question with its
model (greedy, transformers `generate`), one `answer` line each, the moment
it is answered, so a batch stopped halfway still gave what it answered."""

from __future__ import annotations

import time
from typing import Any

from ftctl.providers.trainer.loading import UnknownModel, load_model, load_tokenizer, manifest_of
from ftctl.providers.trainer.protocol import EXIT_MODEL, AnswerSpec, emit


def _tokenizer_for(model: str) -> Any:
    # an adapter folder carries the tokenizer it was trained with
    return load_tokenizer(model)


def answer(spec: AnswerSpec) -> int:
    import torch

    loaded: dict[str, tuple[Any, Any]] = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for q in spec.questions:
        model_id = spec.models[q["role"]]
        try:
            if model_id not in loaded:
                model = load_model(model_id).to(device)
                model.eval()
                loaded[model_id] = (model, _tokenizer_for(model_id))
        except UnknownModel as exc:
            emit("error", code=EXIT_MODEL, message=str(exc))
            return EXIT_MODEL
        model, tok = loaded[model_id]
        started = time.monotonic()
        prompt = tok.apply_chat_template(q["messages"], add_generation_prompt=True, tokenize=False)
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=int(spec.max_tokens), do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        text = tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
        emit("answer", key=q["key"], answer=text.strip(), seconds=round(time.monotonic() - started, 3),
             adapter=bool((manifest_of(model_id) or {}).get("adapter")))
    return 0
