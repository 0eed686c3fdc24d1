"""The version of the canonical event schema (parsers.schema) a bundle is written with.

Apart from the schema itself so that writing a bundle's manifest (a live capture, in a
minimal dom0) needs no polars."""

SCHEMA_VERSION = 2
