"""Forwarding journal events from the till to the hub (wire protocol, forwarder, hub)."""

from __future__ import annotations

PROTOCOL_VERSION = 1
__all__ = ["PROTOCOL_VERSION"]
