"""fastbci.lm: from phoneme log-probabilities to words, in process.

* :class:`WordDecoder`: flashlight-text's lexicon beam search with a KenLM n-gram (ARPA or
  binary) over fastbci's 41 classes; ``WordDecoder(lm="lm.arpa").decode(log_probs)``.
* :class:`Lexicon`: CMU dictionary pronunciations (stress removed) as fastbci ids, plus extra
  ``WORD P1 P2 ...`` entries.
* :func:`build_arpa`: interpolated modified Kneser-Ney n-grams, written as ARPA.
* :func:`normalize`, :func:`wer_report`: the official evaluation's sentence normalisation and WER.
* :class:`LLMScorer`: natural-log sentence probabilities under a Hugging Face causal LM;
  :func:`rescore_file` / :class:`RescoreParams`: the n-best rescored with it.
* CLI: ``fastbci lm build | decode | tune | rescore``.

Nothing here imports flashlight-text until a decoder is made, nor transformers until an
LLMScorer is, so ``import fastbci.lm`` works on machines without them (:func:`available` tells
for flashlight-text).
"""
from .arpa import ArpaError, ArpaModel
from .decoder import Hypothesis, LMUnavailableError, WordDecoder, available, log_softmax
from .lexicon import Lexicon, LexiconError
from .llm import LLMError, LLMScorer, LLMUnavailableError
from .ngram import build_arpa
from .params import DecoderParams, RescoreParams
from .rescore import NBest, NBestError, read_nbest
from .run import decode_file, rescore_file
from .text import normalize, wer_report

__all__ = ["ArpaError", "ArpaModel", "DecoderParams", "Hypothesis", "LLMError", "LLMScorer",
           "LLMUnavailableError", "LMUnavailableError", "Lexicon", "LexiconError", "NBest", "NBestError",
           "RescoreParams", "WordDecoder", "available", "build_arpa", "decode_file", "log_softmax",
           "normalize", "read_nbest", "rescore_file", "wer_report"]
