"""Sentence log-probabilities from a Hugging Face causal language model, for n-best rescoring.

``LLMScorer("path/to/opt-6.7b").score(["i want some water", ...])`` returns, per text, the
natural-log probability of the text exactly as given: the sum over its tokens of
``log p(token | BOS, the tokens before it)``, where BOS is the tokenizer's bos token (else its
eos token) and no end token is added. This is what the official rescoring computes with OPT (its
tokenizer prepends ``</s>``, its BOS; the score sums from the first token after it, with right
padding and no length penalty), made independent of the tokenizer's own special-token rules.

Texts are tokenised without special tokens, sorted by length, cut into batches of
``batch_size``, right-padded, and run with an attention mask; with right padding every real
token sits at the positions 0..n-1 it has alone (models that derive positions from the mask, as
OPT does, and those that count them, as GPT-2 and Llama do, agree), so neither padding nor the
other texts of a batch change a score beyond float rounding. Each position's log-softmax is
taken in float32 over the whole vocabulary; the per-text sums are float64.

transformers is imported when a scorer is made, never when this module is imported; without it
:class:`LLMUnavailableError` (exit status 5) gives the install line.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import numpy as np

from fastbci.errors import FastbciError, UnavailableError

__all__ = ["LLMError", "LLMScorer", "LLMUnavailableError", "TOKENIZER_FILES", "dtype_kwarg"]

#: files one of which a model folder needs for its tokenizer to load
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tiktoken.model")
_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "half": "float16", "float32": "float32", "fp32": "float32", "float": "float32"}


class LLMUnavailableError(UnavailableError):
    """transformers (the LLM rescoring's model loader) cannot be imported here."""


class LLMError(FastbciError, ValueError):
    """A model that cannot be used for scoring (the message names the folder or hub id)."""


def _transformers():
    """The transformers module, or :class:`LLMUnavailableError` with the install line."""
    try:
        import transformers
    except ImportError as e:
        raise LLMUnavailableError(
            f"LLM rescoring needs transformers, which cannot be imported here ({e}). Install it "
            "with: pip install 'fastbci[llm]' (or pip install transformers)") from None
    return transformers


def dtype_kwarg(tf) -> str:
    """The name of transformers' dtype argument: ``dtype`` (>= 4.56), else ``torch_dtype``."""
    major, minor = (int(x) for x in tf.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers (False at once when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
    is set): spares transformers' minute of retries on a machine without network."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)


def resolve_model(model: str | os.PathLike) -> tuple[str, bool]:
    """``(source, is_folder)`` for ``model``: an existing folder, or a hub id (``org/name``).
    A missing path, a file, or a folder without a tokenizer is an :class:`LLMError`."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LLMError(f"--llm {text}: want a model folder (config.json, weights, tokenizer), "
                           "got a file")
        if not (path / "config.json").is_file():
            raise LLMError(f"the model folder {path} has no config.json: pass the folder that "
                           "save_pretrained wrote (or a hub snapshot)")
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise LLMError(f"the model folder {path} has no tokenizer (none of "
                           f"{', '.join(TOKENIZER_FILES)}): copy the model's tokenizer files into it")
        return str(path), True
    if _looks_like_path(text):
        raise LLMError(f"the model folder {text} does not exist")
    return text, False


def _causal_class_names() -> set[str]:
    from transformers.models.auto import modeling_auto
    names: set[str] = set()
    for v in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([v] if isinstance(v, str) else v)
    return names


def _check_causal(tf, config, where: str) -> None:
    """An :class:`LLMError` unless ``config`` describes a causal LM (by its ``architectures``
    when it lists them, else by its model type)."""
    archs = list(getattr(config, "architectures", None) or [])
    causal = _causal_class_names()
    if archs and not any(a in causal for a in archs):
        raise LLMError(f"{where} holds a {', '.join(archs)} ({config.model_type}), not a causal "
                       "language model: rescoring needs one (e.g. OPT, Llama, Qwen, GPT-2)")
    if not archs and type(config) not in tf.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise LLMError(f"{where} holds a {type(config).__name__} ({config.model_type}), not a "
                       "causal language model: rescoring needs one (e.g. OPT, Llama, Qwen, GPT-2)")


def _unreadable(weights: Path) -> bool:
    """Whether a weights file fails the loader's own first check (a safetensors header that
    does not cover the file; a PyTorch zip archive without its directory)."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(weights), framework="pt") as f:
                f.keys()
        except Exception:
            return True
        return False
    import zipfile
    return not zipfile.is_zipfile(weights)


def _weights_error(source: str, e: Exception) -> LLMError | None:
    """An :class:`LLMError` naming the damaged weights file(s) of a model folder when loading
    failed on a truncated or corrupt one (safetensors' SafetensorError, torch's zip reader);
    None for any other error."""
    text = " ".join(str(e).split())
    name = type(e).__name__
    if name != "SafetensorError" and not (isinstance(e, RuntimeError) and "PytorchStreamReader" in text):
        return None
    folder = Path(source)
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]) if folder.is_dir() else []
    bad = [f for f in files if _unreadable(f)] or files
    what = (f"its weights file {', '.join(str(f) for f in bad)} is" if len(bad) == 1 else
            f"its weights files {', '.join(str(f) for f in bad)} are" if bad else "its weights are")
    return LLMError(f"the model {source}: {what} truncated or corrupt ({name}: {text[:200]}); copy or "
                    "download the model again")


#: the dtype a scorer takes by default, by device type (float32 elsewhere)
DEFAULT_DTYPES = {"cuda": "bfloat16", "cpu": "float32"}


def _torch_dtype(dtype, device):
    import torch
    if dtype is None:
        return getattr(torch, DEFAULT_DTYPES.get(device.type, "float32"))
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise LLMError(f"unknown LLM dtype {dtype!r}; want one of bfloat16, float16, float32")
    return getattr(torch, name)


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or int(batch_size) < 1:
        raise LLMError(f"the LLM batch size must be an integer >= 1, got {batch_size}")
    return int(batch_size)


class LLMScorer:
    """Log-probabilities of sentences under a causal LM (see the module docstring).

    Args:
        model: a local folder (what ``save_pretrained`` writes, or a downloaded hub snapshot)
            or, on a machine with network, a hub id such as ``facebook/opt-6.7b``.
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA when available).
        dtype: the model's dtype (default bfloat16 on CUDA, float32 on the CPU).
        batch_size: texts per forward pass (sorted by length first).

    ``self.stats`` accumulates ``texts``, ``tokens`` (scored, BOS excluded) and ``seconds``.
    """

    def __init__(self, model: str | os.PathLike, device=None, dtype=None, batch_size: int = 100):
        tf = _transformers()
        import torch
        _check_batch_size(batch_size)
        device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        dtype = _torch_dtype(dtype, device)
        source, is_folder = resolve_model(model)
        # a folder or a cached hub id loads without network; any other hub id is downloaded
        local = True if is_folder else self._hub_cached(tf, source)
        tokenizer, lm = self._load(tf, source, device, dtype, local)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if bos is None:
            raise LLMError(f"the tokenizer of {source} has neither a bos nor an eos token: "
                           "nothing to condition the first word on")
        self._setup(lm, tokenizer, bos, batch_size, source)

    def _setup(self, lm, tokenizer, bos_id: int, batch_size: int, source: str) -> None:
        self.model, self.tokenizer, self.source = lm, tokenizer, source
        self.device = next(lm.parameters()).device
        self.dtype = next(lm.parameters()).dtype
        self.batch_size = _check_batch_size(batch_size)
        self.bos_id = int(bos_id)
        self.pad_id = self.bos_id  # any id inside the vocabulary: padded positions are masked
        self.stats = {"texts": 0, "tokens": 0, "seconds": 0.0}

    @classmethod
    def wrap(cls, model, tokenizer=None, *, bos_id: int | None = None, batch_size: int = 100,
             source: str = "in-memory model") -> "LLMScorer":
        """A scorer around a causal LM already in memory (e.g. built from a configuration, as
        the benchmark does); without a tokenizer only :meth:`score_ids` works."""
        if bos_id is None:
            bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self = cls.__new__(cls)
        self._setup(model.eval(), tokenizer, bos_id, batch_size, source)
        return self

    @staticmethod
    def _hub_cached(tf, model_id: str) -> bool:
        """Whether the hub id is in the local cache; if not, and offline, an error that says how
        to point at a folder."""
        try:
            tf.AutoConfig.from_pretrained(model_id, local_files_only=True)
            return True
        except (OSError, ValueError):
            pass
        if not _hub_reachable():
            raise LLMError(f"cannot download {model_id}: no network; download it elsewhere and pass "
                           f"the folder: --llm /path/to/folder (there is no folder {model_id} here)")
        return False

    def _load(self, tf, source: str, device, dtype, local: bool):
        bars = tf.utils.logging.is_progress_bar_enabled()
        tf.utils.logging.disable_progress_bar()  # no "Loading weights" bars in a command's output
        try:
            return self._load_quiet(tf, source, device, dtype, local)
        finally:
            if bars:
                tf.utils.logging.enable_progress_bar()

    def _load_quiet(self, tf, source: str, device, dtype, local: bool):
        where = f"the model {source}"
        try:
            config = tf.AutoConfig.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError, KeyError) as e:
            raise LLMError(f"{where}: cannot read its configuration ({' '.join(str(e).split())})") from None
        _check_causal(tf, config, where)
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise LLMError(f"{where}: cannot load its tokenizer ({' '.join(str(e).split())})") from None
        if len(tokenizer) < 2:
            raise LLMError(f"{where}: its tokenizer is empty (no vocabulary file was found)")
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(source, local_files_only=local,
                                                            **{dtype_kwarg(tf): dtype})
        except (OSError, ValueError) as e:
            raise LLMError(f"{where}: cannot load it as a causal LM ({' '.join(str(e).split())})") from None
        except Exception as e:
            damaged = _weights_error(source, e)
            if damaged is None:
                raise
            raise damaged from None
        return tokenizer, model.to(device).eval()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """BOS then the tokens of each text as given (no special tokens added)."""
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [[self.bos_id, *t] for t in ids]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """The natural-log probability of each text (float64, in the order given); a text
        without tokens scores 0. Identical texts are scored once."""
        index: dict[str, int] = {}
        inverse = np.array([index.setdefault(str(t), len(index)) for t in texts], dtype=np.int64)
        return self.score_ids(self.encode(list(index)), count=len(inverse))[inverse]

    def score_ids(self, ids: Sequence[Sequence[int]], *, count: int | None = None) -> np.ndarray:
        """The log-probability of tokens ``1..n-1`` of each sequence given those before it
        (token 0 is the context, e.g. BOS): float64, in the order given. Sequences are sorted by
        length and cut into batches of ``batch_size``."""
        t0 = time.perf_counter()
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.zeros(len(ids), dtype=np.float64)
        for lo in range(0, len(order), self.batch_size):
            part = order[lo:lo + self.batch_size]
            out[part] = self._score_batch([ids[i] for i in part])
        self.stats["texts"] += len(ids) if count is None else count
        self.stats["tokens"] += sum(max(len(i) - 1, 0) for i in ids)
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    def _score_batch(self, ids: list[list[int]]) -> np.ndarray:
        """Sum of log p(token_t | tokens before t) over t >= 1 of every (BOS-led) sequence."""
        import torch
        width = max(len(s) for s in ids)
        if width < 2:  # nothing to score (empty texts)
            return np.zeros(len(ids))
        x = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, s in enumerate(ids):
            x[i, :len(s)] = torch.as_tensor(s)
            mask[i, :len(s)] = 1
        x, mask = x.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=x, attention_mask=mask, use_cache=False).logits
            logits = logits[:, :-1].float()                 # position t predicts token t + 1
            target = x[:, 1:]
            picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            lp = picked - torch.logsumexp(logits, dim=-1)
            lp = torch.where(mask[:, 1:].bool(), lp, torch.zeros_like(lp))
        return lp.double().sum(dim=1).cpu().numpy()

    def __repr__(self) -> str:
        return (f"LLMScorer({self.source!r}, device={self.device}, dtype={self.dtype}, "
                f"batch_size={self.batch_size})")
