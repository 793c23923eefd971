"""Errors that stop a run early with a one-line message naming the thing and the fix."""


class SegbenchError(Exception):
    """Base class: caught by the entry points and printed as one line (no traceback)."""


class ConfigError(SegbenchError, ValueError):
    """A configuration value is invalid."""


class DataError(SegbenchError, ValueError):
    """Input data is missing, unreadable or inconsistent."""
