"""Internals of :mod:`broker.sanitizer`; import the public API from there, not from here."""
