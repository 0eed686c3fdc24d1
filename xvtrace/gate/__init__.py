"""The regression gate: baselines, the comparison and its verdicts, the pytest plugin."""
