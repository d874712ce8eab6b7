"""The results: the machine, the figures (medians of the runs), the targets of issue 8 with
pass/miss, the printed table, bench/results.json and the PNG chart."""

from __future__ import annotations

import contextlib
import os
import platform
import ssl
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

REQUIRED_KEYS = (
    "echo_1_rps",
    "echo_16_rps",
    "mint_1_rps",
    "mint_1_p50_ms",
    "mint_1_p99_ms",
    "mint_16_rps",
    "mint_16_p99_ms",
    "verify_online_16_rps",
    "verify_offline_rps",
    "raw_verify_rps",
    "revocation_p50_ms",
    "revocation_p99_ms",
    "redis_bytes_per_credential",
    "openbao_create_1_rps",
    "openbao_create_16_rps",
    "openbao_create_16_p99_ms",
)


@dataclass(frozen=True)
class Target:
    key: str
    what: str
    numerator: str
    denominator: str | None  # None: compare the figure itself
    op: str  # ">=" or "<="
    limit: float
    unit: str = ""

    def value(self, figures: dict[str, Any]) -> float:
        top = float(figures[self.numerator])
        if self.denominator is None:
            return top
        bottom = float(figures[self.denominator])
        return top / bottom if bottom else 0.0

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def margin(self, value: float) -> str:
        """Met or missed, and by how much, in words."""
        ratio = value / self.limit if self.limit else 0.0
        if self.op == ">=":
            if ratio >= 1:
                return f"met ({(ratio - 1) * 100:.0f}% above)"
            return f"missed ({(1 - ratio) * 100:.0f}% short)"
        if ratio <= 1:
            return f"met ({(1 - ratio) * 100:.0f}% under)"
        if ratio >= 2:
            return f"missed ({ratio:.1f}x the limit)"
        return f"missed ({(ratio - 1) * 100:.0f}% over)"


TARGETS = (
    Target(
        "mint16_vs_echo16", "mint@16 / mTLS ceiling@16", "mint_16_rps", "echo_16_rps", ">=", 0.6,
        "x",
    ),
    Target(
        "mint16_vs_openbao16", "mint@16 / OpenBao raft create@16", "mint_16_rps",
        "openbao_create_16_rps", ">=", 2.5, "x",
    ),
    # issue 16: relative to an empty mTLS call at 1 in flight, measured in the same run
    Target(
        "mint1_p50_vs_echo1", "mint@1 p50 / mTLS ceiling@1 p50", "mint_1_p50_ms", "echo_1_p50_ms",
        "<=", 1.5, "x",
    ),
    Target(
        "mint1_p99_vs_echo1", "mint@1 p99 / mTLS ceiling@1 p99", "mint_1_p99_ms", "echo_1_p99_ms",
        "<=", 1.5, "x",
    ),
    Target(
        "offline_vs_raw", "offline verify / raw ES256 verify", "verify_offline_rps",
        "raw_verify_rps", ">=", 0.85, "x",
    ),
    Target(
        "revocation_p99", "revocation to 10 verifiers p99", "revocation_p99_ms", None, "<=",
        20.0, " ms",
    ),
    Target(
        "redis_bytes", "Redis bytes per live credential", "redis_bytes_per_credential", None,
        "<=", 200.0, " B",
    ),
    Target(
        "mcp_gateway_overhead_1", "MCP call via gateway + guard, p50 over direct @1",
        "mcp_gateway_overhead_1_ms", None, "<=", 4.0, " ms",
    ),
    Target(
        "mcp_gateway_vs_proxy_1", "gateway + guard overhead / plain mcp-proxy overhead @1",
        "mcp_gateway_vs_proxy_1_x", None, "<=", 2.0, "x",
    ),
    Target(
        "guard_added_p50", "broker guard: added p50 @1 (server-filesystem read, stdio)",
        "guard_read_stdio_added_p50_ms", None, "<=", 2.0, " ms",
    ),
)  # fmt: skip

GUARD_PAIRS = (
    ("server-everything echo, HTTP upstream", "guard_echo_http"),
    ("server-filesystem read_text_file, stdio upstream", "guard_read_stdio"),
)


MCP_PATHS = (
    ("direct (client -> server-everything)", "mcp_direct"),
    ("plain proxy (mcp-proxy, unauthenticated)", "mcp_proxy"),
    ("broker gateway + guard (credential per call)", "mcp_gateway"),
)


def derive_mcp(figures: dict[str, Any]) -> None:
    """Overheads (p50) over the direct call and over the plain proxy, at 1 and 8 in flight (ms).
    The ratio to the proxy's overhead only means something when the proxy costs anything: a
    proxy that talks stdio to the server can beat the server's own HTTP transport."""
    for n in (1, 8):
        direct = figures.get(f"mcp_direct_{n}_p50_ms")
        proxy = figures.get(f"mcp_proxy_{n}_p50_ms")
        gateway = figures.get(f"mcp_gateway_{n}_p50_ms")
        for path, value in (("proxy", proxy), ("gateway", gateway)):
            if direct is not None and value is not None:
                figures[f"mcp_{path}_overhead_{n}_ms"] = round(value - direct, 3)
        if proxy is not None and gateway is not None:
            figures[f"mcp_gateway_over_proxy_{n}_ms"] = round(gateway - proxy, 3)
    over_proxy = figures.get("mcp_proxy_overhead_1_ms")
    over_gateway = figures.get("mcp_gateway_overhead_1_ms")
    if over_proxy is not None and over_gateway is not None and over_proxy > 0.1:
        figures["mcp_gateway_vs_proxy_1_x"] = round(over_gateway / over_proxy, 2)


def mcp_table(results: dict[str, Any]) -> str:
    lines = [
        "| MCP tool call (echo) | 1 in flight: rate | p50 | p99 | 8 in flight: rate | p50 | p99 "
        "| p50 over direct @1 / @8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, prefix in MCP_PATHS:
        cells = [label]
        for n in (1, 8):
            cells += [
                _fmt(results.get(f"{prefix}_{n}_rps"), "/s"),
                _fmt(results.get(f"{prefix}_{n}_p50_ms"), " ms"),
                _fmt(results.get(f"{prefix}_{n}_p99_ms"), " ms"),
            ]
        path = prefix.removeprefix("mcp_")
        over = [results.get(f"mcp_{path}_overhead_{n}_ms") for n in (1, 8)]
        cells.append(" / ".join(_fmt(o, " ms") for o in over) if path != "direct" else "")
        lines.append("| " + " | ".join(cells) + " |")
    extra = [results.get(f"mcp_gateway_over_proxy_{n}_ms") for n in (1, 8)]
    if extra[0] is not None:
        lines.append(
            f"\ngateway + guard p50 over the plain proxy (same stdio server behind both), "
            f"@1 / @8: {' / '.join(_fmt(e, ' ms') for e in extra)}"
        )
    for t in results.get("targets", []):
        if t["key"].startswith("mcp_"):
            verdict = "not measured" if t["met"] is None else t["detail"]
            wanted = t.get("target", "")
            lines.append(f"\n{t['what']}: {t.get('value', 'n/a')} (wanted {wanted}): {verdict}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from cryptography.hazmat.backends.openssl.backend import backend

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = "unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    return {
        "cores": cores,
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "grpcio": metadata.version("grpcio"),
        "cryptography": metadata.version("cryptography"),
        "openssl": backend.openssl_version_text(),
        "python_ssl": ssl.OPENSSL_VERSION,
        "redis_py": metadata.version("redis"),
        "cedarpy": metadata.version("cedarpy"),
    }


@dataclass(frozen=True)
class CpuSnapshot:
    """Machine-wide busy CPU time (/proc/stat) and this process tree's CPU time (os.times:
    itself and its waited-for children: the broker, its workers, redis-server, OpenBao)."""

    wall: float
    machine_busy: float
    ours: float

    @classmethod
    def take(cls) -> CpuSnapshot:
        import time

        busy = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        return cls(time.monotonic(), busy, ours)

    def others_since(self, start: CpuSnapshot) -> dict[str, float]:
        """How busy the machine was with other work meanwhile, in cores (and percent)."""
        wall = max(self.wall - start.wall, 1e-9)
        cores = os.cpu_count() or 1
        others = max(0.0, (self.machine_busy - start.machine_busy) - (self.ours - start.ours))
        return {
            "other_work_cores": round(others / wall, 2),
            "other_work_percent_of_machine": round(100 * others / wall / cores, 1),
            "bench_cores": round((self.ours - start.ours) / wall, 2),
        }


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def evaluate(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for t in TARGETS:
        try:
            value = t.value(figures)
        except (KeyError, TypeError, ValueError):
            out.append({"key": t.key, "what": t.what, "met": None, "detail": "not measured"})
            continue
        out.append(
            {
                "key": t.key,
                "what": t.what,
                "value": round(value, 3),
                "target": f"{t.op} {t.limit:g}{t.unit}",
                "met": t.met(value),
                "detail": t.margin(value),
            }
        )
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value >= 100:
        return f"{value:,.0f}{unit}"
    if isinstance(value, float) and value >= 10:
        return f"{value:.1f}{unit}"
    if isinstance(value, float):
        return f"{value:.2f}{unit}"
    return f"{value}{unit}"


ROWS = (
    ("mTLS ceiling (Health/Check)", "echo_1", "echo_16"),
    ("mint (RequestCredential)", "mint_1", "mint_16"),
    ("online verify (VerifyCredential)", None, "verify_online_16"),
    ("OpenBao raft token create", "openbao_create_1", "openbao_create_16"),
)


def guard_table(results: dict[str, Any]) -> list[str]:
    """`broker guard` (bench/guard.py): the same tool call direct and through the guard."""
    if not any(f"{p}_guard_1_rps" in results for _, p in GUARD_PAIRS):
        return []
    lines = [
        "| tool call (npm server) | path | 1 in flight: rate | p50 | p99 | 8 in flight: rate "
        "| p50 | p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, prefix in GUARD_PAIRS:
        for path in ("direct", "guard"):
            cells = [label, path]
            for n in (1, 8):
                key = f"{prefix}_{path}_{n}"
                cells += [
                    _fmt(results.get(f"{key}_rps"), "/s"),
                    _fmt(results.get(f"{key}_p50_ms"), " ms"),
                    _fmt(results.get(f"{key}_p99_ms"), " ms"),
                ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"| {label} | guard CPU per call | | "
            f"{_fmt(results.get(f'{prefix}_guard_1_guard_cpu_us'), ' us')} | | | "
            f"{_fmt(results.get(f'{prefix}_guard_8_guard_cpu_us'), ' us')} | |"
        )
        lines.append(
            f"| {label} | added by the guard | | "
            f"{_fmt(results.get(f'{prefix}_added_p50_ms'), ' ms')} | "
            f"{_fmt(results.get(f'{prefix}_added_p99_ms'), ' ms')} | | "
            f"{_fmt(results.get(f'{prefix}_added_8_p50_ms'), ' ms')} | |"
        )
    return [*lines, ""]


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table (printed, and pasted into docs/performance.md)."""
    lines = [
        "| measurement | 1 in flight: rate | p50 | p99 | 16 in flight: rate | p50 | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, one, sixteen in ROWS:
        cells = [label]
        for prefix in (one, sixteen):
            if prefix is None:
                cells += ["", "", ""]
                continue
            cells += [
                _fmt(results.get(f"{prefix}_rps"), "/s"),
                _fmt(results.get(f"{prefix}_p50_ms"), " ms"),
                _fmt(results.get(f"{prefix}_p99_ms"), " ms"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "| CPU time per call, 16 in flight | broker (all workers) | redis-server | load gen. |",
        "|---|---|---|---|",
    ]
    for label, prefix in (
        ("Health/Check", "echo_16"),
        ("RequestCredential", "mint_16"),
        ("VerifyCredential", "verify_online_16"),
    ):
        lines.append(
            f"| {label} | {_fmt(results.get(f'{prefix}_broker_cpu_us'), ' us')} | "
            f"{_fmt(results.get(f'{prefix}_redis_cpu_us'), ' us')} | "
            f"{_fmt(results.get(f'{prefix}_client_cpu_us'), ' us')} |"
        )
    lines += [
        "",
        "| one core, in process | per second |",
        "|---|---|",
        f"| raw ES256 signature verify (cryptography) | {_fmt(results.get('raw_verify_rps'))} |",
        "| offline verify (broker.client.verifier, every check) | "
        f"{_fmt(results.get('verify_offline_rps'))} |",
        "",
        "| other | value |",
        "|---|---|",
        f"| revocation EndTask -> 10 offline verifiers, p50 / p99 | "
        f"{_fmt(results.get('revocation_p50_ms'), ' ms')} / "
        f"{_fmt(results.get('revocation_p99_ms'), ' ms')} |",
        f"| Redis bytes per live credential (MEMORY USAGE) | "
        f"{_fmt(results.get('redis_bytes_per_credential'), ' B')} |",
        f"| Redis used_memory growth per live credential | "
        f"{_fmt(results.get('redis_used_memory_per_credential'), ' B')} |",
        "",
        mcp_table(results).split("\n\n")[0],
        "",
        *guard_table(results),
        "| target | measured | wanted | verdict |",
        "|---|---|---|---|",
    ]
    for t in results.get("targets", []):
        verdict = "not measured" if t["met"] is None else t["detail"]
        lines.append(
            f"| {t['what']} | {t.get('value', 'n/a')} | {t.get('target', '')} | {verdict} |"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Three panels: rates, latencies, and each target as measured / wanted (1 = the line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 5.2), layout="constrained")
    bars = [
        ("ceiling@1", "echo_1_rps", "#9aa5b1"),
        ("mint@1", "mint_1_rps", "#2b7bb9"),
        ("bao@1", "openbao_create_1_rps", "#d9822b"),
        ("ceiling@16", "echo_16_rps", "#9aa5b1"),
        ("mint@16", "mint_16_rps", "#2b7bb9"),
        ("verify@16", "verify_online_16_rps", "#4f9d69"),
        ("bao@16", "openbao_create_16_rps", "#d9822b"),
    ]
    names = [b[0] for b in bars]
    values = [float(results.get(b[1]) or 0) for b in bars]
    ax1.bar(names, values, color=[b[2] for b in bars])
    for i, v in enumerate(values):
        ax1.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax1.set_title("gRPC over mTLS vs OpenBao (raft): calls per second")
    ax1.tick_params(axis="x", rotation=30)

    lat = [
        ("mint@1", "mint_1"),
        ("mint@16", "mint_16"),
        ("verify@16", "verify_online_16"),
        ("bao@1", "openbao_create_1"),
        ("bao@16", "openbao_create_16"),
        ("revocation", "revocation"),
    ]
    x = range(len(lat))
    p50 = [float(results.get(f"{k}_p50_ms") or 0) for _, k in lat]
    p99 = [float(results.get(f"{k}_p99_ms") or 0) for _, k in lat]
    ax2.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#2b7bb9")
    ax2.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#a3c4e0")
    ax2.set_xticks(list(x), [n for n, _ in lat], rotation=30)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms (log)")
    ax2.set_title("latency")
    ax2.legend()

    targets = [t for t in results.get("targets", []) if t.get("met") is not None]
    scores = []
    for t in targets:
        spec = next(s for s in TARGETS if s.key == t["key"])
        v = float(t["value"])
        scores.append(v / spec.limit if spec.op == ">=" else (spec.limit / v if v else 10.0))
    colors = ["#4f9d69" if t["met"] else "#c23030" for t in targets]
    ax3.barh([t["what"] for t in targets], scores, color=colors)
    ax3.axvline(1.0, color="black", linewidth=1)
    for i, (t, sc) in enumerate(zip(targets, scores, strict=True)):
        ax3.text(sc, i, f" {t['value']} ({t['target']})", va="center", fontsize=7)
    ax3.invert_yaxis()
    ax3.set_xlabel("measured / target (>= 1: met)")
    ax3.set_title("issue 8 targets")
    m = results.get("machine", {})
    fig.suptitle(
        f"broker benchmark, {m.get('cores', '?')} cores {m.get('cpu', '')}, "
        f"Python {m.get('python', '?')}, grpcio {m.get('grpcio', '?')}, "
        f"{results.get('generated_at', '')}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions(redis_version: str, openbao_version: str) -> dict[str, str]:
    commit = ""
    root = Path(__file__).resolve().parents[1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=root,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=root,
        ).stdout.strip()
        if commit and dirty:
            commit += " + uncommitted changes"
    return {"redis_server": redis_version, "openbao": openbao_version, "git_commit": commit}


BEGIN_MARK = "<!-- bench results: generated by `python -m bench table --docs` -->"
END_MARK = "<!-- end of bench results -->"


def results_block(results: dict[str, Any]) -> str:
    """The generated part of docs/performance.md: when, where, under what load, the tables."""
    m = results.get("machine", {})
    v = results.get("versions", {})
    other = results.get("machine_during_bench", {})
    s = results.get("settings", {})
    return "\n".join(
        [
            BEGIN_MARK,
            f"Run {results.get('generated_at', '?')} (commit {v.get('git_commit', '?')}), "
            f"{results.get('bench_seconds', '?')} s: {m.get('cores', '?')} cores "
            f"({m.get('cpu', '?')}, {m.get('os', '?')}), Python {m.get('python', '?')}, "
            f"grpcio {m.get('grpcio', '?')}, cryptography {m.get('cryptography', '?')} "
            f"({m.get('openssl', '?')}), redis-py {m.get('redis_py', '?')}, cedarpy "
            f"{m.get('cedarpy', '?')}, redis-server {v.get('redis_server', '?')}, OpenBao "
            f"{v.get('openbao', '?')}. Broker: {s.get('workers', '?')} workers; 16 in flight "
            f"over {s.get('channels_for_16_in_flight', '?')} connections; "
            f"{s.get('runs', '?')} runs of {s.get('seconds_per_run', '?')} s per figure, "
            f"median. Load average before/after: {results.get('load_average_before')} / "
            f"{results.get('load_average_after')}; other work on the machine during the run: "
            f"{other.get('other_work_cores', '?')} cores "
            f"({other.get('other_work_percent_of_machine', '?')}% of it).",
            "",
            table(results),
            END_MARK,
        ]
    )


def update_docs(path: Path, results: dict[str, Any]) -> None:
    """Replace the text between the two marks in ``path`` by ``results_block(results)``."""
    text = path.read_text()
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"{path}: no results block ({BEGIN_MARK!r} ... {END_MARK!r})")
    path.write_text(text[:start] + results_block(results) + text[end + len(END_MARK) :])
