"""Many captures: batch runs of the per-bundle pipeline into a run store, and each phase's
history over the runs with its change points."""
