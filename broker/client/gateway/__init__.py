"""`broker gateway`: an MCP server for unmodified MCP clients (Claude Code, Cursor, VS Code, any
SDK) that asks the broker for a credential per tool call and a task per session.

Modules: ``config`` (the YAML file), ``wire`` (MCP/JSON-RPC messages, refusals), ``dispatch``
(both protocol revisions), ``session`` (task, list, call), ``hub`` (what sessions share),
``upstream`` (streamable HTTP to guards), ``broker_link`` (AgentService), ``tls`` (the SVID,
re-read on rotation), ``stdio`` and ``http`` (transports), ``app`` (assembly). See
docs/gateway.md.
"""

from __future__ import annotations

from broker.client.gateway.config import GatewayConfig, UpstreamConfig, load_config

__all__ = ["GatewayConfig", "UpstreamConfig", "load_config"]
