"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 0.0, rtol: float = 0.0,
                 what: str = "tensor", *, check_dtype: bool = False) -> None:
    """``|actual - expected| <= atol + rtol * |expected|`` elementwise, compared in float64 on the
    CPU; on failure it says how many elements differ, the worst one and where, and the first few."""
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if check_dtype:
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    err = (a - e).abs()
    bad = ~(err <= atol + rtol * e.abs())  # NaN counts as a difference
    if bool(bad.any()):
        worst = int(torch.nan_to_num(err, nan=float("inf")).flatten().argmax()) if err.numel() else 0
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), err.shape)) if err.dim() else ()
        idx = bad.nonzero()[:5].tolist()
        first = ", ".join(f"{tuple(i)}: {a[tuple(i)].item():.9g} vs {e[tuple(i)].item():.9g}" for i in idx)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} elements differ beyond atol={atol} + "
            f"rtol={rtol}*|expected|; worst at {where}: {a.flatten()[worst].item():.9g} vs "
            f"{e.flatten()[worst].item():.9g} (max |diff| {err.max().item():.3g}); first: {first}")


def run_gpu_compile_script(script: str, what: str) -> str:
    """Run ``script`` (which compiles Triton kernels ahead of time for a GPU target with Triton's
    bundled ptxas: no GPU needed) in a fresh interpreter with TRITON_INTERPRET=0; skip when
    Triton's NVIDIA backend is missing; returns its stdout, which must say "compiled"."""
    import os
    import subprocess
    import sys

    import pytest

    try:
        from triton.backends.nvidia import compiler  # noqa: F401
    except ImportError:
        pytest.skip("Triton's NVIDIA backend is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300, cwd=root)
    assert res.returncode == 0 and "compiled" in res.stdout, (
        f"GPU compilation of {what} failed:\n{res.stdout}\n{res.stderr[-3000:]}")
    return res.stdout


# ---------------------------------------------------------------------------------------------
# tolerances of the GPU contract (one place, so that every CUDA assert uses the stated one)
# ---------------------------------------------------------------------------------------------
# Largest |z| a Philox normal can take: u1 is clamped to >= 1e-7, so r <= sqrt(-2 ln 1e-7) = 5.68.
NORMAL_MAX = 5.68


def normal_tolerance(device) -> dict:
    """atol/rtol for one Philox normal drawn by a kernel against ``fastbci.philox``.

    CPU (Triton interpreter, numpy float32 vs torch float32): measured within 1 ulp, atol 1e-6.
    CUDA: the compiled Box-Muller takes ``sqrt.approx.ftz.f32`` (<= 3 ulp, NVIDIA's bound for
    it) and libdevice ``logf`` (<= 1 ulp) / ``cosf`` and ``sinf`` (<= 2 ulp); the reference has a
    correctly rounded sqrt (0.5 ulp) and <= 1 ulp log / cos / sin. With u = 2**-23 the relative
    difference of ``z = sqrt(-2 log u1) * cos(2 pi u2)`` is at most
      (1 + 1) u / 2   (the two logs, halved by the sqrt)
      + (3 + 0.5) u   (the two square roots)
      + (2 + 1) u     (the two cos / sin)
      + (0.5 + 0.5) u (the two final products)
      = 8.5 u = 1.013e-6 * |z|,
    and atol 1e-6 + rtol 1e-6 * |z| covers that for every |z| <= 77, i.e. for every normal
    (|z| <= NORMAL_MAX).
    """
    if torch.device(device).type == "cuda":
        return dict(atol=1e-6, rtol=1e-6)
    return dict(atol=1e-6, rtol=0.0)


def normal_sum_tolerance(device, weights) -> dict:
    """atol/rtol for ``sum_i w_i z_i`` of Philox normals (e.g. noise + 0.5 * offset): each term
    within :func:`normal_tolerance` at |z| <= NORMAL_MAX, plus the final rounding of both sides
    (2 * 2**-23 * the largest possible |sum|)."""
    tol = normal_tolerance(device)
    w = sum(abs(float(v)) for v in weights)
    return dict(atol=w * (tol["atol"] + tol["rtol"] * NORMAL_MAX) + 2 * 2**-23 * w * NORMAL_MAX,
                rtol=0.0)


def augment_tolerance(device, taps: int = 9) -> dict:
    """atol/rtol of the fused float32 augment + smoothing output against the reference.

    CPU: the design contract, 1e-5 (measured: a few 1e-7). CUDA: a worst-case bound for inputs
    |x| <= 6 (standard normal test data), white noise std 1 and offset std 0.2, K taps summing to
    1 (so each term's bound carries through the weighted average), S = max |x + noise + offset|
    <= 6 + 5.68 + 1.14 = 12.8:
      the noise and the offset, normal_sum_tolerance(weights 1, 0.2);
      the tf32x3 banded dot (three TF32 products, the operands split to ~2**-22 relative, the
          small x small product dropped): 3 * 2**-22 * S = 9.2e-6;
      float32 accumulation, ~K + 1 roundings a side: 2 * (K + 1) * 2**-24 * S (1.5e-5 for the
          official K = 9).
    Official taps: 3.5e-5 in all (a wrong element, tap or cut is off by 1e-2 or more).
    """
    if torch.device(device).type != "cuda":
        return dict(atol=1e-5, rtol=0.0)
    s = 6.0 + 1.2 * NORMAL_MAX
    noise = normal_sum_tolerance(device, (1.0, 0.2))["atol"]
    return dict(atol=noise + 3 * 2**-22 * s + 2 * (taps + 1) * 2**-24 * s, rtol=0.0)


# ---------------------------------------------------------------------------------------------
# what Triton's JIT would do on a GPU, computed without one
# ---------------------------------------------------------------------------------------------
JIT_SPEC_PRELUDE = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

sys.path.insert(0, "tests")  # run_gpu_compile_script runs in the repository root
BACKEND = make_backend(GPUTarget("cuda", 90, 32))


def jit_spec(fn, *args, **kwargs):
    """The specialisation key Triton's launcher computes for these arguments (what decides a
    recompile): [(type, attribute)] per parameter."""
    from triton.runtime.jit import create_function_from_signature
    binder = create_function_from_signature(fn.signature, fn.params, BACKEND)
    return [tuple(s) if isinstance(s, (tuple, list)) else s for s in binder(*args, **kwargs)[1]]


def compile_like_jit(fn, spec, arch=90, num_warps=4):
    """PTX of fn compiled for sm_<arch> with the signature, constexprs and divisibility
    attributes of a jit_spec, i.e. the kernel the launcher would build."""
    names = fn.arg_names
    sig = {n: s[0] for n, s in zip(names, spec)}
    consts = {n: s[1] for n, s in zip(names, spec) if s[0] == "constexpr"}
    attrs = {(i,): BACKEND.parse_attr(s[1]) for i, s in enumerate(spec)
             if s[0] != "constexpr" and isinstance(s[1], str)}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": 1}).asm["ptx"]
'''


def non_specialised(kernel) -> set[str]:
    """The parameter names a Triton kernel object does not specialise on (``do_not_specialize``),
    read from a JITFunction (``params[i].do_not_specialize``, or its ``do_not_specialize`` list)
    or from the interpreter's InterpretedFunction (the decorator's keyword arguments)."""
    import inspect

    fn = getattr(kernel, "fn", kernel)
    if hasattr(kernel, "params") and all(hasattr(p, "do_not_specialize") for p in kernel.params):
        return {p.name for p in kernel.params if p.do_not_specialize}
    names = list(inspect.signature(fn).parameters)
    listed = getattr(kernel, "do_not_specialize", None)
    if listed is None and isinstance(getattr(kernel, "kwargs", None), dict):
        listed = kernel.kwargs.get("do_not_specialize")
    if listed is None:
        raise AssertionError(f"cannot read the specialisation list of {kernel!r} "
                             f"(a {type(kernel).__name__}): a new Triton version?")
    return {names[i] if isinstance(i, int) else i for i in listed}


def shift_logits(trainer, delta_class, amount=50.0, when=None, replace=False):
    """Wrap the model's forward so that class ``delta_class`` dominates the outputs (with
    ``replace``, the outputs become a constant: same loss and PER at every validation)."""
    orig = trainer.model.forward

    def forward(*a, **k):
        logits = orig(*a, **k)
        if when is None or when(k.get("step", 0), trainer.model.training):
            bump = torch.zeros(logits.shape[-1])
            bump[delta_class] = amount
            logits = (logits * 0 if replace else logits) + bump
        return logits

    trainer.model.forward = forward


# ---------------------------------------------------------------------------------------------
# tiny training runs (the fixtures small_release / tiny_checkpoint are in conftest.py)
# ---------------------------------------------------------------------------------------------
#: a model and a run small enough for a test: one 8-unit GRU layer, batches of 4, the reference ops
TINY_RUN = ("model.n_units=8", "model.n_layers=1", "model.rnn_dropout=0.0", "dataset.batch_size=4",
            "dataset.days_per_batch=2", "batches_per_train_log=1", "lr_warmup_steps=1",
            "lr_warmup_steps_day=1", "fastbci.impl=reference", "fastbci.device=cpu",
            "fastbci.progress=false", "fastbci.plot=false")


def run_config(release, out, base=TINY_RUN, *extra) -> dict:
    """The configuration of ``release``'s synth_config.yaml for a run into ``out``: the
    ``base`` overrides of a test module (default :data:`TINY_RUN`), then ``extra``."""
    from pathlib import Path

    from fastbci.config import load_config
    return load_config(Path(release) / "synth_config.yaml",
                       [f"output_dir={out}", f"checkpoint_dir={out}/checkpoint", *base, *extra])


def make_cfg(release, out, *extra) -> dict:
    """A tiny run (:data:`TINY_RUN`) of ``release`` into ``out``, with ``extra`` overrides."""
    return run_config(release, out, TINY_RUN, *extra)
