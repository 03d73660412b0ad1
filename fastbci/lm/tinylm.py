"""A tiny causal language model saved as a Hugging Face folder: test and benchmark input for the
LLM rescoring, made on the spot (nothing is downloaded).

:func:`make_tiny_lm` builds a word-level tokenizer over the words of the given sentences (plus
``<unk>``, ``<s>``, ``</s>``, ``<pad>``), a small GPT-2, OPT or Llama model from a configuration,
optionally trains it for a few steps on the sentences (each wrapped in ``<s> ... </s>``), and
writes both with ``save_pretrained``: a folder that :class:`fastbci.lm.LLMScorer` loads through
the same path as a real model's. Needs transformers and tokenizers (``pip install 'fastbci[llm]'``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .llm import _transformers

__all__ = ["SPECIALS", "make_tiny_lm", "tiny_config"]

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")


def tiny_config(arch: str, vocab_size: int, *, hidden: int = 32, layers: int = 2, heads: int = 2,
                init: float = 0.02, bos: int = 1, eos: int = 2, pad: int = 3):
    """A small configuration of ``arch`` (``gpt2``, ``opt`` or ``llama``); ``init``: the std of
    the random weights (large values give far-from-uniform predictions)."""
    tf = _transformers()
    common = dict(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    if arch == "gpt2":
        return tf.GPT2Config(n_positions=128, n_embd=hidden, n_layer=layers, n_head=heads,
                             initializer_range=init, **common)
    if arch == "opt":
        return tf.OPTConfig(hidden_size=hidden, ffn_dim=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, max_position_embeddings=128,
                            word_embed_proj_dim=hidden, init_std=init, **common)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=128,
                              initializer_range=init, **common)
    raise ValueError(f"tiny_config: arch must be gpt2, opt or llama, got {arch!r}")


def _tokenizer(words: Sequence[str], bos: bool):
    tf = _transformers()
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {t: i for i, t in enumerate(list(SPECIALS) + sorted(set(words) - set(SPECIALS)))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"bos_token": "<s>"} if bos else {}
    return tf.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>",
                                      pad_token="<pad>", **extra)


def _train(model, tokenizer, sentences: Sequence[str], steps: int, lr: float, seed: int) -> list[float]:
    """``steps`` full-batch Adam steps of next-token cross-entropy on ``<s> sentence </s>``."""
    import torch
    torch.manual_seed(seed)
    bos, eos, pad = tokenizer.convert_tokens_to_ids(["<s>", "</s>", "<pad>"])
    ids = [[bos, *tokenizer(s, add_special_tokens=False)["input_ids"], eos] for s in sentences]
    width = max(len(s) for s in ids)
    x = torch.full((len(ids), width), pad, dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, :len(s)] = torch.as_tensor(s)
    labels = torch.where(x == pad, torch.full_like(x, -100), x)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=x, attention_mask=(x != pad).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def make_tiny_lm(folder: str | os.PathLike, sentences: Sequence[str], *, arch: str = "gpt2",
                 extra_words: Sequence[str] = (), steps: int = 0, lr: float = 1e-2, seed: int = 0,
                 bos: bool = True, **config) -> dict:
    """Write a tiny ``arch`` model and its tokenizer to ``folder`` (see the module docstring).

    ``extra_words`` join the vocabulary; ``steps`` > 0 trains on ``sentences``; ``bos=False``
    gives a tokenizer without a bos token (its eos stands in); ``config``: :func:`tiny_config`
    options. Returns ``{"folder", "vocab_size", "losses"}``."""
    tf = _transformers()
    import torch
    words = [w for s in sentences for w in s.split()] + list(extra_words)
    tok = _tokenizer(words, bos)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(arch, len(tok), **config))
    losses = _train(model, tok, sentences, steps, lr, seed) if steps > 0 else []
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"folder": str(folder), "vocab_size": len(tok), "losses": losses}
