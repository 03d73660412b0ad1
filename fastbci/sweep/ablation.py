"""``ablate``: which differences between a configuration and a reference decide the outcome,
and ``seed_sweep``: one configuration over several seeds. Each run is an ordinary training run
in ``OUT/runs/<variant>-s<seed>/``; a second call continues the sweep (unfinished runs resume,
ended ones are read back)."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from fastbci import config as config_mod
from fastbci import fileio
from fastbci.sweep import plan, report, runner
from fastbci.sweep.plan import Factor, Variant

ABLATION_FILES = ("ablation.csv", "ablation.md", "ablation.png")
SEED_FILES = ("seeds.csv", "seeds.md", "seeds.png")


@dataclasses.dataclass
class AblationResult:
    """What a sweep gave: its factors and variants, every run's result by variant (in seed
    order), the CSV rows, the verdict lines and the files written. ``interrupted``: a run was
    stopped by Ctrl-C (rerun the same command to continue)."""
    out: Path
    factors: list[Factor]
    variants: list[Variant]
    seeds: list[int]
    results: dict[str, list[runner.RunResult]]
    rows: list[dict]
    verdict: list[str]
    files: dict[str, Path]
    interrupted: bool = False

    def summary(self) -> dict[str, Any]:
        """The JSON-able summary (``--json``)."""
        return {"out": str(self.out), "factors": [f.name for f in self.factors],
                "variants": [v.name for v in self.variants], "seeds": self.seeds,
                "runs": self.rows, "verdict": self.verdict, "interrupted": self.interrupted,
                "files": {k: str(p) for k, p in self.files.items()}}


def _ref_path(against: str | os.PathLike | None) -> Path:
    if against is not None:
        return Path(against)
    return config_mod._official_path()


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _run_all(base: Mapping, variants: Sequence[Variant], values: Mapping[str, Mapping],
             seeds: Sequence[int], out: Path, overrides: Sequence[str], quiet: bool,
             command: str | None, plateau_per: float
             ) -> tuple[dict[str, list[runner.RunResult]], bool]:
    """Every run (variants x seeds), in order; stops at the first interrupted run."""
    cfgs = {(v.name, s): plan.run_config(base, values[v.name], out / "runs" / f"{v.name}-s{s}", s,
                                         overrides)
            for v in variants for s in seeds}  # every configuration checked before any run
    results: dict[str, list[runner.RunResult]] = {v.name: [] for v in variants}
    n, i = len(cfgs), 0
    for v in variants:
        for s in seeds:
            i += 1
            t0 = time.time()
            res = runner.train(cfgs[(v.name, s)], resume_command=command,
                               plateau_per=plateau_per)
            results[v.name].append(res)
            what = "trained" if res.ran else "already ended"
            _say(quiet, f"[{i}/{n}] {v.name} seed {s}: {res.status}, final PER "
                        f"{report._num(res.final_per)}, left the plateau at "
                        f"{'-' if res.left_plateau_batch is None else res.left_plateau_batch} "
                        f"({what}, {time.time() - t0:.0f} s)")
            if res.status == "failed":
                _say(quiet, f"    {res.message.splitlines()[0] if res.message else ''}")
            if res.status == "interrupted":
                return results, True
    return results, False


def _finish(out: Path, kind: str, facs: list[Factor], variants: list[Variant],
            values: Mapping[str, Mapping], seeds: list[int],
            results: dict[str, list[runner.RunResult]], interrupted: bool,
            title: str, plateau_per: float) -> AblationResult:
    names = ABLATION_FILES if kind == "ablation" else SEED_FILES
    rows = [report.run_row(v, facs, values[v.name], s, r)
            for v in variants for s, r in zip(seeds, results[v.name])]
    files = {}
    report.write_csv(out / names[0], rows)
    files["csv"] = out / names[0]
    md = report.markdown(variants, results, values, title, plateau_per)
    verdict = report.verdict(facs, variants, results) if kind == "ablation" else \
        _seed_verdict(results["config"])
    fileio.atomic_write_text(out / names[1], md + "\n" + "\n".join(verdict) + "\n")
    files["md"] = out / names[1]
    png = report.plot(out / names[2], variants, results, title, plateau_per)
    if png is not None:
        files["png"] = png
    return AblationResult(out, facs, variants, seeds, results, rows, verdict, files, interrupted)


def _seed_verdict(rs: Sequence[runner.RunResult]) -> list[str]:
    learned = sum(r.learned for r in rs)
    collapsed = sum(r.status == "collapsed" for r in rs)
    finals = sorted(r.final_per for r in rs if r.final_per is not None)
    spread = (f"final PER {100 * finals[0]:.1f}% to {100 * finals[-1]:.1f}%" if finals
              else "no validation PER")
    return [f"{learned} of {len(rs)} seed(s) left the blank plateau, {collapsed} collapsed; "
            f"{spread}."]


def ablate(config: str | os.PathLike, *, against: str | os.PathLike | None = None,
           out: str | os.PathLike, overrides: Sequence[str] = (),
           groups: Mapping[str, Sequence[str]] | None = None, keys: Sequence[str] | None = None,
           direction: str = "both", seeds: int = 1, seed_list: Sequence[int] | None = None,
           overwrite: bool = False, quiet: bool = False, command: str | None = None,
           plateau_per: float = runner.PLATEAU_PER) -> AblationResult:
    """Ablate ``config`` against ``against`` (default: the official configuration): every
    factor (:func:`fastbci.sweep.plan.factors`) set back to REF's value in CONFIG (``fix``) and
    carried over alone to REF (``break``), CONFIG and REF themselves, each over the seeds
    (``seed`` and ``dataset.seed`` = 1..``seeds``). ``overrides`` (``key=value``) apply to every
    run and are not ablated. Everything that is not a factor is CONFIG's in every run. Writes
    ``ablation.csv``, ``ablation.md``, ``ablation.png`` in ``out``; ``command``: what resumes it
    (named by an interrupted run); ``plateau_per``: a run has learned once its validation PER
    is below it (it has left the blank plateau CTC training starts on)."""
    out = Path(out)
    cfg = config_mod.load_config(config, overrides)
    ref = config_mod.load_config(_ref_path(against), overrides)
    facs = plan.factors(cfg, ref, groups, keys)
    variants = plan.variants(facs, direction)
    seeds_ = plan.seed_list(seeds, seed_list)
    values = {v.name: plan.variant_values(v, facs) for v in variants}
    sig = plan.signature([config_mod.flatten(cfg), config_mod.flatten(ref), list(overrides),
                          [dataclasses.astuple(f) for f in facs]])
    runner.check_out(out, "ablation", sig, overwrite, ABLATION_FILES)
    _check_configs(cfg, variants, values, seeds_, out, overrides)
    runner.mark(out, "ablation", sig, config=str(config), against=str(_ref_path(against)))
    _say(quiet, f"Ablation of {config} against {_ref_path(against)}: {len(facs)} factor(s) "
                f"({', '.join(f.name for f in facs)}), {len(variants)} variant(s) x "
                f"{len(seeds_)} seed(s) in {out}/runs")
    results, stopped = _run_all(cfg, variants, values, seeds_, out, overrides, quiet, command,
                                plateau_per)
    if stopped:
        return AblationResult(out, facs, variants, seeds_, results, [], [], {}, True)
    return _finish(out, "ablation", facs, variants, values, seeds_, results, False,
                   f"Ablation of {Path(config).name} against {_ref_path(against).name}",
                   plateau_per)


def _check_configs(cfg: Mapping, variants: Sequence[Variant], values: Mapping[str, Mapping],
                   seeds: Sequence[int], out: Path, overrides: Sequence[str]) -> None:
    """Every run's configuration is valid (before the folder is created)."""
    for v in variants:
        for s in seeds:
            plan.run_config(cfg, values[v.name], out / "runs" / f"{v.name}-s{s}", s, overrides)


def seed_sweep(config: str | os.PathLike, *, out: str | os.PathLike, seeds: int = 5,
               seed_list: Sequence[int] | None = None, overrides: Sequence[str] = (),
               overwrite: bool = False, quiet: bool = False, command: str | None = None,
               plateau_per: float = runner.PLATEAU_PER) -> AblationResult:
    """``config`` over several seeds (``seed`` and ``dataset.seed`` = 1..``seeds``, or
    ``seed_list``): ``seeds.csv`` (one row per seed), ``seeds.md`` (the distribution of the
    final PER, how many collapsed), ``seeds.png`` (the curves) in ``out``."""
    out = Path(out)
    cfg = config_mod.load_config(config, overrides)
    seeds_ = plan.seed_list(seeds, seed_list)
    variants = [Variant("config", "", "", frozenset())]
    values: dict[str, dict] = {"config": {}}
    sig = plan.signature([config_mod.flatten(cfg), list(overrides)])
    runner.check_out(out, "seeds", sig, overwrite, SEED_FILES)
    _check_configs(cfg, variants, values, seeds_, out, overrides)
    runner.mark(out, "seeds", sig, config=str(config))
    _say(quiet, f"{config} over {len(seeds_)} seed(s) in {out}/runs")
    results, stopped = _run_all(cfg, variants, values, seeds_, out, overrides, quiet, command,
                                plateau_per)
    if stopped:
        return AblationResult(out, [], variants, seeds_, results, [], [], {}, True)
    return _finish(out, "seeds", [], variants, values, seeds_, results, False,
                   f"{Path(config).name} over {len(seeds_)} seed(s)", plateau_per)

