"""TransitSigner without a network: concurrent signatures share requests, Transit's answers are
checked (version, encoding, length), errors reach exactly the mints they concern."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from broker.adapters.vault._http import HttpError
from broker.adapters.vault.config import AuthMethod, TransitConfig, VaultAuth, VaultConfig
from broker.adapters.vault.transit_sign import TransitSigner
from broker.core.errors import Reason, VaultUnavailable
from broker.core.tokens.jwk import SigningKey
from broker.core.tokens.jws import b64url_encode

KEY = SigningKey.generate("ES256")


POOL = ThreadPoolExecutor(2, thread_name_prefix="fake-vault")


@pytest.fixture(autouse=True, scope="module")
def _pool() -> Iterator[None]:
    yield
    POOL.shutdown(wait=True)


class FakeClient:
    config = VaultConfig(addr="http://127.0.0.1:1", auth=VaultAuth(AuthMethod.TOKEN))
    pool = POOL

    def token(self, reason: Reason = Reason.SECRET_UNAVAILABLE) -> str:
        return "t"

    async def in_thread(self, fn: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)


class FakeTransit:
    """Answers sign requests like Transit, signing with KEY as version ``version``."""

    def __init__(self, version: int = 1) -> None:
        self.version = version
        self.bodies: list[dict[str, Any]] = []
        self.fail_input: bytes | None = None
        self.status: int | None = None
        self.errors: list[str] = []

    def post(self, path: str, body: dict[str, Any], token: str) -> dict[str, Any]:
        self.bodies.append(body)
        if self.status is not None:
            raise HttpError(self.status, self.errors)
        items = body.get("batch_input") or [{"input": body["input"]}]
        results = [self._one(base64.b64decode(item["input"])) for item in items]
        return {"data": {"batch_results": results} if "batch_input" in body else results[0]}

    def _one(self, data: bytes) -> dict[str, Any]:
        if data == self.fail_input:
            return {"error": "boom"}
        return {"signature": f"vault:v{self.version}:{b64url_encode(KEY.sign(data))}"}

    def close(self) -> None:
        pass


def signer(transit: FakeTransit, stale: list[int] | None = None) -> TransitSigner:
    s = TransitSigner(
        FakeClient(),  # type: ignore[arg-type]
        TransitConfig(key="k"),
        alg="ES256",
        on_stale=lambda: (stale if stale is not None else []).append(1),
    )
    s._http = transit  # type: ignore[assignment]
    return s


async def test_concurrent_signatures_share_one_request() -> None:
    transit = FakeTransit()
    s = signer(transit)
    inputs = [f"input {i}".encode() for i in range(20)]
    signatures = await asyncio.gather(*(s.sign(1, x) for x in inputs))
    assert len(transit.bodies) == 1 and len(transit.bodies[0]["batch_input"]) == 20
    assert transit.bodies[0]["marshaling_algorithm"] == "jws"
    assert transit.bodies[0]["key_version"] == 1
    for data, sig in zip(inputs, signatures, strict=True):
        KEY.public_key._verify(data, sig)  # raises if it does not verify
    await s.aclose()


async def test_one_failed_item_fails_only_its_mint() -> None:
    transit = FakeTransit()
    transit.fail_input = b"bad"
    s = signer(transit)
    results = await asyncio.gather(
        s.sign(1, b"good"), s.sign(1, b"bad"), s.sign(1, b"also good"), return_exceptions=True
    )
    assert isinstance(results[0], bytes) and isinstance(results[2], bytes)
    assert isinstance(results[1], VaultUnavailable)
    assert results[1].reason is Reason.SIGNING_UNAVAILABLE
    await s.aclose()


async def test_a_signature_of_another_version_is_refused() -> None:
    s = signer(FakeTransit(version=2))
    with pytest.raises(VaultUnavailable, match="another key version"):
        await s.sign(1, b"x")
    await s.aclose()


async def test_a_version_that_may_no_longer_sign_rereads_the_key() -> None:
    transit = FakeTransit()
    transit.status, transit.errors = 500, ["requested version for signing is less than the min"]
    stale: list[int] = []
    s = signer(transit, stale)
    with pytest.raises(LookupError):
        await s.sign(1, b"x")
    assert stale == [1]
    await s.aclose()


@pytest.mark.parametrize(("status", "text"), [(403, "permission denied"), (503, "HTTP 503")])
async def test_vault_errors_fail_closed(status: int, text: str) -> None:
    transit = FakeTransit()
    transit.status = status
    s = signer(transit)
    with pytest.raises(VaultUnavailable, match=text) as exc:
        await s.sign(1, b"x")
    assert exc.value.reason is Reason.SIGNING_UNAVAILABLE
    await s.aclose()


async def test_an_unreachable_vault_fails_closed() -> None:
    s = TransitSigner(
        FakeClient(),  # type: ignore[arg-type]
        TransitConfig(key="k"),
        alg="ES256",
        on_stale=lambda: None,
    )
    with pytest.raises(VaultUnavailable, match="unreachable"):
        await s.sign(1, b"x")  # nothing listens on port 1
    await s.aclose()
