"""Traces: one event schema, a JSON Lines recorder with an offset index, readers, exporters.

Neutral ground: the TEE records inside views, the host and the attacks record outside views
and attack actions; the viewer reads them all.
"""
