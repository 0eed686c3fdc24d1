"""Renderers of results: the report (text, JSON, HTML), the replay comparison, Perfetto."""
