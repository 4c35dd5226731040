"""An order whose nonces the CA keeps refusing (Pebble refuses 5 % of them on purpose, and the
``acme`` library retries a request only once) is placed again, a bounded number of times."""

from __future__ import annotations

from typing import Any

import pytest

from stacks.backends import acme_client
from stacks.backends.acme_client import NONCE_ATTEMPTS, IssuedCertificate, NonceRejected


def refusing(times: int, calls: list[int]) -> Any:
    def order(*args: Any, **kwargs: Any) -> IssuedCertificate:
        calls.append(1)
        if len(calls) <= times:
            raise NonceRejected("shop.example.test: the CA refused: badNonce", permanent=False)
        return IssuedCertificate(["shop.example.test"], "chain", "key", "account")

    return order


def test_refused_nonces_place_the_order_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(acme_client, "_obtain_once", refusing(NONCE_ATTEMPTS - 1, calls))
    issued = acme_client.obtain_certificate(None, ["shop.example.test"], directory_url="https://ca.test/dir")  # type: ignore[arg-type]
    assert issued.hosts == ["shop.example.test"] and len(calls) == NONCE_ATTEMPTS


def test_a_ca_that_keeps_refusing_is_a_transient_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(acme_client, "_obtain_once", refusing(NONCE_ATTEMPTS, calls))
    with pytest.raises(NonceRejected) as refused:
        acme_client.obtain_certificate(None, ["shop.example.test"], directory_url="https://ca.test/dir")  # type: ignore[arg-type]
    assert refused.value.permanent is False and len(calls) == NONCE_ATTEMPTS
