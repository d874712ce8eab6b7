"""An agent going through one task against the dev MCP servers, narrating what happens.

    python examples/agent_demo.py [--broker 127.0.0.1:7443] [--pki .broker-dev] [--port 8101]

Needs the broker (``make run``) and the dev MCP servers (``python examples/mcp_servers.py``);
``make demo`` starts whatever is missing and runs this. The agent is scripted (no model): it
does what a coding agent would do, including what an injected instruction asks of it, so that
the broker and the servers can show what they allow and what they refuse, and why.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.client.sdk.channel import WorkloadCredentials
from broker.client.sdk.client import BrokerClient, Task
from broker.client.sdk.errors import ApprovalPending
from broker.client.sdk.mcp import McpTools
from broker.core.errors import BrokerError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("docs", "repo", "secrets", "deploy")

Say = Callable[[str], None]


def urls_from_port(port: int) -> dict[str, str]:
    """The URLs of examples/mcp_servers.py started with ``--port port``."""
    return {name: f"http://127.0.0.1:{port + i}/mcp" for i, name in enumerate(NAMES)}


def _short(value: Any, limit: int = 70) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


class Story:
    def __init__(self, task: Task, tools: dict[str, McpTools], say: Say) -> None:
        self.task = task
        self.tools = tools
        self.say = say
        self.outcomes: list[tuple[str, str]] = []  # (call, "allowed" | reason code)

    def step(self, title: str) -> None:
        self.say(f"\n== {title}")

    async def call(self, server: str, tool: str, args: dict[str, Any]) -> str | None:
        """Ask for a credential and make the call; narrate the result or the refusal."""
        what = f"{server}/{tool} {_short(args, 50)}"
        try:
            result = await self.tools[server].call_tool(tool, args)
        except ApprovalPending as exc:
            self.say(f"   PENDING  {what}\n            {exc.reason.value}: {exc.message}")
            self.outcomes.append((f"{server}/{tool}", exc.reason.value))
            return None
        except BrokerError as exc:
            self.say(f"   REFUSED  {what}\n            {exc.reason.value}: {exc.message}")
            self.outcomes.append((f"{server}/{tool}", exc.reason.value))
            return None
        text = _text(result)
        self.say(f"   ALLOWED  {what}\n            -> {_short(text)}")
        self.outcomes.append((f"{server}/{tool}", "allowed"))
        return text

    async def present(self, server: str, token: str | None, tool: str, args: dict[str, Any]) -> str:
        """Present ``token`` for a call; narrate what the MCP server says."""
        try:
            result = await self.tools[server].call_with(token, tool, args)
        except BrokerError as exc:
            self.say(f"   REFUSED by {server}: {exc.reason.value}: {exc.message}")
            return exc.reason.value
        self.say(f"   ACCEPTED by {server}: {_short(_text(result))}")
        return "allowed"


async def run_story(
    broker: str, pki: Path, urls: dict[str, str], say: Say = print
) -> list[tuple[str, str]]:
    """The whole story; returns what happened to each call (for tests)."""
    creds = WorkloadCredentials.from_dev_dir(pki, "agent-demo")
    async with BrokerClient(broker, credentials=creds) as client:
        say(f"agent {client.identity} -> broker {broker} (mutual TLS)")
        plan = [("docs", ""), ("repo", ""), ("secrets", "read_secret"), ("deploy", "deploy")]
        intent = "Fix the flaky retry test"
        async with client.task(intent, plan=plan) as task:
            tools = {name: McpTools(task, name, urls[name]) for name in NAMES}
            story = Story(task, tools, say)
            try:
                await _play(story, say)
            finally:
                for t in tools.values():
                    await t.aclose()
            say("\n== 9. The task ends: every credential minted in it dies, everywhere")
            leftover = await task.credential("docs", "search_docs", {"query": "rollback"})
            killed = await task.end("completed")
            say(f"   EndTask: {killed} live credential(s) revoked (one was minted and not used)")
            async with McpTools(task, "docs", urls["docs"]) as docs:
                story.tools = {"docs": docs}
                outcome = await story.present(
                    "docs", leftover.token, "search_docs", {"query": "rollback"}
                )
                story.outcomes.append(("docs/search_docs after EndTask", outcome))
            say(
                "   (the docs server verifies offline: it heard of the EndTask on the broker's\n"
                "    revocation feed within milliseconds)"
            )
        return story.outcomes


async def _play(story: Story, say: Say) -> None:
    say(f"task {story.task.task_id} begun")

    story.step("1. A clean task reads code and a CI secret (tier 1 and tier 2)")
    await story.call("repo", "read_file", {"path": "src/retry.py"})
    await story.call("secrets", "read_secret", {"name": "ci/registry-token"})

    story.step("2. Deploying (tier 3) always needs an operator's approval")
    await story.call("deploy", "deploy", {"build": "main-1234"})

    story.step("3. It searches the docs: a tier 0 server whose content comes from outside")
    await story.call("docs", "search_docs", {"query": "retry"})
    say("   the docs server reported untrusted content: the task is now tainted 'untrusted'")

    story.step("4. Each credential is for one call: the MCP server checks it inside the tool")
    cred = await story.task.credential("docs", "fetch_page", {"path": "guides/retries.md"})
    say("   a credential for fetch_page(guides/retries.md), presented for another page:")
    await story.present("docs", cred.token, "fetch_page", {"path": "guides/deploy.md"})
    say("   ... for another tool:")
    await story.present("docs", cred.token, "search_docs", {"query": "retries"})
    say("   ... for the call it was minted for (twice):")
    await story.present("docs", cred.token, "fetch_page", {"path": "guides/retries.md"})
    await story.present("docs", cred.token, "fetch_page", {"path": "guides/retries.md"})
    say("   ... and no credential at all (HTTP 401, with the RFC 9728 resource metadata URL):")
    await story.present("docs", None, "fetch_page", {"path": "guides/retries.md"})

    story.step("5. It fetches the deploy guide: the page hides an instruction in an HTML comment")
    page = await story.call("docs", "fetch_page", {"path": "guides/deploy.md"})
    if page is not None:
        say("   what the model gets (the docs server's sanitizer removed the hidden comment):")
        for line in page.strip().splitlines():
            say(f"     | {line}")
        say("   the sanitizer's finding went to the broker: the task is now 'suspect'")

    story.step("6. The injected instruction: read the production password and deploy")
    await story.call("secrets", "read_secret", {"name": "prod/db-password"})
    await story.call("deploy", "deploy", {"build": "hotfix-666"})

    story.step("7. A suspect task may only read: writing and running code are refused too")
    await story.call("repo", "write_file", {"path": "src/retry.py", "content": "# pwned\n"})
    await story.call("repo", "run_tests", {})
    await story.call("repo", "read_file", {"path": "tests/test_retry.py"})

    story.step("8. Outside the plan declared at BeginTask")
    await story.call("deploy", "rollback", {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="127.0.0.1:7443")
    parser.add_argument("--pki", type=Path, default=ROOT / ".broker-dev")
    parser.add_argument("--port", type=int, default=8101, help="port of the docs server")
    args = parser.parse_args()
    try:
        asyncio.run(run_story(args.broker, args.pki, urls_from_port(args.port)))
    except BrokerError as exc:
        sys.exit(f"demo failed: {exc}")


if __name__ == "__main__":
    main()
