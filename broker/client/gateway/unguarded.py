"""What the gateway does with the result of an upstream that does not verify credentials
(``guarded: false``): nobody else sanitizes it or reports it, so the gateway does, before the
model reads it (``broker.core.sanitizer``; the report is AgentService.RaiseTaint)."""

from __future__ import annotations

from typing import Any

from broker.core.sanitizer import SUSPECT, sanitize

MAX_FINDINGS = 20


def clean_result(result: dict[str, Any], findings: list[tuple[str, str]]) -> dict[str, Any]:
    """The result with every text a model reads sanitized; suspect findings collected."""

    def text(value: str) -> str:
        r = sanitize(value)
        for f in r.findings:
            if f.severity == SUSPECT and len(findings) < MAX_FINDINGS:
                findings.append((f.kind, f.detail[:200]))
        return r.text

    def deep(value: Any) -> Any:
        if isinstance(value, str):
            return text(value)
        if isinstance(value, list):
            return [deep(v) for v in value]
        if isinstance(value, dict):
            return {k: deep(v) for k, v in value.items()}
        return value

    out = dict(result)
    content = []
    for item in result.get("content") or ():
        if isinstance(item, dict):
            item = dict(item)
            if isinstance(item.get("text"), str):
                item["text"] = text(item["text"])
            res = item.get("resource")
            if isinstance(res, dict) and isinstance(res.get("text"), str):
                item["resource"] = {**res, "text": text(res["text"])}
        content.append(item)
    if "content" in result:
        out["content"] = content
    if "structuredContent" in result:
        out["structuredContent"] = deep(result["structuredContent"])
    return out
