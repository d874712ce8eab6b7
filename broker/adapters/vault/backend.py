"""``SecretBackend`` over hvac: KV v2 reads, dynamic credentials (``MOUNT/creds/ROLE``) and
lease revocation (``PUT sys/leases/revoke/LEASE_ID``, synchronous: when it returns, the
database role is gone).

- https://openbao.org/api-docs/secret/kv/kv-v2/#read-secret-version
- https://openbao.org/api-docs/secret/databases/#generate-credentials
- https://openbao.org/api-docs/system/leases/#revoke-lease (``PUT sys/leases/revoke/:lease_id``)
"""

from __future__ import annotations

from urllib.parse import quote

import orjson

from broker.adapters.vault.client import VaultClient
from broker.app.secrets import DynamicLease
from broker.core.errors import VaultUnavailable
from broker.core.secret import SecretData, SecretSource


class HvacSecretBackend:
    """``SecretBackend`` over the broker's ``VaultClient`` (hvac in its thread pool)."""

    def __init__(self, client: VaultClient) -> None:
        self._client = client

    async def read_kv(self, source: SecretSource) -> SecretData:
        what = source.describe
        resp = await self._client.run(
            what,
            lambda c: c.secrets.kv.v2.read_secret_version(
                path=source.path, mount_point=source.mount, raise_on_deleted_version=True
            ),
        )
        body = resp.get("data") if isinstance(resp, dict) else None
        values = body.get("data") if isinstance(body, dict) else None
        if not isinstance(values, dict):
            raise VaultUnavailable(f"{what}: not a KV version 2 secret")
        wanted = source.fields or tuple(sorted(values))
        missing = [name for name in wanted if name not in values]
        if missing:
            raise VaultUnavailable(f"{what}: field(s) {', '.join(missing)} missing")
        return SecretData({name: _text(values[name]) for name in wanted})

    async def issue_dynamic(self, source: SecretSource) -> DynamicLease:
        what = source.describe
        resp = await self._client.run(what, lambda c: c.read(what))
        if not isinstance(resp, dict) or not isinstance(resp.get("data"), dict):
            raise VaultUnavailable(f"{what}: Vault's answer has no data")
        return DynamicLease(
            data=SecretData({str(k): _text(v) for k, v in resp["data"].items()}),
            lease_id=str(resp.get("lease_id") or ""),
            lease_duration=float(resp.get("lease_duration") or 0),
            renewable=bool(resp.get("renewable")),
        )

    async def revoke_lease(self, lease_id: str) -> None:
        # The lease id in the URL (not the body): a policy can then allow exactly the leases of
        # the broker's roles, path "sys/leases/revoke/database/creds/readonly/*".
        url = f"/v1/sys/leases/revoke/{quote(lease_id, safe='/')}"
        await self._client.run(f"revoke lease {lease_id}", lambda c: c.adapter.put(url))


def _text(value: object) -> str:
    """A KV value as text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()
