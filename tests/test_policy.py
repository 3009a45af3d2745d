"""Unit tests of the pure delivery rules (workers/policy.py) and request signing (workers/signing.py)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from webhooks.outcomes import OutcomeClass, classify_status
from webhooks.settings import DEFAULT_RETRY_SCHEDULE, Settings
from workers.policy import (
    count_failures,
    next_delay,
    parse_retry_after,
    should_disable,
)
from workers.signing import redacted, signature_headers, spec_signature, standard_signature

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- classify_status ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_is_success(code: int) -> None:
    assert classify_status(code) is OutcomeClass.SUCCESS


@pytest.mark.parametrize("code", [300, 301, 302, 304, 307, 308, 399])
def test_3xx_is_a_redirect(code: int) -> None:
    assert classify_status(code) is OutcomeClass.REDIRECT


@pytest.mark.parametrize("code", [100, 199, 400, 401, 404, 410, 429, 500, 502, 503, 504, 599])
def test_everything_else_is_an_http_status_failure(code: int) -> None:
    assert classify_status(code) is OutcomeClass.HTTP_STATUS


# -- parse_retry_after -------------------------------------------------------------------------------


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("1", 1.0), (" 30 ", 30.0), ("2.5", 2.5), ("120", 120.0)],
)
def test_retry_after_in_seconds_is_parsed(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Sunday, 01-Mar-26 12:01:00 GMT", 60.0),  # the obsolete RFC 850 form
        ("Sun Mar  1 12:00:05 2026", 5.0),  # the obsolete asctime form
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # passed: no wait of its own
    ],
)
def test_retry_after_as_an_http_date_is_the_time_until_it(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "-1",
        "nan",
        "Wed, 32 Foo 2015 07:28:00 GMT",
        "Wed, 21 Oct 99999 07:28:00 GMT",
        # numbers no datetime holds (OverflowError inside the stdlib parser, not ValueError)
        "Sun, 06 Nov 99999999999999999999 08:49:37 GMT",
        "Sun, 06 Nov 1994 99999999999999999999:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 +99999999999999999999",
    ],
)
def test_retry_after_that_is_missing_negative_or_garbage_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


# -- next_delay --------------------------------------------------------------------------------------


def test_the_default_schedule_is_the_specs_table() -> None:
    # given the schedule a service gets when nothing is configured
    schedule = Settings.model_validate({}).retry_schedule
    delays = [next_delay(schedule, n) for n in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, None]  # 6 attempts, then the delivery fails


def test_a_single_entry_schedule_never_retries() -> None:
    assert next_delay((0.0,), 1) is None


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after_on_429_and_503_lengthens_the_wait(code: int) -> None:
    assert next_delay(DEFAULT_RETRY_SCHEDULE, 1, status=code, retry_after=30) == 30


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after_never_shortens_the_wait(code: int) -> None:
    assert next_delay(DEFAULT_RETRY_SCHEDULE, 4, status=code, retry_after=1) == 8


@pytest.mark.parametrize("code", [None, 400, 500, 502, 504])
def test_retry_after_is_ignored_on_other_answers(code: int | None) -> None:
    assert next_delay(DEFAULT_RETRY_SCHEDULE, 1, status=code, retry_after=30) == 1


def test_retry_after_is_capped() -> None:
    assert next_delay(DEFAULT_RETRY_SCHEDULE, 1, status=429, retry_after=3600) == 60
    assert next_delay(DEFAULT_RETRY_SCHEDULE, 1, status=503, retry_after=3600, retry_after_cap=5) == 5


def test_retry_after_does_not_add_attempts_after_the_last_one() -> None:
    assert next_delay(DEFAULT_RETRY_SCHEDULE, 6, status=429, retry_after=5) is None


# -- count_failures / should_disable ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcomes", "reset", "add"),
    [
        ([], False, 0),
        ([False], False, 1),
        ([False, False, False], False, 3),
        ([True], True, 0),
        ([False, False, True], True, 0),  # the success came last: only the reset counts
        ([False, True, False, False], True, 2),  # failures after the last success start a new count
        ([True, False, True, False], True, 1),
    ],
)
def test_count_failures(outcomes: list[bool], reset: bool, add: int) -> None:
    change = count_failures(outcomes)
    assert (change.reset, change.add) == (reset, add)


def test_should_disable_at_the_threshold() -> None:
    assert not should_disable(0, 10)
    assert not should_disable(9, 10)
    assert should_disable(10, 10)
    assert should_disable(15, 10)


# -- signing -----------------------------------------------------------------------------------------


def test_spec_signature_known_vector() -> None:
    # given the secret as the customer copied it and the body bytes; computed independently with
    # `printf '%s' '{"event":"webhook.test"}' | openssl dgst -sha256 -hmac "$SECRET"`
    body = b'{"event":"webhook.test"}'
    assert spec_signature(SECRET, body) == "ccc16ddd44175b465c8e0531103db6222d8b71b4f2667ff517489aaf9664216e"


def test_spec_signature_is_lowercase_hex_of_the_raw_bytes_keyed_with_the_whole_secret_string() -> None:
    # computed independently: printf '%s' '{"name":"Zoë 🚀"}' | openssl dgst -sha256 -hmac "$SECRET"
    body = '{"name":"Zoë 🚀"}'.encode()
    assert spec_signature(SECRET, body) == "e88e27346875eb9ba750a51f9227810e2fc9fcf96aa3aae9d907633500391a58"


def test_standard_signature_verifies_with_the_standardwebhooks_library() -> None:
    body = '{"event":"job_created","data":{"x":"Ñandú"}}'.encode()
    now = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": standard_signature(SECRET, "msg_1", now, body),
    }
    assert headers["webhook-signature"].startswith("v1,")
    StandardWebhook(SECRET).verify(body, headers)  # raises when invalid
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(SECRET).verify(body + b" ", headers)
    another = "whsec_" + base64.b64encode(b"another-key-of-24-bytes!").decode()
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(another).verify(body, headers)


def test_signature_headers_carry_both_signatures_and_every_secret_in_the_grace_period() -> None:
    old = "whsec_" + base64.b64encode(b"an-older-secret-24-bytes").decode()
    now = int(time.time())
    body = b'{"a":1}'
    headers = signature_headers(
        [SECRET, old], msg_id="d1", timestamp=now, body=body, event="job_created", user_agent="UA/1"
    )
    assert headers["X-Webhook-Signature"] == spec_signature(SECRET, body)  # the current secret only
    assert headers["X-Webhook-Event"] == "job_created" and headers["X-Webhook-Delivery"] == "d1"
    assert headers["webhook-id"] == "d1" and headers["webhook-timestamp"] == str(now)
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"] == "UA/1"
    assert len(headers["webhook-signature"].split(" ")) == 2
    StandardWebhook(SECRET).verify(body, headers)
    StandardWebhook(old).verify(body, headers)


def test_redaction_hides_both_signatures_whatever_their_case() -> None:
    headers = {
        "X-Webhook-Signature": "abc",
        "Webhook-Signature": "v1,xyz",
        "webhook-id": "d1",
        "x-webhook-signature": "def",
    }
    assert redacted(headers) == {
        "X-Webhook-Signature": "[redacted]",
        "Webhook-Signature": "[redacted]",
        "webhook-id": "d1",
        "x-webhook-signature": "[redacted]",
    }
