"""The gateway re-reads its SVID when the files are replaced (rotation), and keeps the one it
has while the new pair is half written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from broker.adapters.pki import ensure_dev_pki, issue
from broker.client.gateway import tls
from broker.client.gateway.tls import TlsFiles


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ensure_dev_pki(tmp_path)
    return tmp_path


def _bump(*paths: Path) -> None:
    for p in paths:
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))


def test_rotation_is_picked_up_and_a_half_written_pair_is_not(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls, "CHECK_EVERY", 0.0)
    cert, key = tmp_path / "svid.crt", tmp_path / "svid.key"
    shutil.copy(pki / "agent-demo.crt", cert)
    shutil.copy(pki / "agent-demo.key", key)
    files = TlsFiles(pki / "ca.crt", cert, key)
    first = files.credentials.cert
    assert not files.refresh()  # nothing changed

    new_cert, new_key = issue(pki, "spiffe://dev.local/agent/demo", tmp_path / "next")
    shutil.copy(new_cert, cert)  # the certificate first: the key does not match it yet
    _bump(cert)
    assert not files.refresh()
    assert files.generation == 0 and files.credentials.cert == first

    shutil.copy(new_key, key)  # now the pair is whole
    _bump(key)
    assert files.refresh()
    assert files.generation == 1
    assert files.credentials.cert == new_cert.read_bytes()
    assert str(files.credentials.identity().spiffe_id) == "spiffe://dev.local/agent/demo"
