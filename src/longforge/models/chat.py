"""Instruct models: prompts through the tokenizer's chat template, end-of-turn as a stop token.

An instruct model (one whose tokenizer carries a chat template, such as the bundled
Qwen2.5-Coder-0.5B-Instruct) answers a request far better when it comes as a chat turn:
``chat_prompt(tok, "Write three search queries ...")`` gives the template's text up to the start
of the assistant's turn. Its turn ends with a special token (``<|im_end|>`` for Qwen,
``<end_of_turn>`` for Gemma) that is not always the tokenizer's ``eos_token``;
:func:`stop_token_ids` collects every such token so that generation stops at the end of the turn.
"""
from __future__ import annotations

# End-of-turn / end-of-text tokens of the common chat formats (ChatML, Gemma, Llama 3, Phi).
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<|eot_id|>", "<|end|>",
               "<|end_of_text|>")


def is_chat_model(tokenizer) -> bool:
    """The tokenizer has a chat template (an instruct model)."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer, user: str | list[dict], system: str | None = None) -> str:
    """The chat template applied to one user turn (or a list of messages), ending where the
    assistant's answer begins. Raises ``ValueError`` for a tokenizer without a template."""
    if not is_chat_model(tokenizer):
        raise ValueError(f"{type(tokenizer).__name__} has no chat template: this is not an "
                         "instruct model; prompt it with plain text (few-shot) instead")
    messages = [{"role": "user", "content": user}] if isinstance(user, str) else list(user)
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_ids(tokenizer, user: str | list[dict], system: str | None = None) -> list[int]:
    """Token ids of :func:`chat_prompt` (the template holds its own special tokens)."""
    return tokenizer(chat_prompt(tokenizer, user, system), add_special_tokens=False).input_ids


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every token id that ends a turn: the generation config's and the tokenizer's EOS, and the
    end-of-turn tokens of :data:`END_OF_TURN` that the vocabulary holds as single tokens."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    for x in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if x is not None and x not in ids:
            ids.append(int(x))
    vocab = tokenizer.get_vocab()
    for t in END_OF_TURN:
        if t in vocab and vocab[t] not in ids:
            ids.append(int(vocab[t]))
    return ids
