"""Committed results store: one compact JSON record per finished run under ``results/`` (see :mod:`.store`)."""

from reimpl.results.store import RecordMismatch, Store, code_version, make_record, platform_info

__all__ = ["RecordMismatch", "Store", "code_version", "make_record", "platform_info"]
