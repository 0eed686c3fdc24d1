"""Shared fixtures: real captures, synthetic traces, golden files, hypothesis profiles."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI runs as many examples as a developer: at 150 the fast suite took 13 minutes, not 8
# (HYPOTHESIS_PROFILE=nightly goes deeper)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("nightly", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden", action="store_true", help="rewrite golden files from current output"
    )


@pytest.fixture
def golden(request):
    """compare(text, path): assert text equals the golden file (or rewrite it)."""

    def compare(text: str, path: Path) -> None:
        if request.config.getoption("--update-golden") or not path.exists():
            path.write_text(text)
            if not request.config.getoption("--update-golden"):
                pytest.fail(f"golden file {path} was missing and has been written; rerun")
        assert text == path.read_text(), f"output differs from {path} (pytest --update-golden)"

    return compare


@pytest.fixture
def xenalyze():
    exe = shutil.which("xenalyze")
    if exe is None:
        pytest.skip("xenalyze not installed (apt-get install xen-utils-4.17)")
    return exe


# real Xen hosts booted at once: each is one QEMU TCG process using one core and 3 GiB
BOOT_WORKERS = int(os.environ.get("XVT_BOOT_WORKERS", min(2, os.cpu_count() or 1)))


_BOOTS = pytest.StashKey[list]()


def pytest_collection_finish(session):
    """The scenarios the selected tests boot (their `boots` marks), in the order they run."""
    session.config.stash[_BOOTS] = list(dict.fromkeys(
        s for item in session.items for m in item.iter_markers("boots") for s in m.args
    ))  # fmt: skip


@pytest.fixture(scope="session")
def xen_boot(request, tmp_path_factory):
    """boot(scenario) -> its bundle directory: the real Xen test host booted once per
    scenario and session (tests/xen/build_host.py), so every module that checks a scenario
    (test_real_xen, test_validation) shares one boot. The scenarios the selected tests mark
    with `boots` are booted ahead, BOOT_WORKERS at a time in the tests' order, from the
    session's first test on: a boot is one busy core for minutes, the tests another."""
    from build_host import build, run, stop_all

    parts = build()  # once, before any boot reads them
    pool = ThreadPoolExecutor(BOOT_WORKERS, thread_name_prefix="xen-boot")
    booting: dict[str, Future] = {}

    def start(scenario: str) -> Future:
        if scenario not in booting:
            out = tmp_path_factory.mktemp(f"boot-{scenario}")
            booting[scenario] = pool.submit(run, scenario, out, timeout=1200, parts=parts)
        return booting[scenario]

    for scenario in request.config.stash.get(_BOOTS, []):
        start(scenario)
    yield lambda scenario: start(scenario).result()
    pool.shutdown(wait=False, cancel_futures=True)
    stop_all()  # a boot no test waited for (the session stopped early)
    pool.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _boot_ahead(request):
    """Starts the boots with the session when any selected test names one."""
    if request.config.stash.get(_BOOTS, []):
        request.getfixturevalue("xen_boot")
