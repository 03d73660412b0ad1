"""The environment of scripts/gpu_mirror.sh: the GPU machine's versions, its virtual environment,
the copy of the working tree it builds, and its result file. Standard library only (plus pip's
own vendored ``packaging`` in ``venv``).

    python scripts/gpu_mirror_env.py versions                      # KEY=VALUE lines, checked
    VENV/bin/python scripts/gpu_mirror_env.py venv VENV RECORD     # make or reuse the venv
    python scripts/gpu_mirror_env.py sync DEST                     # the working tree -> DEST
    python scripts/gpu_mirror_env.py summary OUT                   # OUT/gpu_mirror.json

``venv`` runs under the venv's own Python (so that torch's markers are evaluated for it) and
writes RECORD (JSON: what it did, its times and sizes). The venv is reused when it already holds
the versions of scripts/gpu_versions.env and the test requirements; otherwise every wheel is
first downloaded (``pip download``, the only step that needs the registry), then installed
offline from that folder. torch's CUDA libraries are the ones torch's own metadata pins
(``cuda-toolkit[...]`` extras and ``nvidia-*``), less :data:`LEAVE_OUT`: the ones ``import torch``
and the extension build do not load. Exit status of ``venv``: 0 ready, 1 an install or the
import check failed, 3 a download failed (nothing was checked: scripts/gpu_mirror.sh says so).
"""
from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS_FILE = ROOT / "scripts" / "gpu_versions.env"
KEYS = ("GPU_PYTHON", "GPU_TORCH", "GPU_TORCH_CUDA", "GPU_TRITON", "GPU_CUDA_ARCH")
# What the tests and the build need beside torch (as ./run.sh installs on a GPU machine)
TEST_REQUIREMENTS = ["numpy", "scipy", "h5py", "pyyaml", "tqdm", "pytest", "pytest-benchmark",
                     "ninja", "setuptools", "wheel"]
TEST_MODULES = ["numpy", "scipy", "h5py", "yaml", "tqdm", "pytest", "pytest_benchmark", "ninja",
                "setuptools", "wheel"]
# torch's CUDA wheels that neither `import torch` nor the extension build load (their libraries
# are opened on first use only: libtorch_cuda_linalg.so -> cusolver, NVRTC for the jiterator,
# NVTX is header-only; cuda-bindings is imported lazily): about 300 MB less to download
LEAVE_OUT = {"nvidia-cusolver", "nvidia-cuda-nvrtc", "nvidia-nvtx", "cuda-bindings"}
DOWNLOAD_FAILED = 3


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """The KEY=VALUE lines of scripts/gpu_versions.env (comments and blank lines ignored)."""
    found = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z_]+)=([0-9][0-9A-Za-z.+]*)", line)
        if not m or m[1] not in KEYS:
            raise SystemExit(f"{path}:{n}: expected one of {', '.join(KEYS)}=VERSION, got {line!r}")
        found[m[1]] = m[2]
    missing = [k for k in KEYS if k not in found]
    if missing:
        raise SystemExit(f"{path}: no line for {', '.join(missing)}")
    return found


# ---------------------------------------------------------------------------------------------
# venv
# ---------------------------------------------------------------------------------------------
def _pip(*args: str, log: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    log.append(" ".join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True)
    log.append(res.stdout[-4000:] + res.stderr[-4000:])
    return res


def _metadata(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def _wheel(folder: Path, project: str) -> Path:
    stem = project.replace("-", "_").lower()
    found = [p for p in folder.glob("*.whl") if p.name.lower().startswith(stem + "-")]
    if len(found) != 1:
        raise RuntimeError(f"expected one {project} wheel in {folder}, found {found}")
    return found[0]


def _lean_requirements(torch_reqs: list[str], toolkit_reqs: list[str] | None):
    """(torch's CUDA wheels to install without their dependencies, torch's other requirements),
    from torch's Requires-Dist, its ``cuda-toolkit[extras]`` expanded with the toolkit's own."""
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - pip without its vendored packaging
        from packaging.requirements import Requirement
    cuda, other = [], []
    for line in torch_reqs:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower()
        if name == "cuda-toolkit":
            if toolkit_reqs is None:
                raise RuntimeError("torch needs cuda-toolkit, whose metadata was not read")
            for t in toolkit_reqs:
                treq = Requirement(t)
                if any(treq.marker is None or treq.marker.evaluate({"extra": e})
                       for e in req.extras) and treq.name.lower() not in LEAVE_OUT:
                    cuda.append(f"{treq.name}{treq.specifier}")
        elif name.startswith(("nvidia-", "cuda-")):
            if name not in LEAVE_OUT:
                cuda.append(f"{req.name}{req.specifier}")
        elif name != "triton":
            other.append(f"{req.name}{req.specifier}")
    return sorted(set(cuda)), other


_CHECK = """
import importlib.metadata as md, importlib.util, pathlib, platform, re, sys
mods, do_import = sys.argv[1].split(","), sys.argv[2] == "1"
missing = [m for m in mods if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("not installed: " + " ".join(missing))
if do_import:  # the proof that the CUDA libraries load
    import torch, triton
    cuda, torch_v, triton_v = torch.version.cuda, torch.__version__, triton.__version__
else:  # quick: the installed metadata and torch/version.py
    torch_v, triton_v = md.version("torch"), md.version("triton")
    text = (pathlib.Path(importlib.util.find_spec("torch").origin).parent / "version.py").read_text()
    cuda = (re.findall(r"^cuda[^=]*= *'([^']*)'", text, re.M) or ["None"])[0]
print(platform.python_version(), torch_v.split("+")[0], cuda, triton_v)
"""


def _installed(venv_python: str, v: dict, do_import: bool = False) -> str | None:
    """None when the venv holds the versions and the test requirements (``do_import``: and
    ``import torch, triton`` works), else what differs."""
    res = subprocess.run([venv_python, "-c", _CHECK, ",".join(["torch", "triton", *TEST_MODULES]),
                          "1" if do_import else "0"], capture_output=True, text=True)
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or ["no output"])[-1]
    py, torch_v, cuda, triton_v = res.stdout.split()
    want = (v["GPU_PYTHON"], v["GPU_TORCH"], v["GPU_TORCH_CUDA"], v["GPU_TRITON"])
    have = (".".join(py.split(".")[:2]), torch_v, cuda, triton_v)
    if have != want:
        return f"Python / torch / CUDA / triton {have}, want {want}"
    return None


# what pip prints when the network, not the request, failed
_NETWORK = re.compile(r"ConnectionError|ConnectTimeout|ReadTimeout|Connection (?:refused|reset|"
                      r"broken|aborted)|Max retries exceeded|Temporary failure in name resolution|"
                      r"Name or service not known|Network is unreachable|No route to host|"
                      r"SSLError|ProxyError|IncompleteRead|HTTP error 5\d\d|HTTPError: 5\d\d")


def _index_probe() -> str:
    """Whether the package index pip uses answers for torch: 'reachable (URL)' or the error."""
    import urllib.request

    url = os.environ.get("PIP_INDEX_URL") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True,
        text=True).stdout.strip() or "https://pypi.org/simple"
    url = url.rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(url, timeout=15) as r:
            return f"reachable ({url}: HTTP {r.status})"
    except Exception as e:  # noqa: BLE001 - any failure is the answer
        return f"unreachable ({url}: {type(e).__name__}: {e})"


def _download(wheels: Path, v: dict, rec: dict, log: list[str]) -> dict | None:
    """Download every wheel the venv needs into ``wheels``; None, or what failed (with
    ``network``: True when the registry or the connection failed, not the request)."""
    from pip._vendor.packaging.requirements import Requirement

    def get(args: list[str], what: str) -> dict | None:
        res = _pip("download", "-d", str(wheels), *args, log=log)
        if res.returncode == 0:
            return None
        tail = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("WARNING: Loc")]
        probe = _index_probe()
        return {"what": what, "pip_exit": res.returncode, "pip_says": tail[-6:],
                "registry": probe, "network": bool(_NETWORK.search(res.stderr))
                or not probe.startswith("reachable")}

    t0 = time.time()
    pins = [f"torch=={v['GPU_TORCH']}", f"triton=={v['GPU_TRITON']}"]
    if fail := get(["--no-deps", *pins], " and ".join(pins)):
        return fail
    torch_reqs = _metadata(_wheel(wheels, "torch"))
    toolkit_reqs = None
    toolkit = next((Requirement(r) for r in torch_reqs if r.lower().startswith("cuda-toolkit")), None)
    if toolkit is not None:
        if fail := get(["--no-deps", f"cuda-toolkit{toolkit.specifier}"],
                       f"cuda-toolkit{toolkit.specifier} (torch's CUDA pins)"):
            return fail
        toolkit_reqs = _metadata(_wheel(wheels, "cuda-toolkit"))
    cuda, other = _lean_requirements(torch_reqs, toolkit_reqs)
    if fail := get(["--no-deps", *cuda], "torch's CUDA libraries: " + " ".join(cuda)):
        return fail
    if fail := get([*other, *TEST_REQUIREMENTS], "torch's other requirements and the test "
                   "requirements: " + " ".join(other + TEST_REQUIREMENTS)):
        return fail
    rec.update(download_s=round(time.time() - t0, 1), cuda_packages=cuda, other_packages=other,
               left_out=sorted(LEAVE_OUT), install_args=[pins, cuda, other],
               download_mb=round(sum(p.stat().st_size for p in wheels.glob("*.whl")) / 1e6))
    return None


def _du_mb(path: Path) -> int:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()
                     and not f.is_symlink()) / 1e6)


def make_venv(venv: Path, record: Path) -> int:
    """Reuse the venv this Python runs in, or fill it; writes ``record``; the exit status."""
    v = read_versions()
    rec: dict = {"venv": str(venv), "python_exe": sys.executable}
    log: list[str] = []
    t0 = time.time()

    def done(status: int, **kw) -> int:
        rec.update(kw, total_s=round(time.time() - t0, 1))
        record.write_text(json.dumps(rec, indent=1))
        (record.parent / "venv-pip.log").write_text("\n".join(log))
        return status

    why = _installed(sys.executable, v)
    if why is None:
        return done(0, action="reused")
    rec["why_not_reused"] = why
    wheels = venv / ".mirror-wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    if failed := _download(wheels, v, rec, log):
        shutil.rmtree(wheels, ignore_errors=True)
        if failed["network"]:
            return done(DOWNLOAD_FAILED, action="download failed", download_failed=failed)
        return done(1, action="download refused", download_failed=failed,
                    error=f"the registry is {failed['registry']} but pip could not get "
                          f"{failed['what']}: {' | '.join(failed['pip_says'][-2:])} "
                          f"(a version in scripts/gpu_versions.env that does not exist?)")
    t1 = time.time()
    pins, cuda, other = rec.pop("install_args")
    for args in ([*other, *TEST_REQUIREMENTS], ["--no-deps", *pins, *cuda]):
        res = _pip("install", "--no-index", "--find-links", str(wheels), *args, log=log)
        if res.returncode != 0:
            return done(1, action="install failed", error=f"pip install {' '.join(args)} "
                        f"exited {res.returncode}: {res.stderr.strip()[-2000:]}")
    shutil.rmtree(wheels, ignore_errors=True)
    rec["install_s"] = round(time.time() - t1, 1)
    if why := _installed(sys.executable, v, do_import=True):
        return done(1, action="import check failed", error=f"after the install: {why}")
    return done(0, action="made", venv_mb=_du_mb(venv))


# ---------------------------------------------------------------------------------------------
# sync: the working tree (tracked and untracked, not ignored files) into the mirror's copy
# ---------------------------------------------------------------------------------------------
def _kept(rel: Path) -> bool:
    """Files of the copy that are not sources: build outputs, kept between runs."""
    parts = rel.parts
    return (rel.suffix == ".so" or any(p in ("build", "__pycache__", ".pytest_cache")
                                       or p.endswith(".egg-info") for p in parts))


def sync(dest: Path) -> int:
    res = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True)
    if res.returncode != 0:
        print(f"[gpu_mirror] {ROOT} is not a git checkout (git ls-files failed): "
              f"{res.stderr.decode().strip()}", file=sys.stderr)
        return 1
    listed = {Path(f) for f in res.stdout.decode().split("\0") if f}
    # links (fastbci/kernels -> ../kernels) are made again as links, never followed
    links = {f for f in listed if (ROOT / f).is_symlink()}
    files = {f for f in listed - links if (ROOT / f).is_file()}  # deleted but still tracked: skip
    for rel in sorted(links):
        dst = dest / rel
        if not (dst.is_symlink() and os.readlink(dst) == os.readlink(ROOT / rel)):
            if dst.is_symlink() or dst.is_file():
                dst.unlink()
            elif dst.is_dir():
                shutil.rmtree(dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(ROOT / rel), dst)
    copied = 0
    for rel in sorted(files):
        src, dst = ROOT / rel, dest / rel
        if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            copied += 1
    removed = 0
    for dst in sorted(dest.rglob("*"), reverse=True):
        rel = dst.relative_to(dest)
        if rel in links or any(p in links for p in rel.parents):  # a link, or reached through one
            continue
        if dst.is_file() and rel not in files and not _kept(rel):
            dst.unlink()
            removed += 1
        elif dst.is_dir() and not any(dst.iterdir()):
            dst.rmdir()
    print(f"[gpu_mirror] {dest}: {len(files)} files, {copied} copied, {removed} removed")
    return 0


# ---------------------------------------------------------------------------------------------
# summary: OUT/gpu_mirror.json from the stage lines, the venv record, the resource report and
# the tests' junit file
# ---------------------------------------------------------------------------------------------
def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _junit(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["seconds"] = round(float(suite.get("time", 0)), 1)
    n["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                   if c.find("failure") is not None or c.find("error") is not None]
    return n


def _resources(report: dict | None) -> dict | None:
    if report is None:
        return None
    keep = ("registers", "spill_stores", "spill_loads", "stack_frame", "shared_bytes",
            "num_warps", "num_stages", "floor", "error")
    return {"versions": report.get("versions"), "violations": report.get("violations"),
            "skipped": report.get("skipped"),
            "kernels": {k: {**{f: e[f] for f in keep if f in e},
                            "occupancy": e.get("occupancy", {}).get("occupancy"),
                            "blocks_per_sm": e.get("occupancy", {}).get("blocks_per_sm")}
                        for k, e in report["kernels"].items()}}


def _stage_lines(path: Path) -> dict:
    stages = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
        stages[name] = {"status": status, "seconds": int(seconds or 0), "detail": detail}
    return stages


def summary(out: Path) -> int:
    """Write OUT/gpu_mirror.json and print the outcome; 0, 1 (a stage failed) or 3 (not run).
    The stage lines of a ``--prepare`` run (OUT/prepare.tsv) are taken in and then removed."""
    stages = _stage_lines(out / "stages.tsv")
    prepared = _stage_lines(out / "prepare.tsv")
    venv = _load_json(out / "venv.json") or {}
    not_run = venv.get("action") == "download failed"
    failed = [n for n, s in stages.items() if s["status"] != "OK"]
    outcome = ("NOT RUN: a download failed" if not_run else
               "FAILED: " + ", ".join(failed) if failed else "PASSED")
    result = {"outcome": outcome, "ran": not not_run, "versions": read_versions(),
              "stages": stages, "venv": venv,
              "prepared": {"stages": prepared, "venv": _load_json(out / "prepare-venv.json")},
              "resources": _resources(_load_json(out / "kernel_resources.json")),
              "tests": _junit(out / "tests.xml")}
    for rec in (result["venv"], result["prepared"]["venv"] or {}):
        rec.pop("python_exe", None)
    (out / "gpu_mirror.json").write_text(json.dumps(result, indent=1))
    for name, s in prepared.items():
        print(f"[gpu_mirror] {name:9} {s['status']:7} {s['seconds']:4d} s  {s['detail']} "
              f"(--prepare, in the background)")
    for name, s in stages.items():
        print(f"[gpu_mirror] {name:9} {s['status']:7} {s['seconds']:4d} s  {s['detail']}")
    t = result["tests"]
    if t:
        print(f"[gpu_mirror] tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, "
              f"{t['skipped']} skipped in {t['seconds']} s"
              + "".join(f"\n[gpu_mirror]   FAILED {f}" for f in t["failed"]))
    here = sum(s["seconds"] for s in stages.values())
    before = sum(s["seconds"] for s in prepared.values())
    print(f"[gpu_mirror] outcome: {outcome} ({here} s" + (f", after {before} s of --prepare"
                                                          if prepared else "")
          + f"; {out / 'gpu_mirror.json'})")
    for name in ("prepare.tsv", "prepare-venv.json"):
        (out / name).unlink(missing_ok=True)
    return DOWNLOAD_FAILED if not_run else (1 if failed else 0)


def main(argv: list[str]) -> int:
    usage = ("usage: gpu_mirror_env.py versions | venv VENV RECORD | sync DEST | summary OUT")
    if argv[:1] == ["versions"] and len(argv) == 1:
        for k, val in read_versions().items():
            print(f"{k}={val}")
        return 0
    if argv[:1] == ["venv"] and len(argv) == 3:
        return make_venv(Path(argv[1]), Path(argv[2]))
    if argv[:1] == ["sync"] and len(argv) == 2:
        return sync(Path(argv[1]))
    if argv[:1] == ["summary"] and len(argv) == 2:
        return summary(Path(argv[1]))
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
