"""Shared fixtures: real captures, synthetic traces, golden files, hypothesis profiles."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
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


@pytest.fixture(scope="session")
def xen_boot(tmp_path_factory):
    """boot(scenario) -> its bundle directory: the real Xen test host booted once per
    scenario and session (tests/xen/build_host.py), so every module that checks a scenario
    (test_real_xen, test_validation) shares one boot."""
    from build_host import run

    done: dict[str, Path] = {}

    def boot(scenario: str) -> Path:
        if scenario not in done:
            done[scenario] = run(
                scenario, tmp_path_factory.mktemp(f"boot-{scenario}"), timeout=1200
            )
        return done[scenario]

    return boot
