"""``fastbci sweep``: many training runs as one command (docs/sweeps.md).

* :func:`ablate`: which differences between a configuration and a reference decide the outcome
  (each factor set back, and carried over alone), over seeds;
* :func:`seed_sweep`: one configuration over several seeds;
* :func:`search`: a hyperparameter search with Optuna (pruning, SQLite / PostgreSQL / MySQL /
  journal storage, several worker processes), and :func:`worker`, one more process for a study.

Each run is an ordinary fastbci training run in its own folder under ``OUT/runs/``. optuna is
imported only by the search (``pip install 'fastbci[sweep]'``)."""
from fastbci.sweep.ablation import AblationResult, ablate, seed_sweep
from fastbci.sweep.plan import KNOWN_GROUPS, Factor, Variant, parse_groups
from fastbci.sweep.results import SearchResult
from fastbci.sweep.runner import PLATEAU_PER, RunResult
from fastbci.sweep.search import search, worker

__all__ = ["ablate", "seed_sweep", "search", "worker", "AblationResult", "SearchResult",
           "RunResult", "Factor", "Variant", "KNOWN_GROUPS", "PLATEAU_PER", "parse_groups"]
