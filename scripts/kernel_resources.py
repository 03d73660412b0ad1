#!/usr/bin/env python3
"""Registers, spills, shared memory and sm_90 occupancy of fastbci's hot-path GPU kernels, without
a GPU.

    python scripts/kernel_resources.py [--json PATH] [--no-cuda]   # compile, print, check
    python scripts/kernel_resources.py --show PATH                  # print a saved report

Triton kernels: each launcher of the training hot path (``fastbci.kernels.augment`` and
``fastbci.kernels.patchify``) is called on CPU tensors of the official shapes with its kernel
replaced by a recorder, so the arguments, ``num_warps`` and ``num_stages`` are those the launcher
really passes; the kernel is then compiled for sm_90 with Triton's own binder (the JIT's
specialisation) and ``triton.compile``, i.e. with the ptxas and the flags the JIT would use, and
that ptxas' ``-v`` report is read (registers, spills, stack) beside Triton's dynamic shared memory.
CUDA kernels: csrc/cuda/day_projection_kernels.cu is compiled with nvcc for sm_90 with the flags
of the extension build (setup.py's and torch's) and ``-Xptxas -v``; every kernel is recorded.

Occupancy on sm_90 is computed as cuda_occupancy.h computes it (see :func:`occupancy`). A kernel
fails the check when it spills or when its occupancy is below :data:`OCCUPANCY_FLOOR`
(docs/benchmarks.md, "The GPU-version mirror", says why that floor). Exit status: 0 when every
kernel compiled and passed, 1 otherwise, 2 on bad usage. Needs torch and triton with its NVIDIA
backend (and nvcc for the CUDA kernels, skipped with a note when absent); it sets
TRITON_INTERPRET=0 for itself before importing fastbci's kernels.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CU_SOURCE = ROOT / "csrc" / "cuda" / "day_projection_kernels.cu"
# the nvcc flags of setup.py's CUDAExtension (tests/test_kernel_resources.py checks they agree)
SETUP_NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]

# sm_90 (H100 / H200), the figures cuda_occupancy.h uses for compute capability 9.0
SM90 = {
    "regs_per_sm": 65536, "regs_per_block": 65536, "max_regs_per_thread": 255,
    "reg_alloc_unit": 256, "sub_partitions": 4, "warp_size": 32, "max_warps_per_sm": 64,
    "max_blocks_per_sm": 32, "smem_per_sm": 233472, "smem_per_block_optin": 232448,
    "smem_reserved_per_block": 1024, "smem_alloc_unit": 128,
}
# The least occupancy (active warps / 64) a hot-path kernel may have on sm_90: 16 warps, e.g. four
# 4-warp blocks; the per-element Philox path (C % 4 != 0, not the official shape) may have 8.
# Why: docs/benchmarks.md, "The GPU-version mirror".
OCCUPANCY_FLOOR = 0.25
PER_ELEMENT_FLOOR = 0.125

# The official shapes: batches of 64 trials, T_max near 800, 512 features (configs/official.yaml)
BATCH, T_MAX, CHANNELS = 64, 800, 512
# the Triton kernel cases (all on the training or validation path): name -> (what, floor)
TRITON_CASES = {
    "augment_train_aligned": ("augment + smoothing, training: gather from the store, noise and "
                              "offset, 9 taps, bf16 out; C = 512 (aligned Philox path)",
                              OCCUPANCY_FLOOR),
    "augment_train_per_element": ("the same with C = 510 (C % 4 != 0: per-element Philox path)",
                                  PER_ELEMENT_FLOOR),
    "augment_train_aligned_padded": ("the training launch from a padded batch (a store on the "
                                     "host), C = 512", OCCUPANCY_FLOOR),
    "augment_train_per_element_padded": ("the same with C = 510", PER_ELEMENT_FLOOR),
    "augment_validation": ("smoothing only (validation: no noise, no cut), gather, bf16 out, "
                           "C = 512", OCCUPANCY_FLOOR),
    "patchify_forward": ("patchify windows 14 / 4, bf16 (64, 800, 512) -> (64, 197, 7168)",
                         OCCUPANCY_FLOOR),
    "patchify_backward": ("patchify fold (the backward), bf16 (64, 197, 7168) -> (64, 800, 512)",
                          OCCUPANCY_FLOOR),
    "patchify_forward_fp32": ("patchify windows, float32 (use_amp: false)", OCCUPANCY_FLOOR),
    "patchify_backward_fp32": ("patchify fold, float32 (use_amp: false)", OCCUPANCY_FLOOR),
}
# the CUDA kernels of the day projection, by demangled name (float and bf16 instances)
CUDA_KERNELS = [f"{k}<{t}>" for k in ("forward_kernel", "backward_dz_kernel",
                                      "backward_dx_kernel", "backward_dw_kernel")
                for t in ("float", "__nv_bfloat16")]


def _round_up(v: int, unit: int) -> int:
    return -(-v // unit) * unit


def occupancy(registers: int, threads: int, shared_bytes: int, sm: dict = SM90) -> dict:
    """Blocks and warps per SM a kernel can keep resident, as cuda_occupancy.h computes them:

    * registers: ``r = roundup(registers * 32, 256)`` per warp; each of the 4 sub-partitions
      holds ``(65536 / 4) // r`` warps, so ``((16384 // r) * 4) // warps_per_block`` blocks
      (none when ``registers > 255`` or a block needs more than 65,536 registers);
    * shared memory: ``s = roundup(shared + 1024 reserved, 128)`` per block, ``233472 // s``
      blocks (228 KB per SM; none above the 227 KB a block may opt in to);
    * warps: ``64 // warps_per_block``; blocks: 32.

    Occupancy is ``min(...) * warps_per_block / 64``."""
    warps = -(-threads // sm["warp_size"])
    per_warp = _round_up(registers * sm["warp_size"], sm["reg_alloc_unit"])
    too_many = (registers > sm["max_regs_per_thread"]
                or per_warp * _round_up(warps, sm["sub_partitions"]) > sm["regs_per_block"])
    if too_many:
        by_regs = 0
    elif per_warp == 0:
        by_regs = sm["max_blocks_per_sm"]
    else:
        per_sub = (sm["regs_per_sm"] // sm["sub_partitions"]) // per_warp
        by_regs = per_sub * sm["sub_partitions"] // warps
    smem = _round_up(shared_bytes + sm["smem_reserved_per_block"], sm["smem_alloc_unit"])
    by_smem = 0 if shared_bytes > sm["smem_per_block_optin"] else sm["smem_per_sm"] // smem
    limits = {"registers": by_regs, "shared_memory": by_smem,
              "warps": sm["max_warps_per_sm"] // warps, "blocks": sm["max_blocks_per_sm"]}
    blocks = min(limits.values())
    return {"warps_per_block": warps, "blocks_per_sm": blocks, "warps_per_sm": blocks * warps,
            "occupancy": blocks * warps / sm["max_warps_per_sm"],
            "limited_by": sorted(k for k, v in limits.items() if v == blocks),
            "blocks_by": limits}


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict[str, dict]:
    """Per entry function of a ``ptxas -v`` report: registers, spill stores / loads (bytes),
    stack frame (bytes), static shared memory (bytes) and the target."""
    out: dict[str, dict] = {}
    cur = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            cur = out.setdefault(m[1], {"target": m[2], "registers": None, "spill_stores": 0,
                                        "spill_loads": 0, "stack_frame": 0, "static_smem": 0})
        elif cur is not None and (m := _PROPS.search(line)):
            cur.update(stack_frame=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif cur is not None and (m := _USED.search(line)):
            cur["registers"] = int(m[1])
            if s := _SMEM.search(line):
                cur["static_smem"] = int(s[1])
    return out


def check(entry: dict) -> list[str]:
    """What is wrong with one report entry: a compile error, a spill, an occupancy below its
    floor (``entry["floor"]``)."""
    if entry.get("error"):
        return [f"did not compile: {entry['error']}"]
    bad = []
    if entry["spill_stores"] or entry["spill_loads"]:
        bad.append(f"spills {entry['spill_stores']} bytes (stores) / {entry['spill_loads']} "
                   f"bytes (loads) at {entry['registers']} registers")
    occ, floor = entry["occupancy"], entry["floor"]
    if occ["occupancy"] < floor:
        bad.append(f"occupancy {occ['occupancy']:.1%} ({occ['warps_per_sm']} warps/SM, limited "
                   f"by {', '.join(occ['limited_by'])}) is below the floor {floor:.1%}")
    return bad


def violations(report: dict) -> dict[str, list[str]]:
    """Every kernel of a report that fails :func:`check`, with the reasons."""
    found = {}
    for name, entry in report["kernels"].items():
        if bad := check(entry):
            found[name] = bad
    for name in report.get("missing", []):
        found[name] = ["not found in the compiler's report"]
    return found


# ---------------------------------------------------------------------------------------------
# Triton: record a launch, compile it as the JIT would
# ---------------------------------------------------------------------------------------------
class _Recorder:
    """Stands in for a JITFunction: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple[tuple, dict]] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((args, kwargs))
        return launch


def _record(module, name: str, call) -> tuple[object, tuple, dict]:
    """Run ``call()`` with ``module.<name>`` (a Triton kernel) replaced by a recorder; the kernel
    and the arguments of its one launch."""
    kernel = getattr(module, name)
    rec = _Recorder(kernel)
    setattr(module, name, rec)
    try:
        call()
    finally:
        setattr(module, name, kernel)
    if len(rec.calls) != 1:
        raise RuntimeError(f"{module.__name__}.{name}: expected one launch, saw {len(rec.calls)}")
    return kernel, *rec.calls[0]


def _augment_launch(kind: str):
    """(kernel, args, kwargs) of the augment launcher at the official training / validation call:
    the arguments fastbci.ops.augment passes for configs/official.yaml."""
    import torch

    from fastbci import philox
    from fastbci.config import official
    from fastbci.kernels import augment as kern
    from fastbci.reference import smoothing_taps

    cfg = official()
    tf, seed = cfg["dataset"]["data_transforms"], int(cfg["dataset"]["seed"])
    c = CHANNELS - 2 if "per_element" in kind else CHANNELS
    train = kind != "augment_validation"
    step = 5
    cut = philox.random_cut(int(tf["random_cut"]), seed, step) if train else 0
    out = torch.empty(BATCH, T_MAX - cut, c, dtype=torch.bfloat16)
    kw = dict(t_max=T_MAX, cut=cut, padding="same", seed=seed,
              noise_base=philox.triton_offset_base(step, philox.NOISE),
              offset_base=philox.triton_offset_base(step, philox.OFFSET),
              noise_std=float(tf["white_noise_std"]) if train else 0.0,
              offset_std=float(tf["constant_offset_std"]) if train else 0.0)
    if kind.endswith("_padded"):  # augment_smooth: the padded (B, T_max, C) batch
        src = torch.empty(BATCH, T_MAX, c)
    else:  # augment_smooth_gather: the packed store, read through rows / offsets / lengths
        src = torch.empty(BATCH * T_MAX, c)
        kw.update(rows=torch.arange(BATCH), offsets=torch.arange(BATCH + 1) * T_MAX,
                  lengths=torch.full((BATCH,), T_MAX, dtype=torch.int64))
    kernel, args, kwargs = _record(kern, "_augment_smooth_kernel", lambda: kern.augment_smooth_launch(
        src, out, smoothing_taps(tf), **kw))
    kwargs["DOT_PRECISION"] = "tf32x3"  # what the launcher picks on a GPU with TF32 (sm_80+)
    return kernel, args, kwargs


def _patchify_launch(kind: str):
    import torch

    from fastbci.config import official
    from fastbci.kernels import patchify as kern

    model = official()["model"]
    size, stride = int(model["patch_size"]), int(model["patch_stride"])
    dtype = torch.float32 if kind.endswith("_fp32") else torch.bfloat16
    if kind.startswith("patchify_forward"):
        x = torch.empty(BATCH, T_MAX, CHANNELS, dtype=dtype)
        return _record(kern, "_patchify_fwd_kernel", lambda: kern.patchify_forward(x, size, stride))
    p = (T_MAX - size) // stride + 1
    dy = torch.empty(BATCH, p, size * CHANNELS, dtype=dtype)
    return _record(kern, "_patchify_bwd_kernel",
                   lambda: kern.patchify_backward(dy, T_MAX, size, stride))


def _compile_triton(kernel, args: tuple, kwargs: dict, arch: int = 90):
    """``triton.compile`` of one recorded launch for sm_<arch>, specialised by Triton's own binder
    as the JIT would for these arguments, with the launcher's options (num_warps, num_stages);
    returns the compiled kernel and the ptxas ``-v`` report of the JIT's ptxas run."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    params = [p.name for p in kernel.params]
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    spec = [tuple(s) if isinstance(s, (tuple, list)) else s for s in binder(*args, **kwargs)[1]]
    sig = {n: s[0] for n, s in zip(params, spec)}
    consts = {n: s[1] for n, s in zip(params, spec) if s[0] == "constexpr"}
    attrs = {(i,): backend.parse_attr(s[1]) for i, s in enumerate(spec)
             if s[0] != "constexpr" and isinstance(s[1], str)}
    options = {k: v for k, v in kwargs.items() if k not in params}
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG=1: the JIT's ptxas -v report
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs),
                                  target=target, options=options)
    return compiled, log.getvalue()


def _triton_entry(name: str) -> dict:
    """Compile one Triton case; its report entry (or ``{"error": ...}``)."""
    t0 = time.time()
    what, floor = TRITON_CASES[name]
    try:
        kernel, args, kwargs = (_augment_launch(name) if name.startswith("augment")
                                else _patchify_launch(name))
        compiled, log = _compile_triton(kernel, args, kwargs)
    except Exception as e:  # noqa: BLE001 - a compile failure is a result, reported per kernel
        return {"what": what, "floor": floor, "error": f"{type(e).__name__}: {str(e)[-2000:]}"}
    md = compiled.metadata
    ptxas = parse_ptxas(log)
    if len(ptxas) != 1 or next(iter(ptxas.values()))["registers"] is None:
        return {"what": what, "floor": floor,
                "error": f"could not read the ptxas -v report of the compile: {log[-1000:]!r}"}
    res = next(iter(ptxas.values()))
    shared = int(md.shared) + res["static_smem"]
    threads = int(md.num_warps) * 32 * int(getattr(md, "num_ctas", 1) or 1)
    return {"what": what, "floor": floor, "kernel": md.name, "compiler": "triton", **res,
            "num_warps": int(md.num_warps), "num_stages": int(md.num_stages),
            "threads_per_block": threads, "shared_bytes": shared,
            "occupancy": occupancy(res["registers"], threads, shared),
            "compile_s": round(time.time() - t0, 2)}


def _nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/nonexistent"), "bin", "nvcc"),
                 "/usr/local/cuda/bin/nvcc"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def _short_name(mangled: str) -> str:
    """``fastbci::cuda::(anonymous namespace)::forward_kernel<float>(...)`` -> ``forward_kernel<float>``."""
    try:
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True,
                              timeout=30).stdout.strip() or mangled
    except (OSError, subprocess.SubprocessError):
        name = mangled
    m = re.search(r"(\w+(?:<[^()]*>)?)\(", name)  # the name and template arguments before "("
    return m[1] if m else name


def _launches(src: str) -> dict[str, tuple[int, int]]:
    """(threads per block, dynamic shared bytes) of each kernel, read from its launches
    ``kernel<T><<<grid, N, SMEM, stream>>>`` in the source (integers or ``constexpr int``s)."""
    consts = {m[1]: int(m[2]) for m in re.finditer(r"constexpr int (\w+) = (\d+);", src)}

    def value(tok: str, what: str) -> int:
        v = int(tok) if tok.isdigit() else consts.get(tok)
        if v is None:
            raise RuntimeError(f"{CU_SOURCE.name}: cannot read the {what} {tok!r} of a launch")
        return v

    seen: dict[str, set[tuple[int, int]]] = {}
    for m in re.finditer(r"(\w+)<([\w:]+)><<<\s*[^,>]+,\s*(\w+)\s*(?:,\s*(\w+))?", src):
        cfg = (value(m[3], "block size"), value(m[4] or "0", "dynamic shared memory"))
        seen.setdefault(f"{m[1]}<{m[2]}>", set()).add(cfg)
    bad = {k: v for k, v in seen.items() if len(v) != 1}
    if bad:
        raise RuntimeError(f"{CU_SOURCE.name}: kernels launched in several ways: {bad}")
    return {k: v.pop() for k, v in seen.items()}


def _nvcc_cmd(nvcc: str, obj: str) -> list[str]:
    """The extension build's nvcc flags (setup.py's and torch's) for sm_90, with ptxas -v."""
    try:
        from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    except ImportError:  # the report still runs; the torch-defined macros are then absent
        COMMON_NVCC_FLAGS = []
    return [nvcc, *SETUP_NVCC_FLAGS, *COMMON_NVCC_FLAGS, "-DFASTBCI_WITH_CUDA=1",
            f"-I{ROOT / 'csrc'}", "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v",
            "-c", str(CU_SOURCE), "-o", obj]


def cuda_entries(nvcc: str) -> tuple[dict, list[str], str]:
    """Report entries of every kernel of the day projection source compiled by ``nvcc`` for
    sm_90, the expected kernels that are missing, and nvcc's version line."""
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.strip().splitlines()[-1]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = _nvcc_cmd(nvcc, os.path.join(tmp, "k.o"))
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        err = {"what": "day projection (CUDA), every kernel", "compiler": "nvcc",
               "floor": OCCUPANCY_FLOOR,
               "error": f"nvcc exited {res.returncode}: {' '.join(cmd)}\n{res.stderr[-3000:]}"}
        return {"day_projection": err}, [], version
    launches = _launches(CU_SOURCE.read_text())
    entries = {}
    for mangled, r in parse_ptxas(res.stdout + res.stderr).items():
        short = _short_name(mangled)
        if short not in launches:
            raise RuntimeError(f"{CU_SOURCE.name}: kernel {short} is never launched")
        threads, dyn = launches[short]
        shared = r["static_smem"] + dyn
        entries[f"day_projection.{short}"] = {
            "what": f"day projection (CUDA): {short}", "floor": OCCUPANCY_FLOOR, "kernel": short,
            "compiler": "nvcc", **r,
            "num_warps": threads // 32, "num_stages": None, "threads_per_block": threads,
            "shared_bytes": shared, "occupancy": occupancy(r["registers"], threads, shared),
            "compile_s": round(time.time() - t0, 2)}
    missing = [f"day_projection.{k}" for k in CUDA_KERNELS if f"day_projection.{k}" not in entries]
    return entries, missing, version


def _versions() -> dict:
    import torch
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "triton": triton.__version__}
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        tool = get_ptxas(90)
        info["triton_ptxas"] = f"{tool.path} ({tool.version})"
    except Exception as e:  # noqa: BLE001 - informative only
        info["triton_ptxas"] = f"unknown: {e}"
    return info


def build_report(with_cuda: bool = True) -> dict:
    """Compile every hot-path kernel for sm_90; the report (see the module docstring)."""
    t0 = time.time()
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # a cache hit would skip ptxas and its report
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    if "fastbci.kernels.launch" in sys.modules and sys.modules["fastbci.kernels.launch"].INTERPRETED:
        raise RuntimeError("fastbci.kernels was imported under TRITON_INTERPRET=1: run "
                           "scripts/kernel_resources.py in a fresh process")
    report = {"arch": "sm_90", "occupancy_floor": OCCUPANCY_FLOOR,
              "per_element_floor": PER_ELEMENT_FLOOR, "sm": SM90,
              "shapes": {"batch": BATCH, "t_max": T_MAX, "channels": CHANNELS},
              "versions": _versions(), "kernels": {}, "missing": [], "skipped": {}}
    for name in TRITON_CASES:
        report["kernels"][name] = _triton_entry(name)
    nvcc = _nvcc() if with_cuda else None
    if nvcc is None:
        report["skipped"]["day_projection"] = ("--no-cuda" if not with_cuda else
                                               "nvcc not found (PATH, $NVCC, $CUDA_HOME/bin, "
                                               "/usr/local/cuda/bin)")
    else:
        entries, missing, version = cuda_entries(nvcc)
        report["kernels"].update(entries)
        report["missing"] = missing
        report["versions"]["nvcc"] = f"{nvcc} ({version})"
    report["violations"] = violations(report)
    report["elapsed_s"] = round(time.time() - t0, 1)
    return report


def table(report: dict) -> str:
    """The report as a fixed-width table, one kernel a line, then the violations."""
    v = report["versions"]
    w = max([len(k) for k in report["kernels"]] + [len(k) for k in report.get("skipped", {})] + [6])
    lines = [f"sm_90 resources: triton {v.get('triton')}, torch {v.get('torch')} (CUDA "
             f"{v.get('torch_cuda')}), Python {v.get('python')}; occupancy floor "
             f"{report['occupancy_floor']:.1%} ({report['per_element_floor']:.1%} for the "
             f"per-element path)",
             f"{'kernel':{w}} {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>6} "
             f"{'warps':>5} {'stg':>3} {'blk/SM':>6} {'occ':>6} {'floor':>6}  limited by"]
    for name, e in report["kernels"].items():
        if e.get("error"):
            lines.append(f"{name:{w}} COMPILE ERROR: {e['error'].splitlines()[0][:120]}")
            continue
        o = e["occupancy"]
        stages = "-" if e["num_stages"] is None else str(e["num_stages"])
        lines.append(f"{name:{w}} {e['registers']:>4} {e['spill_stores']:>5}/{e['spill_loads']:<5} "
                     f"{e['stack_frame']:>5} {e['shared_bytes']:>6} {e['num_warps']:>5} "
                     f"{stages:>3} {o['blocks_per_sm']:>6} {o['occupancy']:>6.1%} "
                     f"{e['floor']:>6.1%}  {', '.join(o['limited_by'])}")
    for name, why in report.get("skipped", {}).items():
        lines.append(f"{name:{w}} SKIPPED: {why}")
    bad = report.get("violations") or {}
    lines.append("violations: none" if not bad else "violations:")
    lines += [f"  {name}: {why}" for name, reasons in bad.items() for why in reasons]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the report to this file")
    ap.add_argument("--no-cuda", action="store_true", help="leave out the CUDA day projection")
    ap.add_argument("--show", metavar="JSON", help="print a saved report and check it")
    a = ap.parse_args(argv)
    if a.show:
        report = json.loads(Path(a.show).read_text())
    else:
        report = build_report(with_cuda=not a.no_cuda)
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(report, indent=1))
    print(table(report))
    return 1 if violations(report) else 0


if __name__ == "__main__":
    sys.exit(main())
