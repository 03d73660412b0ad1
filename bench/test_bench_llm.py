"""LLM rescoring (fastbci.lm.LLMScorer): hypotheses and tokens per second, and the time to
rescore the val split's n-best lists (100 hypotheses x 1,426 trials) projected from them.

* CPU (always): a tiny OPT (2 layers, 64 units, a 2,004-word word-level vocabulary) made here
  with fastbci.lm.tinylm and loaded through the real path (``LLMScorer(folder)``); 400 random
  sentences of 4-14 words, batch 100.
* GPU (skipped without CUDA): a model built from the OPT-6.7B configuration (32 layers, 4096
  units, 32 heads, FFN 16384, vocabulary 50272) with random weights in bfloat16 (timing needs no
  weights), wrapped with ``LLMScorer.wrap``; 2,000 random token sequences of 5-20 tokens after
  BOS (mean 12.5: ~9-10 words of OPT's BPE), batches of 100 (the lab's) and 400. Target on one
  H100/H200: the whole val split in under 60 s.
"""
from __future__ import annotations

import numpy as np
import pytest

from bench_helpers import ON_GPU, mean_seconds, peak_memory_bytes, run_bench

pytest.importorskip("transformers", reason="transformers (pip install 'fastbci[llm]')")

import torch  # noqa: E402

from fastbci.lm import LLMScorer  # noqa: E402

VAL_TRIALS, NBEST = 1426, 100
TARGET_VAL_S = 60.0
#: the OPT-6.7B configuration (facebook/opt-6.7b config.json)
OPT_6_7B = dict(vocab_size=50272, hidden_size=4096, num_hidden_layers=32, ffn_dim=16384,
                num_attention_heads=32, max_position_embeddings=2048, word_embed_proj_dim=4096,
                do_layer_norm_before=True, enable_bias=True, activation_function="relu",
                bos_token_id=2, eos_token_id=2, pad_token_id=1)


def _record(benchmark, scorer: LLMScorer, n_texts: int, n_tokens: int, **info) -> dict:
    secs = mean_seconds(benchmark)
    rate = n_texts / secs
    out = dict(hypotheses=n_texts, tokens=n_tokens, mean_tokens=n_tokens / n_texts,
               batch_size=scorer.batch_size, dtype=str(scorer.dtype).replace("torch.", ""),
               hypotheses_per_s=rate, tokens_per_s=n_tokens / secs, projected_val_s=VAL_TRIALS * NBEST / rate,
               projected_for=f"{NBEST} hypotheses x {VAL_TRIALS} val trials", **info)
    benchmark.extra_info.update(out)
    print(f"\n{info.get('model')}: {rate:.0f} hypotheses/s, {n_tokens / secs:.0f} tokens/s (batch "
          f"{scorer.batch_size}); {NBEST} x {VAL_TRIALS} val hypotheses: {VAL_TRIALS * NBEST / rate:.0f} s")
    return out


@pytest.mark.benchmark(group="llm: n-best rescoring")
def test_llm_scorer_cpu_tiny(benchmark, tmp_path):
    from fastbci.lm.tinylm import make_tiny_lm
    words = [f"w{i}" for i in range(2000)]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(4, 15)))) for _ in range(400)]
    make_tiny_lm(tmp_path / "opt", texts[:50], arch="opt", extra_words=words, hidden=64, heads=4)
    torch.manual_seed(0)
    scorer = LLMScorer(tmp_path / "opt", device="cpu", batch_size=100)
    n_tokens = sum(len(t) - 1 for t in scorer.encode(texts))
    run_bench(benchmark, scorer.score, texts, rounds=3, warmup=1)
    _record(benchmark, scorer, len(texts), n_tokens, model="tiny OPT (2 layers, 64 units)", device_kind="cpu",
            vocab=len(scorer.tokenizer), threads=torch.get_num_threads())


@pytest.fixture(scope="module")
def opt_6_7b():
    if not ON_GPU:
        pytest.skip("needs CUDA: the OPT-6.7B configuration in bfloat16 (13.3 GB of weights)")
    import transformers
    from fastbci.lm.llm import dtype_kwarg
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.OPTConfig(**OPT_6_7B), **{dtype_kwarg(transformers): torch.bfloat16})
    return model.eval()


@pytest.mark.benchmark(group="llm: n-best rescoring")
@pytest.mark.parametrize("batch_size", [100, 400])
def test_llm_scorer_gpu_opt_6_7b(benchmark, opt_6_7b, batch_size):
    scorer = LLMScorer.wrap(opt_6_7b, bos_id=2, batch_size=batch_size,
                            source="OPT-6.7B config, random weights")
    rng = np.random.default_rng(0)
    ids = [[2, *rng.integers(4, OPT_6_7B["vocab_size"], size=int(rng.integers(5, 21))).tolist()]
           for _ in range(2000)]
    n_tokens = sum(len(s) - 1 for s in ids)
    peak = peak_memory_bytes(scorer.score_ids, ids)
    scores = run_bench(benchmark, scorer.score_ids, ids, rounds=3, warmup=1)
    assert np.isfinite(scores).all()
    out = _record(benchmark, scorer, len(ids), n_tokens, model="OPT-6.7B configuration, random bf16 weights",
                  device_kind="cuda", params=sum(p.numel() for p in opt_6_7b.parameters()),
                  weights_bytes=sum(p.numel() * p.element_size() for p in opt_6_7b.parameters()),
                  peak_extra_bytes=peak, target_val_s=TARGET_VAL_S)
    benchmark.extra_info["meets_target"] = out["projected_val_s"] < TARGET_VAL_S
