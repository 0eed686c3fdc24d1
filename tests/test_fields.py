"""Field accessors (parsers/fields.py): each layout's field read from its own ids only."""

from __future__ import annotations

import polars as pl
import pytest

from xvtrace.parsers import fields
from xvtrace.parsers import xen_events as xe
from xvtrace.parsers.schema import conform


def _rows(rows: list[dict]) -> pl.DataFrame:
    return conform(pl.DataFrame(rows, infer_schema_length=None))


def test_hypercall_number_of_every_pv_hypercall_layout():
    eip = 0xFFFF_8000_1234_5678 & 0xFFFF_FFFF  # low 20 bits 0x45678: not a hypercall number
    df = _rows([
        {"source": "xentrace", "event": "pv.hypercall", "code": 0x00201001, "nargs": 2, "arg0": eip, "arg1": 26},
        {"source": "xentrace", "event": "pv.hypercall", "code": 0x00201101, "nargs": 3, "arg0": eip, "arg1": 0, "arg2": 29},
        {"source": "xentrace", "event": "pv.hypercall", "code": 0x0020100D, "nargs": 1, "arg0": (7 << 20) | 32},
    ])  # fmt: skip
    assert df.select(fields.hypercall())["hypercall"].to_list() == [26, 29, 32]


@pytest.mark.parametrize(
    ("event", "field"),
    sorted({(s.name, f.name) for s in xe.SPECS.values() for f in s.fields if not f.from_code}),
)
def test_a_field_is_null_on_ids_whose_layout_lacks_it(event, field):
    codes = [c for c, s in xe.SPECS.items() if s.name == event]
    df = _rows([{"source": "xentrace", "event": event, "code": c, "nargs": 7}
                | {f"arg{i}": 3 for i in range(7)} for c in codes])  # fmt: skip
    got = df.select(fields.xen(event, field))[field].to_list()
    has = [any(f.name == field for f in xe.SPECS[c].fields) for c in codes]
    assert [v is not None for v in got] == has
