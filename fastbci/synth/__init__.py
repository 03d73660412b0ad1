"""A synthetic t15 release: the identical file layout, learnable signal, realistic sizes.

``fastbci synth --out DIR [--small | --demo | --release] [options]`` writes
``DIR/<session>/data_{train,val,test}.hdf5`` exactly as the official release (docs/recipe.md
section 1; train-only sessions get no val/test file) plus ``DIR/synth_config.yaml``, a config
fragment (dataset_dir, sessions, dataset_probability_val, neural_dim) that ``load_config``
accepts, and ``DIR/corpus_train.txt``, the train sentences normalised as the evaluation
normalises them, one a line (a corpus for ``fastbci lm build``), and prints what it
wrote. Python: :func:`write_release`.

How a trial is made
-------------------
* A sentence of 2-6 words (presets change this) from a built-in lexicon of common English words
  with their ARPAbet pronunciations; ``seq_class_ids`` are the phoneme ids with the silence (40)
  after every word, the last one included; ``sentence_label`` is capitalised and punctuated;
  ``transcription`` its ASCII codes, zero-padded to 500.
* Timeline: a lead-in of ~170 bins (the delay period), then every phoneme token for a
  gamma-distributed ~20.5 bins, then a short tail, so ``T ~ 20.5 x seq_len + 206`` with spread,
  clipped to 130..1600.
* Neural latent: each of the 41 classes has a template over the 256 electrodes (4 arrays of 64,
  tuned with different strengths: ventral 6v and 55b strongest), switched on by a smooth bump
  over its token (neighbouring tokens overlap: co-articulation), plus a condition-independent
  "speaking" component, a slow within-trial random walk and white noise.
* Per-session drift: the latent goes through a near-identity mixing ``I + E_s`` and an offset
  ``b_s`` (what the day layers learn to undo).
* Features: 0..C/2-1 "threshold crossings" (Poisson counts from a soft-plus rate of the latent),
  C/2..C-1 "spike-band power" (a log-normal-ish power of the same latent with its own noise, so
  the two halves are correlated). Each feature is then z-scored with the mean and std of the
  preceding 20 trials of the session plus the current one (as the release's rolling z-score),
  so values have mean ~0 and std ~1.

All randomness comes from ``numpy.random.default_rng(seed)`` streams (one per session), so a
release is a pure function of its arguments.
"""
from .release import (CORPUS_FILE, OFFICIAL_SESSIONS, PARAMS_FILE, PRESETS, TRAIN_ONLY_SESSIONS,
                      format_summary, read_params, write_corpus, write_release)
from .simulate import LEXICON, make_sentence, simulate_session

__all__ = ["LEXICON", "OFFICIAL_SESSIONS", "TRAIN_ONLY_SESSIONS", "PRESETS", "CORPUS_FILE",
           "PARAMS_FILE", "read_params",
           "write_release", "write_corpus", "simulate_session", "make_sentence", "format_summary"]
