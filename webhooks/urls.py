"""Webhook URL validation (shape and scheme). Address checks live in ``webhooks.ssrf``."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit, urlunsplit

from webhooks.errors import ErrorCode, UserErrors

MAX_URL_LENGTH = 2048


def normalize_url(raw: str, *, allow_http: bool, field: str = "url") -> str:
    """Return the URL in canonical form, or raise ``UserErrors`` saying exactly what is wrong."""

    def refuse(code: ErrorCode, message: str) -> UserErrors:
        return UserErrors.one(field, code, message)

    url = raw.strip()
    if not url:
        raise refuse(ErrorCode.REQUIRED, "url is required")
    if len(url) > MAX_URL_LENGTH:
        raise refuse(ErrorCode.TOO_LONG, f"url must be at most {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise refuse(ErrorCode.INVALID_URL, "url must not contain spaces, control characters or backslashes")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(ErrorCode.INVALID_URL, f"url is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise refuse(ErrorCode.INVALID_URL, "url must be absolute, e.g. https://example.com/webhooks")
    if scheme not in ("https", "http"):
        raise refuse(ErrorCode.HTTPS_REQUIRED, "url must use https")
    if scheme == "http" and not allow_http:
        raise refuse(ErrorCode.HTTPS_REQUIRED, "url must use https (plain http is not allowed)")
    if "@" in parts.netloc:
        raise refuse(ErrorCode.INVALID_URL, "url must not contain user information (user:password@)")
    if parts.fragment or url.endswith("#"):
        raise refuse(ErrorCode.INVALID_URL, "url must not contain a fragment (#...)")
    if port == 0:
        raise refuse(ErrorCode.INVALID_URL, "url must not use port 0")
    host = parts.hostname
    if not host:
        raise refuse(ErrorCode.INVALID_URL, "url must have a host")
    if parts.netloc.startswith("[") and not _is_ipv6(host):  # not a name in brackets, nor an IPvFuture
        raise refuse(ErrorCode.INVALID_URL, "url has brackets around something that is not an IPv6 address")
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True
