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
    "ci", parent=settings.get_profile("dev"), suppress_health_check=[HealthCheck.too_slow]
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


# real Xen hosts booted at once. Each is a QEMU whose two vCPU threads (dom0's, the guest's)
# keep two cores busy at times: on 2 cores, two boots side by side took 10-16 minutes each
# instead of 3-6 (a vCPU waiting on the other, descheduled one), no gain over one at a time
BOOT_WORKERS = int(os.environ.get("XVT_BOOT_WORKERS", max(1, (os.cpu_count() or 1) // 4)))
# s a boot may take: 1-6 minutes alone, 10-16 beside another and the tests on 2 cores
BOOT_TIMEOUT = 1200 if BOOT_WORKERS == 1 else 1800


_BOOTS = pytest.StashKey[list]()


def pytest_collection_finish(session):
    """The scenarios to boot ahead: with BOOT_WORKERS > 1, those the selected tests boot
    (their `boots` marks), in the order they run; else none."""
    session.config.stash[_BOOTS] = list(dict.fromkeys(
        s for item in session.items for m in item.iter_markers("boots") for s in m.args
    )) if BOOT_WORKERS > 1 else []  # fmt: skip


@pytest.fixture(scope="session")
def xen_boot(request, tmp_path_factory):
    """boot(scenario) -> its bundle directory: the real Xen test host booted once per
    scenario and session (tests/xen/build_host.py), so every module that checks a scenario
    (test_real_xen, test_validation) shares one boot. With BOOT_WORKERS > 1 the scenarios
    the selected tests mark with `boots` are booted ahead, that many at a time in the
    tests' order, from the session's first test on; with one, each when a test asks for it
    (a boot beside the other tests only slows both)."""
    from build_host import build, run, stop_all

    pool = ThreadPoolExecutor(BOOT_WORKERS, thread_name_prefix="xen-boot")
    booting: dict[str, Future] = {}
    parts: list = []  # built at the first boot, before any boot reads them: the tests of
    # stored captures take this fixture too, and must not need the boot assets

    def start(scenario: str) -> Future:
        if scenario not in booting:
            if not parts:
                parts.append(build())
            out = tmp_path_factory.mktemp(f"boot-{scenario}")
            booting[scenario] = pool.submit(
                run, scenario, out, timeout=BOOT_TIMEOUT, parts=parts[0]
            )
        return booting[scenario]

    for scenario in request.config.stash.get(_BOOTS, []):
        start(scenario)
    yield lambda scenario: start(scenario).result()
    pool.shutdown(wait=False, cancel_futures=True)
    stop_all()  # a boot no test waited for (the session stopped early)
    pool.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _boot_ahead(request):
    """Starts the boots with the session when there are any to boot ahead."""
    if request.config.stash.get(_BOOTS, []):
        request.getfixturevalue("xen_boot")
