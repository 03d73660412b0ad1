"""No folder of the repository shadows a package that a dependency imports.

The README's commands run from the repository root, and ``python -m`` (and pytest) put the
working directory first on ``sys.path``: a top-level folder with an ``__init__.py`` there is
imported instead of an installed package of the same name. transformers >= 5.25 imports Hugging
Face's ``kernels`` package when it loads a model, and fastbci's ``kernels/`` folder (the Triton
kernels) once shadowed it. Only ``fastbci`` is a package at the top level; ``kernels/`` and
``configs/`` are ``fastbci.kernels`` and ``fastbci.configs`` through links inside ``fastbci/``.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def top_level_folders(root: Path = ROOT) -> list[str]:
    """The folders at the top of the repository (tracked ones when it is a git checkout, so that
    a local .venv or data folder does not count)."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split()
        names = {f.split("/", 1)[0] for f in files if "/" in f}
    except (OSError, subprocess.CalledProcessError):
        names = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return sorted(n for n in names if (root / n).is_dir() and not (root / n).is_symlink())


def resolved_from(root: Path, name: str, env: dict | None = None) -> str:
    """Where ``import NAME`` resolves for a command started in ``root`` (the folder first on
    sys.path, as ``python -m`` puts it): a file or folder path, or "" when nothing is found."""
    code = ("import importlib.util, sys\n"
            f"s = importlib.util.find_spec({name!r})\n"
            "print('' if s is None else (s.origin if s.origin not in (None, 'namespace') "
            "else list(s.submodule_search_locations)[0]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def shadowed(root: Path, provided, env: dict | None = None) -> list[str]:
    """The top-level folders of ``root`` that hide an installed package of the same name (one
    of ``provided``) from a command started in ``root``."""
    clashes = [n for n in top_level_folders(root) if n in provided and n != "fastbci"]
    return [n for n in clashes
            if Path(resolved_from(root, n, env) or "/").resolve().is_relative_to((root / n).resolve())]


def test_only_fastbci_is_a_package_at_the_top_level():
    packages = [n for n in top_level_folders() if (ROOT / n / "__init__.py").exists()]
    assert packages == ["fastbci"], (
        f"top-level folders with an __init__.py: {packages}; from the repository root each would "
        "be imported in place of any installed package of that name")


def test_no_top_level_folder_shadows_an_installed_package():
    provided = importlib.metadata.packages_distributions()  # import name -> distributions
    assert shadowed(ROOT, provided) == []


def test_the_shadow_check_finds_a_planted_clash(tmp_path):
    """A repository with a ``kernels/__init__.py`` beside an installed ``kernels`` package: the
    check above reports it (and not a folder without ``__init__.py``)."""
    repo, site = tmp_path / "repo", tmp_path / "site"
    for pkg in (repo / "kernels", repo / "bench", site / "kernels", site / "bench"):
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
    (repo / "bench" / "__init__.py").unlink()
    env = dict(os.environ, PYTHONPATH=str(site))
    assert shadowed(repo, {"kernels", "bench"}, env) == ["kernels"]
    assert resolved_from(repo, "bench", env) == str(site / "bench" / "__init__.py")


def test_the_kernels_folder_is_fastbci_kernels_and_nothing_else():
    import fastbci.kernels.augment as aug
    import fastbci.kernels.launch as launch
    assert Path(aug.__file__).resolve().parent == (ROOT / "kernels").resolve()
    assert not hasattr(launch, "__path__") and not (ROOT / "kernels" / "__init__.py").exists()


def test_llm_rescoring_from_the_repository_root_with_hf_kernels_installed(tmp_path):
    """transformers loads a model (which imports Hugging Face's ``kernels`` since 5.25) inside
    ``fastbci lm rescore --llm`` (as ``python -m fastbci.lm``), started from the repository root."""
    pytest.importorskip("transformers", reason="transformers (pip install 'fastbci[llm]')")
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels package is not installed (transformers >= 5.25 "
                    "brings it; requirements-cpu.txt installs it)")
    from fastbci.lm import Hypothesis
    from fastbci.lm.run import write_nbest
    from fastbci.lm.tinylm import make_tiny_lm
    refs = ["hello world", "good morning"]
    make_tiny_lm(tmp_path / "lm", refs, init=0.5)
    write_nbest(tmp_path / "nbest.csv", range(2),
                [[Hypothesis(t, -1.0 - r, -1.0, -0.5, 2) for r, t in enumerate(refs)]] * 2, 1.0)
    np.savez(tmp_path / "logits.npz", logits=np.zeros((2, 41), np.float32), offsets=np.arange(3))
    assert not Path(resolved_from(ROOT, "kernels")).resolve().is_relative_to(ROOT / "kernels")
    proc = subprocess.run([sys.executable, "-m", "fastbci.lm", "rescore", "--nbest-file",
                           str(tmp_path / "nbest.csv"), "--llm", str(tmp_path / "lm"),
                           "--llm-device", "cpu", "--out", str(tmp_path / "words.csv")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "words.csv").read_text().splitlines()[0] == "id,text"
