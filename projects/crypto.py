"""Encryption of stored secrets (customer secrets, generated passwords): Fernet from the
``cryptography`` package with key rotation (``MultiFernet``: the first key encrypts, every
key decrypts). Keys come from ``settings.ENCRYPTION_KEYS``."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k.encode()) for k in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.ENCRYPTION_KEYS))


def encrypt(value: str) -> bytes:
    return _current().encrypt(value.encode())


def decrypt(token: bytes | memoryview) -> str:
    try:
        return _current().decrypt(bytes(token)).decode()
    except InvalidToken as exc:
        raise ValueError("stored secret cannot be decrypted with the configured keys") from exc
