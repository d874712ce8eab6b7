"""`python -m bench` (what `make bench` runs) and `python -m bench profile`.

    python -m bench [--duration S] [--runs N] [--workers N] [--out bench/results.json]
    python -m bench profile [--seconds S] [--out bench/profile.txt]
    python -m bench table [bench/results.json] [--docs docs/performance.md]
    python -m bench redis-client                    (client CPU of one Redis round trip)
    python -m bench guard                           (only `broker guard` vs direct calls)

Starts redis-server, the broker (Redis store, ``--workers`` = the cores) and OpenBao (raft) in a
temporary directory, measures, prints the table, writes the JSON and the chart, stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from bench import mcp_paths, report, scenarios
from bench.procs import OpenBao, start_broker, start_openbao, start_redis
from bench.scenarios import Context, Settings, median

HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _put(figures: dict[str, Any], name: str, runs: list[dict[str, float]]) -> None:
    figures["runs"][name] = runs
    keys = ("rps", "p50_ms", "p99_ms", "broker_cpu_us", "redis_cpu_us", "client_cpu_us")
    for key in (*keys, "guard_cpu_us"):
        if runs and key in runs[0]:
            figures[f"{name}_{key}"] = round(median(runs, key), 3 if key != "rps" else 1)


def _mcp_registry(directory: Path) -> Path:
    """The dev registry plus the npm servers the MCP paths call (tests/support/gateway.py)."""
    sys.path.insert(0, str(HERE.parent))
    from tests.support.gateway import write_registry

    (directory / "registry").mkdir(parents=True, exist_ok=True)
    return write_registry(directory / "registry")


def _put_mcp(figures: dict[str, Any], name: str, runs: list[dict[str, float]]) -> None:
    """``NAME_1_*`` and ``NAME_8_*`` figures from runs at 1 and 8 in flight."""
    figures["runs"][name] = runs
    for n in mcp_paths.INFLIGHT:
        these = [r for r in runs if r["inflight"] == n]
        for key in ("rps", "p50_ms", "p99_ms"):
            if these and key in these[0]:
                figures[f"{name}_{n}_{key}"] = round(median(these, key), 3 if key != "rps" else 1)


async def measure_mcp(settings: Settings, workers: int, directory: Path) -> dict[str, Any]:
    """Only the MCP paths (``python -m bench mcp``): redis-server, the broker, the paths."""
    figures: dict[str, Any] = {"runs": {}, "machine": report.machine()}
    redis = start_redis(directory / "redis")
    broker = None
    try:
        broker = start_broker(
            directory / "broker",
            f"{redis.url}?namespace=bench",
            workers=workers,
            registry=_mcp_registry(directory),
        )
        results = await mcp_paths.run(broker.target, broker.pki, directory / "mcp", settings, log)
        for name, runs in results.items():
            _put_mcp(figures, name, runs)
    finally:
        if broker is not None:
            broker.stop()
        redis.stop()
    report.derive_mcp(figures)
    figures["targets"] = [t for t in report.evaluate(figures) if t["key"].startswith("mcp_")]
    return figures


async def measure(
    settings: Settings, workers: int, directory: Path, *, offline_tokens: int | None = None
) -> dict[str, Any]:
    """Start everything in ``directory``, run every measurement, return the results."""
    started = time.monotonic()
    cpu_start = report.CpuSnapshot.take()
    figures: dict[str, Any] = {
        "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "load_average_before": report.load_average(),
        "settings": {
            "seconds_per_run": settings.duration,
            "runs": settings.runs,
            "warmup_seconds": settings.warmup,
            "workers": workers,
            "channels_for_16_in_flight": settings.channels,
            "statistic": "median of the runs",
        },
        "runs": {},
    }
    log(f"starting redis-server, OpenBao (raft) and the broker ({workers} workers) in {directory}")
    redis = start_redis(directory / "redis")
    pool = concurrent.futures.ThreadPoolExecutor(1)
    bao_future = pool.submit(start_openbao, directory / "openbao")
    bao: OpenBao | None = None
    broker = None
    try:
        broker = start_broker(
            directory / "broker",
            f"{redis.url}?namespace=bench",
            workers=workers,
            registry=_mcp_registry(directory),
        )
        log(f"broker on {broker.target}, worker pids {broker.worker_pids()}")
        ctx = Context(broker=broker, redis=redis, settings=settings, log=log)

        log("Redis bytes per live credential")
        mem = await scenarios.redis_bytes(ctx)
        figures["runs"]["redis_memory"] = mem
        figures["redis_bytes_per_credential"] = round(mem["memory_usage_per_credential"], 1)
        figures["redis_used_memory_per_credential"] = round(mem["used_memory_per_credential"], 1)

        for n in (1, 16):
            log(f"mTLS ceiling, Health/Check @{n}")
            _put(figures, f"echo_{n}", await scenarios.echo(ctx, n))
        for n in (1, 16):
            log(f"mint, RequestCredential @{n}")
            _put(figures, f"mint_{n}", await scenarios.mint(ctx, n))
        log("online verify, VerifyCredential @16")
        guess = 1.5 * figures["mint_16_rps"]
        _put(figures, "verify_online_16", await scenarios.verify_online(ctx, 16, guess))

        log("raw ES256 verify and offline verify (one core, this process)")
        ctx.tokens.clear()
        probe = scenarios.sign_tokens(ctx, 2000)
        probe_rate = scenarios.timed_loop_rate(probe, 0.5)
        count = offline_tokens or int(probe_rate * max(settings.duration, settings.warmup) * 1.1)
        signed = scenarios.sign_tokens(ctx, max(count, 2000))
        raw, offline = await scenarios.raw_and_offline_verify(ctx, signed)
        _put(figures, "raw_verify", raw)
        _put(figures, "verify_offline", offline)
        del signed, probe

        log("revocation: EndTask -> 10 offline verifiers")
        rev_runs, every = await scenarios.revocation(ctx)
        figures["runs"]["revocation"] = rev_runs
        figures["revocation_p50_ms"] = round(median(rev_runs, "p50_ms"), 3)
        figures["revocation_p99_ms"] = round(median(rev_runs, "p99_ms"), 3)
        figures["revocation_max_ms"] = round(max(every), 3) if every else None

        await measure_guard(ctx, figures)
        log("MCP tool calls: direct, through mcp-proxy, through broker gateway (+ guard)")
        for name, runs in (
            await mcp_paths.run(broker.target, broker.pki, directory / "mcp", settings, log)
        ).items():
            _put_mcp(figures, name, runs)

        bao = bao_future.result()
        for n in (1, 16):
            log(f"OpenBao raft token create @{n}")
            _put(figures, f"openbao_create_{n}", await scenarios.openbao_create(ctx, bao, n))
        figures["versions"] = report.versions(redis.version(), bao.version)
    finally:
        if broker is not None:
            broker.stop()
        if bao is None:
            try:
                bao = bao_future.result(timeout=120)
            except Exception:  # noqa: BLE001 - it failed to start: nothing to stop
                bao = None
        if bao is not None:
            bao.stop()
        pool.shutdown()
        redis.stop()
    figures["load_average_after"] = report.load_average()
    figures["machine_during_bench"] = report.CpuSnapshot.take().others_since(cpu_start)
    report.derive_mcp(figures)
    figures["targets"] = report.evaluate(figures)
    figures["bench_seconds"] = round(time.monotonic() - started, 1)
    return figures


async def measure_guard(ctx: Context, figures: dict[str, Any]) -> None:
    """`broker guard` in front of the npm servers, next to direct calls (bench/guard.py)."""
    from bench.guard import PAIRS, guard_vs_direct

    log("broker guard: tool calls direct and through the guard")
    for name, runs in (await guard_vs_direct(ctx)).items():
        _put(figures, name, runs)
    for prefix in PAIRS:
        for n, tag in ((1, ""), (8, "_8")):
            for q in ("p50", "p99"):
                guard = figures.get(f"{prefix}_guard_{n}_{q}_ms")
                direct = figures.get(f"{prefix}_direct_{n}_{q}_ms")
                if guard is not None and direct is not None:
                    figures[f"{prefix}_added{tag}_{q}_ms"] = round(guard - direct, 3)


async def measure_guard_only(settings: Settings, workers: int, directory: Path) -> dict[str, Any]:
    """`python -m bench guard`: redis-server, the broker, and the guard part only."""
    figures: dict[str, Any] = {"runs": {}, "machine": report.machine()}
    redis = start_redis(directory / "redis")
    broker = None
    try:
        broker = start_broker(directory / "broker", f"{redis.url}?namespace=bench", workers=workers)
        ctx = Context(broker=broker, redis=redis, settings=settings, log=log)
        await measure_guard(ctx, figures)
    finally:
        if broker is not None:
            broker.stop()
        redis.stop()
    figures["targets"] = report.evaluate(figures)
    return figures


def run(args: argparse.Namespace) -> int:
    from broker.rpc.workers import usable_cores

    settings = Settings(
        duration=args.duration,
        runs=args.runs,
        warmup=args.warmup,
        revocation_trials=args.revocation_trials,
        channels=args.channels,
    )
    workers = args.workers or usable_cores()
    directory = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    try:
        results = asyncio.run(
            measure(settings, workers, directory, offline_tokens=args.offline_tokens)
        )
    except BaseException:
        log(f"benchmark failed; logs kept in {directory}")
        raise
    shutil.rmtree(directory, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    if args.chart:
        report.chart(results, Path(args.chart))
    print(report.table(results))
    m = results["machine"]
    print(
        f"\n{m['cores']} cores ({m['cpu']}), Python {m['python']}, grpcio {m['grpcio']}, "
        f"{m['openssl']}; load average before {results['load_average_before']}, "
        f"after {results['load_average_after']}; {results['bench_seconds']} s"
    )
    other = results["machine_during_bench"]
    print(
        f"other work on the machine during the run: {other['other_work_cores']} cores "
        f"({other['other_work_percent_of_machine']}%); the benchmark used {other['bench_cores']}"
    )
    print(f"wrote {out}" + (f" and {args.chart}" if args.chart else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (3)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (3)")
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds (0.5)")
    parser.add_argument("--workers", type=int, default=0, help="broker workers (the cores)")
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--chart", default=str(HERE / "results.png"), help="'' for none")
    parser.add_argument("--channels", type=int, default=4, help="connections for 16 in flight")
    parser.add_argument("--revocation-trials", type=int, default=20, help="EndTasks per run (20)")
    parser.add_argument("--offline-tokens", type=int, default=None, help=argparse.SUPPRESS)
    prof = sub.add_parser("profile", help="py-spy profile of one worker under mint@16 load")
    prof.add_argument("--seconds", type=float, default=8.0)
    prof.add_argument("--workers", type=int, default=0, help="broker workers (the cores)")
    prof.add_argument("--out", default=str(HERE / "profile.txt"))
    prof.add_argument("--keep-raw", default="", help="copy the py-spy samples (collapsed) here")
    sub.add_parser("redis-client", help="client CPU of one Redis round trip, by client")
    sub.add_parser("guard", help="only the broker guard part (redis-server and the broker too)")
    sub.add_parser("mcp", help="only the MCP paths: direct, mcp-proxy, broker gateway + guard")
    table = sub.add_parser("table", help="print the Markdown tables of a results file")
    table.add_argument("results", nargs="?", default=str(HERE / "results.json"))
    table.add_argument(
        "--docs", default="", help="rewrite the results block of this file (docs/performance.md)"
    )
    args = parser.parse_args(argv)
    if args.command == "table":
        results = orjson.loads(Path(args.results).read_bytes())
        if args.docs:
            report.update_docs(Path(args.docs), results)
            print(f"updated the results block of {args.docs}")
        else:
            print(report.table(results))
        return 0
    if args.command == "redis-client":
        from bench import redis_client

        return redis_client.main()
    if args.command == "mcp":
        from broker.rpc.workers import usable_cores

        settings = Settings(duration=args.duration, runs=args.runs, warmup=args.warmup)
        directory = Path(tempfile.mkdtemp(prefix="broker-bench-mcp-"))
        results = asyncio.run(measure_mcp(settings, args.workers or usable_cores(), directory))
        shutil.rmtree(directory, ignore_errors=True)
        print(report.mcp_table(results))
        return 0
    if args.command == "guard":
        from broker.rpc.workers import usable_cores

        settings = Settings(duration=args.duration, runs=args.runs, warmup=args.warmup)
        directory = Path(tempfile.mkdtemp(prefix="broker-bench-"))
        results = asyncio.run(
            measure_guard_only(settings, args.workers or usable_cores(), directory)
        )
        shutil.rmtree(directory, ignore_errors=True)
        print("\n".join(report.guard_table(results)))
        for t in results["targets"]:
            if t["met"] is not None:
                print(f"{t['what']}: {t['value']} ({t['detail']})")
        return 0
    if args.command == "profile":
        from bench.profile import profile

        return profile(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
