"""Broker credentials for MCP servers written with the MCP Python SDK (``pip install
'broker[mcp]'``): ``ToolGuard`` (per-tool check, sanitizer, outcome) and
``BrokerTokenVerifier`` (the SDK's bearer check). See ``broker.client.mcp.guard`` and
docs/mcp.md."""

from __future__ import annotations

from broker.client.mcp.guard import BrokerTokenVerifier, ToolGuard
from broker.client.mcp.wire import CREDENTIAL_REJECTED

__all__ = ["CREDENTIAL_REJECTED", "BrokerTokenVerifier", "ToolGuard"]
