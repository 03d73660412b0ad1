"""The transform step of the data path as one op: gather + pad, white noise, constant offset,
random cut and Gaussian smoothing along time (docs/recipe.md section 3), as
``fastbci.reference.transform_ref``; ``augment_smooth`` takes a padded batch,
``augment_smooth_gather`` the TrialStore's packed features (no padded copy). The values come as
one :class:`~fastbci.ops.augmentation.Augmentation`. ``impl="fused"`` is one Triton kernel (each
element read and written once, the noise made in registers), ``"reference"`` pure PyTorch;
the choice follows :func:`fastbci.ops.dispatch.resolve`; implementations and tolerances:
docs/internals.md, "The fused ops".
"""
from __future__ import annotations

import torch

from fastbci import philox
from fastbci.kernels.launch import int64_bits
from fastbci.ops._triton import load_kernels
from fastbci.ops.augmentation import Augmentation
from fastbci.ops.dispatch import check_impl, resolve
from fastbci.ops.gather import gather_padded
from fastbci.reference import augment_ref, smooth_ref, smoothing_taps, transform_ref

__all__ = ["augment_smooth", "augment_smooth_gather", "cached_smoothing_taps", "Augmentation",
           "MODES", "PADDINGS", "RNGS"]

MODES = ("train", "val", "eval", "test")
PADDINGS = ("same", "valid")
RNGS = ("philox", "torch")
_OUT_DTYPES = (torch.float32, torch.bfloat16)
_INDEX_SPACE = 1 << 32  # Philox element indices are 32-bit


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
def _check_common(where: str, aug, mode: str, padding: str, out_dtype, impl: str, rng: str) -> None:
    if not isinstance(aug, Augmentation):
        raise TypeError(f"{where}: aug must be a fastbci.ops.Augmentation (e.g. "
                        f"Augmentation.from_transforms(cfg['dataset']['data_transforms'])), got "
                        f"{type(aug).__name__}")
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got {mode!r}")
    if padding not in PADDINGS:
        raise ValueError(f"{where}: padding must be one of {PADDINGS}, got {padding!r}")
    if out_dtype is not None and out_dtype not in _OUT_DTYPES:
        raise ValueError(f"{where}: out_dtype must be None (float32), torch.float32 or "
                         f"torch.bfloat16, got {out_dtype!r}")
    check_impl(impl, where)
    if rng not in RNGS:
        raise ValueError(f"{where}: rng must be one of {RNGS}, got {rng!r}")
    if rng == "torch" and impl == "fused":
        raise ValueError(f"{where}: rng='torch' (torch's global generator in the official draw "
                         "order) runs only in the reference implementation: use impl='auto' or "
                         "'reference', or rng='philox' for the fused kernel")


def _check_seed_step(seed, step, where: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < (1 << 64):
        raise ValueError(f"{where}: seed must be an integer in [0, 2**64), got {seed!r}")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= philox.MAX_STEP:
        raise ValueError(f"{where}: step must be an integer in [0, {philox.MAX_STEP}], "
                         f"got {step!r}")


def _implementation(where: str, x: torch.Tensor, impl: str, rng: str) -> str:
    """The dispatch rule; rng='torch' is the reference's alone (the official draw order)."""
    if rng == "torch":
        return "reference"
    chosen = resolve("augment", x, impl)
    if chosen == "fused" and x.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{where}: impl='fused' is not differentiable and its input requires "
                         f"grad; use impl='reference' (or detach it)")
    return chosen


_TAPS_CACHE: dict[tuple, torch.Tensor] = {}
_TAPS_CACHE_MAX = 32


def cached_smoothing_taps(aug: Augmentation, device=None) -> torch.Tensor:
    """The official smoothing kernel of ``aug`` on ``device`` (CPU when None), built and copied
    once per ``(smooth_kernel_std, smooth_kernel_size, device)``: a training step pays no
    (synchronising, pageable) host-to-device copy for it. The tensor is shared: read-only."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    key = (aug.smooth_kernel_std, aug.smooth_kernel_size, dev)
    hit = _TAPS_CACHE.get(key)
    if hit is None:
        if len(_TAPS_CACHE) >= _TAPS_CACHE_MAX:
            _TAPS_CACHE.clear()
        hit = _TAPS_CACHE[key] = smoothing_taps(aug.transforms(), None, "Augmentation").to(dev)
    return hit


def _kernels():
    """The Triton launcher, imported lazily (the reference path works without Triton)."""
    return load_kernels("augment", "fastbci.ops.augment")


_TAP_VALUES: dict[tuple, tuple[float, ...]] = {}


@torch.compiler.assume_constant_result
def _tap_values(std: float, size: int) -> tuple[float, ...]:
    """The smoothing taps for (smooth_kernel_std, smooth_kernel_size) as Python floats, computed
    once on the host: a plain constant for torch.compile (no numpy or cache tracing)."""
    key = (std, size)
    hit = _TAP_VALUES.get(key)
    if hit is None:
        taps = smoothing_taps({"smooth_kernel_std": std, "smooth_kernel_size": size}, None,
                              "Augmentation")
        hit = _TAP_VALUES[key] = tuple(float(v) for v in taps.numpy())
    return hit


_DEVICE_TAPS: dict[tuple, torch.Tensor] = {}


def _device_taps(taps: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The float32 taps on ``device``, uploaded once per (taps, device)."""
    key = (taps, device)
    hit = _DEVICE_TAPS.get(key)
    if hit is None:
        if len(_DEVICE_TAPS) >= _TAPS_CACHE_MAX:
            _DEVICE_TAPS.clear()
        hit = _DEVICE_TAPS[key] = torch.tensor(taps, dtype=torch.float32, device=device)
    return hit


# The kernel launch as a custom op: one opaque node for torch.compile (Dynamo does not trace the
# launcher or the interpreted kernel), with a fake implementation for shapes. Not differentiable.
@torch.library.custom_op("fastbci::augment_smooth", mutates_args=())
def _augment_op(src: torch.Tensor, rows: torch.Tensor | None, offsets: torch.Tensor | None,
                lengths: torch.Tensor | None, taps: list[float], n_trials: int, t_out: int,
                t_max: int, cut: int, padding: str, seed: int, noise_base: int, offset_base: int,
                noise_std: float, offset_std: float, out_dtype: torch.dtype) -> torch.Tensor:
    """The fused kernel into a new contiguous (n_trials, t_out, C) tensor (``taps`` empty: no
    smoothing; ``rows`` None: ``src`` is the padded batch, else the packed store)."""
    out = torch.empty(n_trials, t_out, src.shape[-1], dtype=out_dtype, device=src.device)
    return _kernels().augment_smooth_launch(
        src, out, _device_taps(tuple(taps), src.device) if taps else None, t_max=t_max, cut=cut,
        padding=padding, seed=seed, noise_base=noise_base, offset_base=offset_base,
        noise_std=noise_std, offset_std=offset_std, rows=rows, offsets=offsets, lengths=lengths)


@_augment_op.register_fake
def _(src, rows, offsets, lengths, taps, n_trials, t_out, t_max, cut, padding, seed, noise_base,
      offset_base, noise_std, offset_std, out_dtype):
    return src.new_empty((n_trials, t_out, src.shape[-1]), dtype=out_dtype)


class _Plan:
    """What the kernel must do for one call, decided on the host (no device sync)."""

    def __init__(self, where, aug: Augmentation, mode, seed, step, padding, t_max):
        self.taps = _tap_values(aug.smooth_kernel_std, aug.smooth_kernel_size) if aug.smooth else None
        self.noise_std = self.offset_std = 0.0
        self.cut = 0
        self.via_reference = False  # static gain / random walk: augment with the reference ops
        if mode == "train":
            self.noise_std, self.offset_std = aug.white_noise_std, aug.constant_offset_std
            self.via_reference = aug.static_gain_std > 0 or aug.random_walk_std > 0
            self.cut = philox.random_cut(aug.random_cut, seed, step)
            if self.cut >= t_max > 0:
                raise ValueError(
                    f"{where}: the random cut ({self.cut}, drawn from [0, random_cut="
                    f"{aug.random_cut})) removes all T={t_max} time steps of the batch; lower "
                    f"random_cut below the shortest padded batch")
        self.t_cut = max(t_max - self.cut, 0)
        k = len(self.taps) if aug.smooth else 1
        if aug.smooth and padding == "valid":
            if self.t_cut < k and t_max > 0:
                raise ValueError(f"{where}: 'valid' smoothing needs at least K={k} time steps "
                                 f"after the cut, the batch has {self.t_cut}")
            self.t_out = self.t_cut - k + 1
        else:
            self.t_out = self.t_cut
        self.valid_trim = k - 1 if (aug.smooth and padding == "valid") else 0

    def lengths_out(self, n: torch.Tensor) -> torch.Tensor:
        """Lengths after the cut (and, for 'valid', the number of full windows), >= 0."""
        n = n - self.cut
        if self.valid_trim:
            n = torch.clamp(n - self.valid_trim, min=0)
        return n


def _launch(where, src, plan: _Plan, *, B, C, t_max, padding, out_dtype, seed, step, gather=None):
    if plan.noise_std > 0 and B * t_max * C > _INDEX_SPACE:
        raise ValueError(f"{where}: the padded batch has B*T_max*C = {B * t_max * C} elements, "
                         f"more than the 2**32 Philox element indices of the NOISE stream")
    rows, offsets, lengths = gather if gather is not None else (None, None, None)
    return _augment_op(src, rows, offsets, lengths, list(plan.taps or ()), B, max(plan.t_out, 0),
                       t_max, plan.cut, padding, int64_bits(seed),
                       int64_bits(philox.triton_offset_base(step, philox.NOISE)),
                       int64_bits(philox.triton_offset_base(step, philox.OFFSET)),
                       plan.noise_std, plan.offset_std, out_dtype)


def _fused_padded(where, x, n_time_steps, aug, mode, seed, step, padding, out_dtype):
    B, T, C = x.shape
    plan = _Plan(where, aug, mode, seed, step, padding, T)
    if plan.via_reference:
        # static gain / random walk are not fused: augment with the reference ops (same Philox
        # streams), then let the kernel smooth the cut batch
        xa, _, _ = augment_ref(x, n_time_steps, aug.transforms(), rng="philox", seed=seed,
                               step=step)
        smooth_plan = _Plan(where, aug, "val", seed, step, padding, xa.shape[1])
        out = _launch(where, xa, smooth_plan, B=B, C=C, t_max=xa.shape[1], padding=padding,
                      out_dtype=out_dtype, seed=seed, step=step)
        return out, plan.lengths_out(n_time_steps)
    out = _launch(where, x, plan, B=B, C=C, t_max=T, padding=padding, out_dtype=out_dtype,
                  seed=seed, step=step)
    return out, plan.lengths_out(n_time_steps)


def _reference_padded(x, n_time_steps, aug, mode, rng, seed, step, padding, out_dtype):
    taps = cached_smoothing_taps(aug, x.device) if aug.smooth else None
    if padding == "same":
        out, n = transform_ref(x, n_time_steps, aug.transforms(), mode, rng=rng, seed=seed,
                               step=step, taps=taps)
        return out.to(out_dtype), n
    if mode == "train":
        out, n, _ = augment_ref(x, n_time_steps, aug.transforms(), rng=rng, seed=seed, step=step)
    else:
        out, n = x.to(torch.float32), n_time_steps
    if taps is not None:
        out = smooth_ref(out, taps, "valid")
        n = torch.clamp(n - (taps.numel() - 1), min=0)
    return out.to(out_dtype), n


# ---------------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------------
def augment_smooth(x: torch.Tensor, n_time_steps: torch.Tensor, aug: Augmentation, *,
                   mode: str = "train", seed: int = 0, step: int = 0, padding: str = "same",
                   out_dtype: torch.dtype | None = None, rng: str = "philox", impl: str = "auto"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (``mode="train"``) and smooth a zero-padded batch, as ``transform_ref``.

    Args:
        x: (B, T_max, C) zero-padded features (float32, bfloat16 or float16), any strides.
        n_time_steps: (B,) true lengths (any dtype, returned minus the cut).
        aug: the :class:`Augmentation` (noise, offset, cut, smoothing values).
        mode: ``"train"`` (augment, then smooth if ``aug.smooth``) or ``"val"``/``"eval"``/
            ``"test"`` (smooth only).
        seed, step: the Philox key (``dataset.seed``) and the 0-based training batch index.
        padding: ``"same"`` (training/validation) or ``"valid"`` (offline evaluation).
        out_dtype: ``None``/``torch.float32`` or ``torch.bfloat16``.
        rng: ``"philox"`` (counter-based streams, what the kernel draws) or ``"torch"`` (torch's
            global generator in the official draw order: the reference implementation only).
        impl: ``"auto"``, ``"fused"`` or ``"reference"`` (:mod:`fastbci.ops.dispatch`).

    Returns:
        ``(out, n_time_steps_out)``: out (B, T_out, C) contiguous, ``T_out = T_max - cut`` for
        ``"same"`` and ``T_max - cut - K + 1`` for ``"valid"`` (K taps); ``n_time_steps_out =
        n_time_steps - cut`` (for ``"valid"`` minus ``K - 1`` more, clamped at 0: the number of
        outputs whose whole window lies inside the trial).
    """
    where = "augment_smooth"
    _check_common(where, aug, mode, padding, out_dtype, impl, rng)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        desc = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) \
            else type(x).__name__
        raise ValueError(f"{where}: x must be a floating (B, T_max, C) tensor, got {desc}")
    if not isinstance(n_time_steps, torch.Tensor) or n_time_steps.dim() != 1 \
            or n_time_steps.shape[0] != x.shape[0]:
        desc = tuple(n_time_steps.shape) if isinstance(n_time_steps, torch.Tensor) \
            else type(n_time_steps).__name__
        raise ValueError(f"{where}: n_time_steps must be a (B,) = ({x.shape[0]},) tensor, "
                         f"got {desc}")
    _check_seed_step(seed, step, where)
    out_dtype = out_dtype or torch.float32
    if _implementation(where, x, impl, rng) == "reference":
        return _reference_padded(x, n_time_steps, aug, mode, rng, seed, step, padding, out_dtype)
    return _fused_padded(where, x, n_time_steps, aug, mode, seed, step, padding, out_dtype)


def _check_store(where, features, offsets, lengths, rows):
    if not isinstance(features, torch.Tensor) or features.dim() != 2 \
            or not features.is_floating_point():
        desc = f"shape {tuple(features.shape)} {features.dtype}" \
            if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{where}: features must be the packed floating (N_total, C) tensor, "
                         f"got {desc}")
    for name, t in (("offsets", offsets), ("lengths", lengths), ("rows", rows)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() \
                or t.is_complex() or t.dtype == torch.bool:
            desc = f"shape {tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) \
                else type(t).__name__
            raise ValueError(f"{where}: {name} must be a 1-D integer tensor, got {desc}")
        if t.device != features.device and t.device.type != "cpu":
            raise ValueError(f"{where}: {name} is on {t.device} but features on "
                             f"{features.device}; keep them together (or on the CPU)")
    if offsets.shape[0] != lengths.shape[0] + 1:
        raise ValueError(f"{where}: offsets must have n + 1 = {lengths.shape[0] + 1} entries for "
                         f"the {lengths.shape[0]} trials of lengths, got {offsets.shape[0]}")


def _batch_t_max(where, lengths, rows, t_max):
    """T_max of the batch (host int), syncing only when it must be computed from device data."""
    n = lengths.shape[0]
    if t_max is not None:
        if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 0:
            raise ValueError(f"{where}: t_max must be an integer >= 0 or None, got {t_max!r}")
        if torch.compiler.is_compiling():
            # no host read inside a graph: checked by the graph itself (a device assertion)
            torch._assert_async(((rows >= 0) & (rows < n)).all(),
                                f"{where}: rows must index the {n} trials of the store")
        elif rows.device.type == "cpu" and rows.numel():
            # host rows: check them with numpy (host data, never a device read)
            r = rows.detach().numpy()
            lo, hi = int(r.min()), int(r.max())
            if lo < 0 or hi >= n:
                raise ValueError(f"{where}: rows must index the {n} trials of the store, got "
                                 f"values in [{lo}, {hi}]")
        return t_max
    if rows.numel() == 0:
        return 0
    if rows.device.type == "cpu":
        lens_host = lengths.cpu() if lengths.device.type == "cpu" else None
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{where}: rows must index the {n} trials of the store, got values "
                             f"in [{lo}, {hi}]")
        if lens_host is not None:
            return int(lens_host[rows.long()].max())
    # one device sync for the three numbers
    r = rows.to(lengths.device).long()
    lo, hi = (int(v) for v in torch.stack([r.min(), r.max()]).tolist())
    if lo < 0 or hi >= n:
        raise ValueError(f"{where}: rows must index the {n} trials of the store, got values in "
                         f"[{lo}, {hi}]")
    return int(lengths[r].max())


def augment_smooth_gather(features: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                          rows: torch.Tensor, aug: Augmentation, *, mode: str = "train",
                          seed: int = 0, step: int = 0, padding: str = "same",
                          out_dtype: torch.dtype | None = None, rng: str = "philox",
                          impl: str = "auto", t_max: int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`augment_smooth` reading the trials straight from the packed TrialStore tensor.

    Args:
        features: (N_total, C) packed features (float32, bfloat16 or float16), any strides.
        offsets: (n + 1,) first packed row of each trial (and the end).
        lengths: (n,) time steps of each trial.
        rows: (B,) trial ids of the batch, in batch order.
        t_max: the padded length T_max. Default ``max(lengths[rows])``, computed on the host
            when ``rows`` (and ``lengths``) are CPU tensors, else with one device sync: pass it
            from the host to avoid that. Trials longer than ``t_max`` are truncated to it.
        Other arguments as :func:`augment_smooth`. ``offsets``, ``lengths`` and ``rows`` may live
        on ``features``' device or on the CPU (then they are copied over).

    Returns:
        ``(out, n_time_steps_out)`` exactly as ``augment_smooth`` of the zero-padded batch
        ``(B, T_max, C)`` with ``n_time_steps = min(lengths[rows], T_max)``; the lengths are on
        ``features``' device with ``lengths``' dtype.
    """
    where = "augment_smooth_gather"
    _check_common(where, aug, mode, padding, out_dtype, impl, rng)
    _check_store(where, features, offsets, lengths, rows)
    _check_seed_step(seed, step, where)
    out_dtype = out_dtype or torch.float32
    t_max = _batch_t_max(where, lengths, rows, t_max)
    dev = features.device
    B, C = rows.shape[0], features.shape[1]
    chosen = _implementation(where, features, impl, rng)
    rows_d = rows.to(dev, non_blocking=True)
    lengths_d = lengths.to(dev, non_blocking=True)
    n = torch.clamp(lengths_d[rows_d.long()], max=t_max)
    plan = None if chosen == "reference" else _Plan(where, aug, mode, seed, step, padding, t_max)
    if plan is None or plan.via_reference:
        # longer trials truncated to t_max: the gather sees the clamped lengths
        x = gather_padded(features, offsets, torch.clamp(lengths, max=t_max), rows, t_max)
        if plan is None:
            return _reference_padded(x, n, aug, mode, rng, seed, step, padding, out_dtype)
        return _fused_padded(where, x, n, aug, mode, seed, step, padding, out_dtype)
    out = _launch(where, features, plan, B=B, C=C, t_max=t_max, padding=padding,
                  out_dtype=out_dtype, seed=seed, step=step,
                  gather=(rows_d, offsets.to(dev, non_blocking=True), lengths_d))
    return out, plan.lengths_out(n)
