"""pytest plugin of scripts/gpu_check.sh: a stage's result file is rewritten after every test.

A stage cut off at its time budget is killed, and pytest then writes neither its junit XML nor
pytest-benchmark's JSON (a trainer test may even swallow the interrupt). With this plugin
(``-p pytest_partial``, scripts/ on PYTHONPATH):

* ``--partial-junit=FILE``: FILE is a junit XML of the tests finished so far, rewritten as each
  test ends and at the end of the session; use it instead of --junitxml;
* ``--partial-benchmark-json=FILE``: FILE holds the benchmarks finished so far as
  ``{"benchmarks": [...], "partial": true}``, in pytest-benchmark's per-benchmark layout; give
  the same FILE to --benchmark-json, whose complete file replaces it when the session ends.

Under pytest-xdist only the controller writes (it sees every worker's reports).
"""
from __future__ import annotations

import json
import os
import time
import xml.etree.ElementTree as ET


def pytest_addoption(parser):
    group = parser.getgroup("partial results (scripts/gpu_check.sh)")
    group.addoption("--partial-junit", default=None, help="junit XML rewritten after each test")
    group.addoption("--partial-benchmark-json", default=None,
                    help="benchmarks finished so far, rewritten after each benchmark")


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller writes
        return
    junit = config.getoption("partial_junit")
    bench = config.getoption("partial_benchmark_json")
    if junit or bench:
        config.pluginmanager.register(_Partial(config, junit, bench), "gpu_check_partial")


def _atomic_write(path: str, data: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(data)
    os.replace(tmp, path)


class _Partial:
    def __init__(self, config, junit: str | None, bench: str | None):
        self.config, self.junit, self.bench = config, junit, bench
        self.cases: dict[str, dict] = {}
        self.t0 = time.time()

    def pytest_runtest_logreport(self, report):
        case = self.cases.setdefault(report.nodeid, {"outcome": "passed", "time": 0.0, "msg": ""})
        case["time"] += getattr(report, "duration", 0.0) or 0.0
        if report.skipped and case["outcome"] == "passed":
            case["outcome"] = "skipped"
            case["msg"] = _message(report)
        elif report.failed:
            case["outcome"] = "failure" if report.when == "call" else "error"
            case["msg"] = _message(report)
        if report.when == "teardown":
            if self.bench:
                self._write_benchmarks()
            if self.junit:
                self._write_junit()

    def pytest_sessionfinish(self, session):
        if self.junit:
            self._write_junit()

    def _write_junit(self) -> None:
        counts = {"failure": 0, "error": 0, "skipped": 0}
        root = ET.Element("testsuites")
        suite = ET.SubElement(root, "testsuite", name="pytest")
        for nodeid, c in self.cases.items():
            path, _, name = nodeid.partition("::")
            el = ET.SubElement(suite, "testcase", name=name or path, time=f"{c['time']:.3f}",
                               classname=path.removesuffix(".py").replace("/", "."))
            if c["outcome"] != "passed":
                counts[c["outcome"]] += 1
                ET.SubElement(el, c["outcome"], message=c["msg"][:2000])
        suite.set("tests", str(len(self.cases)))
        suite.set("failures", str(counts["failure"]))
        suite.set("errors", str(counts["error"]))
        suite.set("skipped", str(counts["skipped"]))
        suite.set("time", f"{time.time() - self.t0:.3f}")
        _atomic_write(self.junit, ET.tostring(root, encoding="unicode"))

    def _write_benchmarks(self) -> None:
        session = getattr(self.config, "_benchmarksession", None)
        try:
            done = [b.as_dict(include_data=False) for b in getattr(session, "benchmarks", []) if b]
        except Exception:  # noqa: BLE001 - another pytest-benchmark: its own file still comes
            return
        _atomic_write(self.bench, json.dumps({"benchmarks": done, "partial": True}, default=str))


def _message(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        return str(longrepr[-1])
    text = str(getattr(report, "longreprtext", "") or longrepr or "").strip()
    if not text:
        return ""
    errors = [ln[1:].strip() for ln in text.splitlines() if ln.startswith("E ")]
    return errors[0] if errors else text.splitlines()[-1]
