"""Vault (or OpenBao) at the broker's edge: signing keys in Transit and just-in-time downstream
secrets handed to MCP servers as leases that die with the task.

    secret.py    SecretData (repr ``[secure]``), IssuedSecret, SecretSource and its registry
                 syntax (pure: no I/O, imported by the registry and the core)
    config.py    the ``vault:`` section of the broker config (pure)
    client.py    VaultClient: hvac in a thread pool, authentication (token, AppRole, TLS cert)
                 and renewal, errors translated to ``VaultUnavailable``
    _http.py     the lean HTTP path of the per-mint Transit sign (stdlib http.client)
    transit.py   TransitKeyProvider: the KeyProvider whose private keys never leave Vault
    transit_sign.py  TransitSigner: concurrent signatures batched into Transit requests
    leases.py    LeaseRecord and the LeaseTracker port (in-memory implementation)
    secrets.py   SecretBroker: issue a secret for a verified call, revoke the task's leases,
                 retry failed revocations; the SecretBackend port (no hvac)
    backend.py   HvacSecretBackend: KV v2, MOUNT/creds/ROLE, lease revocation
    runtime.py   wiring from config, and the background loops (renewal, key refresh, reaper,
                 revocation feed)

Only ``client.py``, ``_http.py``, ``transit*.py``, ``backend.py`` and ``runtime.py`` touch hvac
or the network; importing this package, ``secret``, ``config``, ``leases`` or ``secrets`` does
not import hvac (the core and the registry import those).
"""
