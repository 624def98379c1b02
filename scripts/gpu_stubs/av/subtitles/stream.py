"""Placeholder submodule of the PyAV placeholder (see av/__init__.py)."""
from av import __getattr__  # noqa: F401
