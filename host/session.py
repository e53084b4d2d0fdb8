"""Compatibility: the session moved to host/devices/session.py and RemoteRunner to
host/devices/remote.py. Import from there; this module goes once nothing imports it."""

from __future__ import annotations

from .devices.session import LoadOptions, RemoteRunner, Session

__all__ = ["LoadOptions", "RemoteRunner", "Session"]
