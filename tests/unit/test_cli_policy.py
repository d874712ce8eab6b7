"""``broker policy validate | test | explain`` through click's CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from broker.cli.policy import policy

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "examples" / "dev"
PATHS = ["--policies", str(DEV / "policies"), "--registry", str(DEV / "registry.yaml")]
DEMO = "spiffe://dev.local/agent/demo"


def run(*args: str) -> Result:
    return CliRunner().invoke(policy, list(args), catch_exceptions=False)


def test_validate_ok_prints_a_summary() -> None:
    result = run("validate", *PATHS)
    assert result.exit_code == 0, result.output
    assert "OK: 6 policies in 2 file(s)" in result.stdout
    assert "6 servers, 30 tools, 1 agents" in result.stdout
    assert "tier3-needs-approval (forbid, tiers.cedar)" in result.stdout
    assert "sha256:" in result.stdout


def test_validate_names_the_file_and_the_problem(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(DEV / "policies", policies)
    (policies / "typo.cedar").write_text(
        '@id("typo") forbid (principal, action, resource) when { context.tainted };'
    )
    result = run("validate", "--policies", str(policies), "--registry", str(DEV / "registry.yaml"))
    assert result.exit_code == 1
    assert "policy/typo.cedar" in result.stderr
    assert "tainted" in result.stderr


def test_validate_refuses_a_registry_of_another_trust_domain() -> None:
    result = run("validate", *PATHS, "--trust-domain", "prod.example")
    assert result.exit_code == 1
    assert "servers[0].spiffe_id" in result.stderr


def test_the_dev_cases_pass() -> None:
    result = run("test", "--cases", str(DEV / "policy-cases.yaml"), *PATHS)
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.stdout
    assert "PASS  deploy needs an approval even when clean: approval [tier3-needs-approval]" in (
        result.stdout
    )
    assert result.stdout.rstrip().endswith("passed, 0 failed")


def test_a_mismatched_case_fails_the_run(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        f"""
- name: docs are readable
  agent: {DEMO}
  server: docs
  tool: search_docs
  expect: allow
- name: wrongly expects writes of a suspect task to pass
  agent: {DEMO}
  server: repo
  tool: write_file
  taint: suspect
  expect: allow
- name: names a tool that does not exist
  agent: {DEMO}
  server: repo
  tool: format_disk
  expect: deny
"""
    )
    result = run("test", "--cases", str(cases), *PATHS)
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PASS  docs are readable: allow")
    assert lines[1] == (
        "FAIL  wrongly expects writes of a suspect task to pass: got deny, expected allow "
        "[suspect-read-only]"
    )
    assert lines[2].startswith("FAIL  names a tool that does not exist: unknown tool 'format_disk'")
    assert lines[-1] == "1 passed, 2 failed"


@pytest.mark.parametrize(
    ("case", "key"),
    [
        ("- {name: x, agent: a, server: docs, tool: t, expect: maybe}", "cases[0].expect"),
        ("- {name: x, agent: a, server: docs, tool: t, expect: allow, taint: dirty}", "taint"),
        ("- {name: x, agent: a, server: docs, tool: t, expect: allow, approved: 1}", "approved"),
        ("- {name: x, agent: a, server: docs, tool: t, expect: allow, aproved: true}", "aproved"),
        ("- {name: x, agent: a, server: docs, expect: allow}", "cases[0].tool"),
        ("{name: x}", "cases"),
    ],
)
def test_an_invalid_case_file_names_the_key(tmp_path: Path, case: str, key: str) -> None:
    cases = tmp_path / "cases.yaml"
    cases.write_text(case)
    result = run("test", "--cases", str(cases), *PATHS)
    assert result.exit_code == 1
    assert key in result.stderr


def test_duplicate_case_names_are_refused(tmp_path: Path) -> None:
    cases = tmp_path / "cases.yaml"
    case = f"- {{name: same, agent: {DEMO}, server: docs, tool: search_docs, expect: allow}}\n"
    cases.write_text(case * 2)
    result = run("test", "--cases", str(cases), *PATHS)
    assert result.exit_code == 1
    assert "cases[1].name" in result.stderr


def test_explain_shows_decision_policies_ttl_and_reasons() -> None:
    result = run(
        "explain", "--agent", DEMO, "--server", "deploy", "--tool", "deploy", "--taint",
        "untrusted", *PATHS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "decision: approval" in out
    assert "policies: tier3-needs-approval, tainted-tier2-needs-approval" in out
    assert "ttl cap:  30 s (tier 3" in out
    assert "tier 3 (production): every call needs an operator's approval" in out


def test_explain_approved_and_not_in_plan() -> None:
    result = run(
        "explain", "--agent", DEMO, "--server", "spiffe://dev.local/mcp/deploy", "--tool",
        "rollback", "--approved", "--not-in-plan", "--now", "1800000000", *PATHS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "decision: allow" in result.stdout
    assert "approved yes; in plan no" in result.stdout


def test_explain_an_unknown_server_exits_1() -> None:
    result = run("explain", "--agent", DEMO, "--server", "payments", "--tool", "pay", *PATHS)
    assert result.exit_code == 1
    assert "unknown server 'payments'" in result.stderr


def test_explain_an_unknown_agent() -> None:
    result = run(
        "explain", "--agent", "spiffe://dev.local/agent/nobody", "--server", "docs", "--tool",
        "search_docs", *PATHS,
    )  # fmt: skip
    assert result.exit_code == 0
    assert "decision: deny" in result.stdout
    assert "base-registered-agents-only" in result.stdout
    assert "(not in the registry)" in result.stdout


def test_defaults_are_the_dev_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert run("validate").exit_code == 0
    assert run("test").exit_code == 0
