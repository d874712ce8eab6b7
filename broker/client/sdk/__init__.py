"""Client side of the broker: the agent SDK and what MCP servers share with it.

- ``BrokerClient``, ``Task``, ``Credential`` (``broker.client.sdk.client``): tasks as context
  managers, one call per tool-call credential.
- ``McpTools`` (``broker.client.sdk.mcp``, needs ``broker[mcp]``): call the tools of a guarded MCP
  server, a fresh credential per call.
- ``WorkloadCredentials``, ``secure_channel`` (``broker.client.sdk.channel``): X.509-SVID files and
  mutual TLS to the broker.
- Typed errors (``broker.client.sdk.errors``): the broker's reasons as ``broker.core.errors``
classes.
"""

from __future__ import annotations

from broker.client.sdk.channel import WorkloadCredentials, secure_channel
from broker.client.sdk.client import BrokerClient, Credential, Task
from broker.client.sdk.errors import ApprovalPending, BrokerUnavailable, error_from_rpc

__all__ = [
    "ApprovalPending",
    "BrokerClient",
    "BrokerUnavailable",
    "Credential",
    "Task",
    "WorkloadCredentials",
    "error_from_rpc",
    "secure_channel",
]
