"""Tool definition pins (broker.app.toolpins) on the in-memory ports: first sight pins, a change
holds the tool back and is audited once, only registry tools are pinned, re-pins are audited."""

from __future__ import annotations

import pytest

from broker.app.toolpins import ToolPins
from broker.core.audit.record import AuditEventName
from broker.core.errors import InvalidRequest, NotFound, Reason
from broker.core.tooldefs import PinStatus
from tests.unit.app.conftest import AGENT, OPERATOR, Harness, server_peer

FILES = server_peer("files")
A, B, C = "a" * 64, "b" * 64, "c" * 64


async def test_first_sight_pins_registry_tools_only(harness: Harness) -> None:
    pins = ToolPins(harness.broker)
    result = await pins.sync(FILES, {"read_text_file": A, "not_in_registry": B})
    assert result.tools == {
        "read_text_file": PinStatus.PINNED,
        "not_in_registry": PinStatus.UNKNOWN,
    }
    assert result.server.name == "files" and result.server.trusted is True
    assert not result.server.allow_resources and not result.server.allow_prompts
    assert set(await harness.store.tool_pins(str(FILES.spiffe_id))) == {"read_text_file"}
    pinned = harness.events(AuditEventName.TOOL_PINNED)
    assert [(e["tool"], e["extra"]["sha256"]) for e in pinned] == [("read_text_file", A)]
    again = await pins.sync(FILES, {"read_text_file": A})
    assert again.tools == {"read_text_file": PinStatus.MATCH}


async def test_a_change_is_held_back_audited_once_and_repinned_by_an_operator(
    harness: Harness,
) -> None:
    pins = ToolPins(harness.broker)
    await pins.sync(FILES, {"write_file": A})
    for _ in range(3):
        result = await pins.sync(FILES, {"write_file": B})
        assert result.tools["write_file"] is PinStatus.CHANGED
    changed = harness.events(AuditEventName.TOOL_CHANGED)
    assert len(changed) == 1  # once per new definition, not per sync
    assert (changed[0]["extra"]["pinned_sha256"], changed[0]["extra"]["observed_sha256"]) == (A, B)
    await pins.sync(FILES, {"write_file": C})  # yet another definition: audited again
    assert len(harness.events(AuditEventName.TOOL_CHANGED)) == 2

    _, dry = await pins.repin(OPERATOR, "files", "", dry_run=True)
    assert [(p.tool, p.pinned_sha256) for p in dry] == [("write_file", C)]
    assert (await pins.sync(FILES, {"write_file": C})).tools["write_file"] is PinStatus.CHANGED
    _, done = await pins.repin(OPERATOR, "files", "write_file", dry_run=False)
    assert not done[0].changed
    assert (await pins.sync(FILES, {"write_file": C})).tools["write_file"] is PinStatus.MATCH
    repinned = harness.events(AuditEventName.TOOL_REPINNED)
    assert [e["extra"]["dry_run"] for e in repinned] == ["true", "false"]


async def test_bad_input_and_unknown_servers_are_refused(harness: Harness) -> None:
    pins = ToolPins(harness.broker)
    with pytest.raises(InvalidRequest) as bad:
        await pins.sync(FILES, {"read_text_file": "not-hex"})
    assert bad.value.field == "tools.sha256"
    with pytest.raises(NotFound) as unknown:
        await pins.sync(AGENT, {"x": A})  # an agent is no registered MCP server
    assert unknown.value.reason is Reason.UNKNOWN_SERVER
    with pytest.raises(NotFound) as never_seen:
        await pins.repin(OPERATOR, "files", "move_file", dry_run=True)
    assert never_seen.value.reason is Reason.UNKNOWN_TOOL
