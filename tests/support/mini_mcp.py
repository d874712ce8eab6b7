"""A minimal stdio MCP server (newline-delimited JSON-RPC, protocol 2025-11-25) for the guard's
tests: the rug pull and crash cases need an upstream the test controls.

    python tests/support/mini_mcp.py DESCRIPTION_FILE

Tools: ``greet`` (read-only; its description is read from DESCRIPTION_FILE on every
tools/list, so a test rewrites the file to change the definition under the same name) and
``crash`` (exits the process with code 3 without answering).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def tools(description_file: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": "greet",
            "description": description_file.read_text().strip(),
            "inputSchema": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
            },
            "annotations": {"readOnlyHint": True},
        },
        {
            "name": "crash",
            "description": "Exit the server without answering.",
            "inputSchema": {"type": "object", "properties": {}},
        },
    ]


def answer(message: dict[str, Any], description_file: Path) -> dict[str, Any] | None:
    method, params = message.get("method"), message.get("params") or {}
    if "id" not in message:
        return None
    if method == "initialize":
        value: dict[str, Any] = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "mini", "version": "1"},
        }
    elif method == "tools/list":
        value = {"tools": tools(description_file)}
    elif method == "tools/call" and params.get("name") == "greet":
        who = (params.get("arguments") or {}).get("name", "")
        value = {"content": [{"type": "text", "text": f"Hello, {who}!"}], "isError": False}
    elif method == "tools/call" and params.get("name") == "crash":
        sys.exit(3)
    elif method == "ping":
        value = {}
    else:
        return {
            "jsonrpc": "2.0",
            "id": message["id"],
            "error": {"code": -32601, "message": f"no method {method}"},
        }
    return {"jsonrpc": "2.0", "id": message["id"], "result": value}


def main() -> None:
    description_file = Path(sys.argv[1])
    print("mini MCP server started", file=sys.stderr, flush=True)
    for line in sys.stdin:
        reply = answer(json.loads(line), description_file)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
