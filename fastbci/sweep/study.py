"""The Optuna side of a search: the storage (SQLite by default, PostgreSQL / MySQL, or a journal
file), the study and what it records of the search (the configuration, the space, the number of
trials), the pruner, and the study-wide lock under which a worker decides to start a trial.

optuna is imported inside the functions, so that ``import fastbci.sweep`` works without it;
:func:`require_optuna` turns its absence into exit status 5 naming the ``sweep`` extra."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from fastbci import outputs
from fastbci.errors import ConfigError, UnavailableError

INSTALL = "pip install 'fastbci[sweep]'"
PRUNERS = ("median", "hyperband", "none")
#: what a study records of its search (user attributes)
ATTR = "fastbci."
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


def require_optuna():
    """optuna, or an :class:`UnavailableError` (exit 5) with the install line."""
    try:
        import optuna
    except ImportError:
        raise UnavailableError(f"fastbci sweep search needs optuna: {INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    return optuna


def storage_url(storage: str | None, out: Path) -> str:
    """The storage URL: ``sqlite:///OUT/study.db`` by default; a SQLite or journal path made
    absolute (workers may start elsewhere)."""
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if storage.startswith("journal:"):
        return "journal:" + str(Path(storage[len("journal:"):]).resolve())
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        path = storage[len("sqlite:///"):]
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).resolve()}"
    return storage


def _scheme(url: str) -> str:
    head, sep, _ = url.partition("://")
    base = head.split("+", 1)[0]
    if not sep or base not in RDB_SCHEMES:
        raise ConfigError(f"--storage {url!r}: not a storage URL (sqlite:///PATH, "
                          "postgresql://USER:PASSWORD@HOST/DB, mysql://..., or journal:PATH)")
    return base


def local_path(url: str) -> Path | None:
    """The file of a SQLite or journal storage (None for a database server)."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str, heartbeat: int = 20, grace: int | None = None):
    """The Optuna storage of ``url``. A database storage has the heartbeat on (a trial whose
    process stops beating for ``grace`` seconds is failed and retried once, as a new trial with
    the same parameters); a journal file has no heartbeat. A malformed or unreachable URL is a
    ConfigError (exit 2), a missing database driver an UnavailableError (exit 5)."""
    optuna = require_optuna()
    path = local_path(url)
    if path is not None and path.parent.is_dir():  # its engine's files beside it are fastbci's
        outputs.record(path, prefix=True)
    if url.startswith("journal:"):
        if not path.parent.is_dir():
            raise ConfigError(f"--storage {url}: folder {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    scheme = _scheme(url)
    grace = grace if grace is not None else 3 * heartbeat
    if grace <= heartbeat:
        raise ConfigError(f"--grace {grace} must be longer than --heartbeat {heartbeat}")
    kwargs: dict[str, Any] = {}
    if scheme == "sqlite":
        kwargs = {"connect_args": {"timeout": 120}}
    elif scheme in ("postgresql", "mysql"):
        kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=heartbeat, grace_period=grace,
            **{_callback_arg(optuna): retry(max_retry=1)})
    except ModuleNotFoundError as e:
        raise UnavailableError(f"--storage {scheme}: the database driver {e.name} is not "
                               f"installed ({INSTALL} brings psycopg2 for PostgreSQL; MySQL "
                               "needs pymysql: pip install pymysql)") from None
    except Exception as e:  # sqlalchemy's ArgumentError / OperationalError, optuna's own
        first = " ".join(str(e).split())[:300]
        raise ConfigError(f"--storage {hide_password(url)}: cannot open it ({type(e).__name__}: "
                          f"{first})") from None


def _callback_arg(optuna) -> str:
    import inspect
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    return ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
            else "failed_trial_callback")


def hide_password(url: str) -> str:
    head, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


def heartbeat_on(storage) -> bool:
    """Whether ``storage`` fails the trials of a worker that stopped beating (a database)."""
    get = getattr(storage, "get_heartbeat_interval", None)
    return get is not None and get() is not None


def make_pruner(name: str, definition: Mapping[str, Any]):
    """Optuna's pruner: ``median`` (MedianPruner: after ``startup_trials`` trials, a trial whose
    PER at a validation is worse than the median of the earlier trials' at that batch, from
    batch ``prune_after`` on), ``hyperband`` (from one validation interval to the whole run),
    ``none``."""
    optuna = require_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(definition["startup_trials"]),
                                           n_warmup_steps=int(definition["prune_after"]))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=int(definition["val_every"]),
                                              max_resource=int(definition["batches"]),
                                              reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name}: one of {', '.join(PRUNERS)}")


def define(study, definition: Mapping[str, Any]) -> None:
    """Record the search on a new study (its user attributes): what every worker reads."""
    for k, v in definition.items():
        study.set_user_attr(ATTR + k, v)


def definition_of(study) -> dict[str, Any]:
    """The search a study records (empty for a study fastbci did not make)."""
    return {k[len(ATTR):]: v for k, v in study.user_attrs.items() if k.startswith(ATTR)}


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def check_same(name: str, url: str, have: Mapping[str, Any], want: Mapping[str, Any]) -> None:
    """A study that exists must be this search: same space and configuration (the number of
    trials, the pruner and the worker settings may change)."""
    if not have:
        raise ConfigError(f"study {name} exists in {hide_password(url)} and is not a fastbci "
                          "search: choose another --study")
    for key, what in (("space", "search space"), ("config", "configuration")):
        if _canon(have.get(key)) != _canon(want.get(key)):
            raise ConfigError(f"study {name} exists in {hide_password(url)} with another "
                              f"{what}: choose another --study (or --out), or run the "
                              "search it was made for")


class StudyLock:
    """The lock under which a worker counts the study's trials and starts one, so that two
    workers never start more trials than asked: a file lock beside a SQLite or journal file
    (workers on one machine), an advisory lock of a PostgreSQL or MySQL server (any machine)."""

    def __init__(self, url: str, study: str):
        self.url, self.study = url, study
        self._file = None
        self._conn = None
        self.held = False

    def acquire(self) -> None:
        path = local_path(self.url)
        if path is not None:
            self._file = open(f"{path}.fastbci-lock", "a")
            fcntl.flock(self._file, fcntl.LOCK_EX)
        else:
            import sqlalchemy
            self._conn = sqlalchemy.create_engine(self.url, poolclass=sqlalchemy.pool.NullPool
                                                  ).connect()
            self._conn.execute(*self._sql("lock"))
        self.held = True

    def _sql(self, what: str):
        import sqlalchemy
        key = int.from_bytes(hashlib.sha256(self.study.encode()).digest()[:8], "big") >> 1
        if _scheme(self.url) == "postgresql":
            fn = "pg_advisory_lock" if what == "lock" else "pg_advisory_unlock"
            return sqlalchemy.text(f"SELECT {fn}(:k)"), {"k": key}
        fn = "GET_LOCK(:k, -1)" if what == "lock" else "RELEASE_LOCK(:k)"
        return sqlalchemy.text(f"SELECT {fn}"), {"k": f"fastbci-{key}"}

    def release(self) -> None:
        """Release (a no-op when not held)."""
        if not self.held:
            return
        self.held = False
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            try:
                self._conn.execute(*self._sql("unlock"))
            finally:
                self._conn.close()
                self._conn = None


def cpu_threads(workers: int) -> int:
    """Threads per worker so that ``workers`` processes share the machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, workers))


def tally(study) -> tuple[int, int, int]:
    """``(done, running, waiting)`` trials of a study. Done: complete, pruned, or failed and
    not replaced (a trial failed by the heartbeat is retried once as a new trial; an interrupted
    one is queued again); waiting: queued to run next."""
    from optuna.trial import TrialState as S
    trials = study.get_trials(deepcopy=False)
    replaced: set[int] = set()
    for t in trials:
        replaced.update(t.system_attrs.get("retry_history", []))
        if t.user_attrs.get("retry_of") is not None:
            replaced.add(int(t.user_attrs["retry_of"]))
    done = sum(t.state in (S.COMPLETE, S.PRUNED) or (t.state == S.FAIL and t.number not in replaced)
               for t in trials)
    return (done, sum(t.state == S.RUNNING for t in trials),
            sum(t.state == S.WAITING for t in trials))
