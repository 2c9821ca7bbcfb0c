"""The property tests (tests/test_properties_*.py) run long: many more examples than CI runs, from a recorded seed.

Why: CI runs a fixed few hundred examples per property (Hypothesis profile `ci`, derandomized), the
same ones every time; what they have not tried stays untried. This runs the same properties once with
the `ci` profile (the examples and time CI spends) and once with the `long` profile (10,000 examples per
property, drawn from --seed), and reports per property: examples run, how many were invalid (drawn and
discarded), how often an input was read and how often refused (the tests' events), time, and every
failure with its first error line. A failure here is a defect to fix, with its own regular test.

Usage (from the repository root; about 15 minutes on 2 cores)::

    .venv/bin/python bench/bench_fuzz.py [--seed 28] [--skip-ci]

Prints one line per property and a summary, and writes bench/results/fuzz.json. Run as a pytest plugin
(`-p bench_fuzz`) it records each test's outcome and Hypothesis statistics into $BENCH_FUZZ_OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULT = BENCH / "results" / "fuzz.json"
FILES = ("tests/test_properties_params.py", "tests/test_properties_readers.py", "tests/test_properties_archives.py")
# The Hypothesis statistics of one phase (explicit examples, generation, shrinking), as its pytest plugin writes them.
_COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid")
_EVENT = re.compile(r"\* ([\d.]+)%, (.+)")
_OUTPUT_VARIABLE = "BENCH_FUZZ_OUT"


# --------------------------------------------------------------------------- the pytest plugin side

_recorded: dict[str, dict[str, Any]] = {}


def pytest_runtest_logreport(report: Any) -> None:
    entry = _recorded.setdefault(report.nodeid, {"outcome": "passed"})
    if report.when == "call":
        entry["seconds"] = round(report.duration, 2)
    if report.failed:
        entry["outcome"] = "failed"
        lines = [line for line in str(report.longrepr).splitlines() if line.startswith("E ")]
        entry["error"] = lines[0][1:].strip()[:300] if lines else str(report.longrepr).splitlines()[-1][:300]
    stats = report.__dict__.get("_hypothesis_stats")
    if stats:
        entry.update(statistics(stats))


def pytest_sessionfinish(session: Any) -> None:
    output = os.environ.get(_OUTPUT_VARIABLE)
    if output:
        Path(output).write_text(json.dumps(_recorded))


def statistics(text: str) -> dict[str, Any]:
    """Examples, invalid draws and events (the share of each) from Hypothesis' statistics of one test."""
    counts = [tuple(map(int, match)) for match in _COUNTS.findall(text)]
    events = {name.strip(): float(share) for share, name in _EVENT.findall(text) if not name.startswith("Retried")}
    return {
        "examples": sum(passing + failing for passing, failing, _ in counts),
        "failing_examples": sum(failing for _, failing, _ in counts),
        "invalid": sum(invalid for *_, invalid in counts),
        "events_percent": events,
    }


# --------------------------------------------------------------------------- the benchmark side


def run(profile: str, seed: int | None) -> tuple[dict[str, dict[str, Any]], float]:
    """Every property file under `profile`; returns per test what the plugin recorded, and the wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as work:
        output = Path(work, "tests.json")
        command = [sys.executable, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider", "-p", "bench_fuzz"]
        command += ["--hypothesis-profile", profile, "--hypothesis-show-statistics"]
        if seed is not None:
            command += ["--hypothesis-seed", str(seed)]
        env = {
            **os.environ,
            _OUTPUT_VARIABLE: str(output),
            "HYPOTHESIS_PROFILE": profile,  # what tests/conftest.py loads, as --hypothesis-profile does
            "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)]),
        }
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=False)
        wall = time.perf_counter() - started
        return json.loads(output.read_text()), wall


def machine() -> dict[str, Any]:
    """`lscpu`'s model name and the vector and matrix extensions it lists, the cores this process may use."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    return {
        "model": fields.get("Model name", "unknown").strip(),
        "avx512": sorted(flag for flag in flags if flag.startswith("avx512")),
        "amx": sorted(flag for flag in flags if flag.startswith("amx")),
        "cores": len(os.sched_getaffinity(0)),
    }


def profiles() -> dict[str, dict[str, Any]]:
    """The settings of the profiles tests/conftest.py registers."""
    sys.path.insert(0, str(ROOT))
    from hypothesis import settings

    import tests.conftest  # noqa: F401  (registers the profiles)

    return {
        name: {
            "max_examples": settings.get_profile(name).max_examples,
            "deadline_ms": settings.get_profile(name).deadline.total_seconds() * 1000,
            "derandomize": settings.get_profile(name).derandomize,
        }
        for name in ("ci", "long")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=28, help="the long run's Hypothesis seed (CI is derandomized)")
    parser.add_argument("--skip-ci", action="store_true", help="only the long run")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "property tests, long run",
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "command": " ".join(["python", "bench/bench_fuzz.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_average_before": os.getloadavg()[0],
        "profiles": profiles(),
        "seed": args.seed,
        "runs": {},
    }
    for profile in ("ci", "long"):
        if profile == "ci" and args.skip_ci:
            continue
        tests, wall = run(profile, None if profile == "ci" else args.seed)
        result["runs"][profile] = {"wall_seconds": round(wall, 1), "tests": tests}
        for nodeid, entry in tests.items():
            if "examples" in entry:
                print(
                    f"{profile:>4}  {nodeid.split('::')[-1]:<70} {entry['examples']:>6} examples "
                    f"{entry.get('seconds', 0):>7.1f} s  {entry['outcome']}",
                    file=sys.stderr,
                )
    result["load_average_after"] = os.getloadavg()[0]
    failures = [
        {"profile": profile, "test": nodeid, "error": entry.get("error", "")}
        for profile, run_ in result["runs"].items()
        for nodeid, entry in run_["tests"].items()
        if entry["outcome"] == "failed"
    ]
    result["failures"] = failures
    from scratch import write_result  # not at the top: as a pytest plugin this module must not import the tests

    write_result(RESULT, result)
    long = result["runs"].get("long", {"tests": {}, "wall_seconds": 0})
    examples = sum(entry.get("examples", 0) for entry in long["tests"].values())
    print(json.dumps({"examples": examples, "failures": len(failures), "seconds": long["wall_seconds"]}))
    print(
        f"long run: {examples:,} examples over {sum('examples' in e for e in long['tests'].values())} properties "
        f"in {long['wall_seconds']:.0f} s, {len(failures)} failure(s)",
        file=sys.stderr,
    )
    return 0  # failures are results (in the JSON): `make bench` goes on to the next benchmark


if __name__ == "__main__":
    sys.exit(main())
