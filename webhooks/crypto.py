"""Signing secrets and API keys: generation, hashing, and encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from collections import OrderedDict
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from webhooks.settings import Settings

log = logging.getLogger(__name__)

SIGNING_SECRET_PREFIX = "whsec_"
API_KEY_PREFIX = "hbk_"
PORTAL_TOKEN_PREFIX = "hbp_"
KEY_FILE_NAME = "secret-keys"
# Decrypted tokens kept per process: a worker signs every attempt with its webhook's secrets, and Fernet
# (an HMAC check and an AES decryption) was ~6 % of its CPU in bench P1. A token's plaintext never changes,
# and a rotated secret is a new token, so entries never go stale; the bound only caps memory.
DECRYPTED_CACHE = 4096


def new_signing_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (Standard Webhooks format)."""
    return SIGNING_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_portal_token() -> str:
    return PORTAL_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """API keys carry 256 random bits, so a plain SHA-256 is a safe, constant-time-lookup hash."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class SecretBox:
    """Encrypts signing secrets at rest with Fernet keys, newest first (MultiFernet)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._keys = keys
        fernets = [Fernet(k.encode("ascii")) for k in keys]
        self._newest = fernets[0]
        self._fernet = MultiFernet(fernets)
        self._decrypted: OrderedDict[str, str] = OrderedDict()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        plaintext = self._decrypted.get(token)
        if plaintext is not None:
            self._decrypted.move_to_end(token)
            return plaintext
        try:
            plaintext = self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken as exc:
            raise RuntimeError("a signing secret cannot be decrypted with the configured keys") from exc
        self._decrypted[token] = plaintext
        if len(self._decrypted) > DECRYPTED_CACHE:
            self._decrypted.popitem(last=False)
        return plaintext

    def rotate(self, token: str) -> str:
        """Re-encrypt with the newest key."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")

    def is_current(self, token: str) -> bool:
        """True if ``token`` is already encrypted with the newest key."""
        try:
            self._newest.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def rewrap(self, token: str) -> str | None:
        """``token`` re-encrypted with the newest key, or None if it already is (idempotent rotation).

        Raises ``RuntimeError`` if no configured key can decrypt it.
        """
        if self.is_current(token):
            return None
        try:
            return self.rotate(token)
        except InvalidToken as exc:
            raise RuntimeError("a signing secret cannot be decrypted with the configured keys") from exc


def load_secret_box(settings: Settings) -> SecretBox:
    """Keys from ``WEBHOOKS_SECRET_KEYS``; else the key file in the data directory (created once)."""
    if settings.secret_keys:
        return SecretBox(list(settings.secret_keys))
    path = Path(settings.data_dir) / KEY_FILE_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(Fernet.generate_key().decode("ascii") + "\n")
        log.warning("WEBHOOKS_SECRET_KEYS is not set: generated an encryption key in %s", path)
    keys = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return SecretBox(keys)
