"""A real broker on a free port with real certificates, and clients that use them.

The server runs in the test's event loop (grpc.aio) with a FakeClock, the in-memory store and an
in-memory audit sink, so tests can move time and read what was recorded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from broker.adapters.audit.sinks import MemorySink
from broker.adapters.config import Config, load_config
from broker.adapters.pki import ensure_dev_pki
from broker.adapters.store.memory import MemoryStore
from broker.app.audit import Auditor
from broker.app.credentials import Broker
from broker.app.ports import Store
from broker.core.clock import FakeClock
from broker.rpc.app import BrokerServer, build_components

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "examples" / "dev"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ensure_dev_pki(directory)
    return directory


def make_config(pki: Path, **overrides: object) -> Config:
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "trust_domain": "dev.local",
        "registry": str(DEV / "registry.yaml"),
        "policies": str(DEV / "policies"),
        "tls.cert": str(pki / "broker.crt"),
        "tls.key": str(pki / "broker.key"),
        "tls.bundle": str(pki / "ca.crt"),
    }
    base.update(overrides)
    return load_config(None, env={}, overrides=base)


def channel(port: int, pki: Path, name: str | None, *, ca: Path | None = None) -> grpc.aio.Channel:
    root = (ca or pki / "ca.crt").read_bytes()
    if name is None:
        creds = grpc.ssl_channel_credentials(root)
    else:
        creds = grpc.ssl_channel_credentials(
            root, (pki / f"{name}.key").read_bytes(), (pki / f"{name}.crt").read_bytes()
        )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


@dataclass
class Running:
    server: BrokerServer
    port: int
    pki: Path
    clock: FakeClock
    sink: MemorySink
    store: Store
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def broker(self) -> Broker:
        return self.server.components.broker

    def channel(self, name: str | None, directory: Path | None = None) -> grpc.aio.Channel:
        ch = channel(self.port, directory or self.pki, name, ca=self.pki / "ca.crt")
        self._channels.append(ch)
        return ch

    async def close(self) -> None:
        for ch in self._channels:
            await ch.close()
        await self.server.stop(0)


async def start_broker(
    pki: Path, store: Store | None = None, *, auditor: Auditor | None = None, **overrides: object
) -> Running:
    """``auditor``: its first sink must be a MemorySink (``Running.sink``); default: one."""
    import time

    clock = FakeClock(start=time.time())
    auditor = auditor or Auditor("test", [MemorySink()])
    sink = auditor.sinks[0]
    assert isinstance(sink, MemorySink)
    store = store or MemoryStore()
    config = make_config(pki, **overrides)
    components = build_components(config, store=store, auditor=auditor, clock=clock)
    server = BrokerServer(config, components)
    port = await server.start()
    return Running(server, port, pki, clock, sink, store)


@pytest.fixture
async def running(pki: Path) -> AsyncIterator[Running]:
    r = await start_broker(pki)
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
def captured_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog
