"""pytest plugin: regression tests over captures and baselines (registered as `xvtrace`
through the pytest11 entry point; imports nothing heavy until a fixture is used).

    def test_epam_read_latency(xvtrace_regress):
        xvtrace_regress.check("runs/epam-today/", baseline="baselines/epam.json")

`check` summarizes the candidate (a bundle, a raw capture or a summary), compares it with
the stored baseline and fails with the phase table when a phase regressed. With
`pytest --xvtrace-update-baselines` it writes the candidate's summary as the baseline
instead (review the diff, commit it).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser) -> None:
    group = parser.getgroup("xvtrace")
    group.addoption("--xvtrace-update-baselines", action="store_true", default=False,
                    help="Write candidates' summaries as the baselines instead of comparing.")  # fmt: skip
    group.addoption("--xvtrace-threshold", type=float, default=None,
                    help="Smallest change of a phase median that counts, percent (default 5).")  # fmt: skip


class RegressionFailure(AssertionError):
    """A phase regressed; the message is the phase table."""


class Regress:
    """What the `xvtrace_regress` fixture gives a test."""

    def __init__(self, update: bool, threshold_pct: float | None):
        self.update = update
        self.threshold_pct = threshold_pct

    def summary(self, source) -> dict:
        from xvtrace import api

        return api.baseline(source)

    def check(
        self, candidate, *, baseline, threshold_pct: float | None = None, force: bool = False
    ):
        """Compare `candidate` with the baseline file; returns the comparison."""
        from xvtrace import api
        from xvtrace.gate import regress

        baseline = Path(baseline)
        cand = candidate if isinstance(candidate, dict) else api.baseline(candidate)
        if self.update:
            regress.write(cand, baseline)
            return None
        if not baseline.exists():
            pytest.fail(
                f"{baseline}: no baseline; run pytest --xvtrace-update-baselines to write it"
            )
        t = threshold_pct if threshold_pct is not None else self.threshold_pct
        cmp = regress.compare(regress.read(baseline), cand, force=force,
                              threshold_pct=regress.THRESHOLD_PCT if t is None else t)  # fmt: skip
        if len(cmp.regressed):
            raise RegressionFailure(f"{baseline}:\n" + regress.render_text(cmp))
        return cmp


@pytest.fixture
def xvtrace_regress(request) -> Regress:
    """Compare captures with stored baselines (see the module doc)."""
    cfg = request.config
    return Regress(
        cfg.getoption("--xvtrace-update-baselines"), cfg.getoption("--xvtrace-threshold")
    )


@pytest.fixture
def xvtrace_bundle():
    """Open a bundle (or ingest a raw capture into a temporary one): a callable."""
    from xvtrace import api

    return api.load
