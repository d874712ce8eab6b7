"""What crosses MCP between an agent and a guarded server, besides the Bearer credential.

A tool call whose credential is refused inside the tool (wrong tool, other arguments, replayed,
revoked, stale) fails with the JSON-RPC error ``CREDENTIAL_REJECTED``; its message begins with
the reason code and its ``data`` is ``{"domain": "broker.v1", "reason": "<Reason>"}``. A request
without a valid credential never reaches a tool: HTTP 401 (see ``broker.client.mcp.guard``).
"""

from __future__ import annotations

CREDENTIAL_REJECTED = -32001
DOMAIN = "broker.v1"
