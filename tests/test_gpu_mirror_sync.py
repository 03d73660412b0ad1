"""scripts/gpu_mirror_env.py sync: the working tree copied for the GPU-version mirror's build,
links made again as links (fastbci/kernels and fastbci/configs lead to the top-level folders),
nothing deleted through a link, a stale file removed."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _mirror():
    spec = importlib.util.spec_from_file_location("gpu_mirror_env", ROOT / "scripts" / "gpu_mirror_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sync_keeps_links_and_deletes_nothing_through_them(tmp_path):
    mirror, dest = _mirror(), tmp_path / "src"
    assert mirror.sync(dest) == 0
    for link in ("fastbci/kernels", "fastbci/configs"):
        assert (dest / link).is_symlink() and os.readlink(dest / link) == os.readlink(ROOT / link)
    assert (dest / "fastbci" / "kernels" / "augment.py").read_text() == \
        (ROOT / "kernels" / "augment.py").read_text()
    (dest / "stale.py").write_text("gone from the tree\n")
    assert mirror.sync(dest) == 0
    assert not (dest / "stale.py").exists()
    assert (dest / "kernels" / "augment.py").is_file() and (dest / "configs" / "official.yaml").is_file()
