"""Ground floor: the canonical event schema and one decoder module per source format.

Nothing here imports from the rest of xvtrace; the floors above build on these frames.
"""
