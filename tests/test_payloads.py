"""Webhook bodies: the spec's exact shape and bytes, validation, and the JavaScript round trip."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import random
import struct
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.support import require_tool
from webhooks.errors import ErrorCode, UserError, UserErrors
from webhooks.payloads import (
    MAX_DETAILS_DEPTH,
    MAX_REPORTED_ERRORS,
    MAX_SAFE_INTEGER,
    AuditLog,
    build_event_body,
    build_test_body,
    dumps_js,
    js_key_order,
    js_number,
    normalize_json,
)

NOW = datetime(2024, 1, 20, 10, 30, tzinfo=UTC)
LIMIT = 256 * 1024

# The spec's example payload, as printed in the customer documentation.
SPEC_EXAMPLE = """
{
"event": "job_application_created",
"timestamp": "2024-01-20T10:30:00.000Z",
"data": {
"log": {
"action": "create_application",
"resourceType": "job_application",
"resourceId": "507f1f77bcf86cd799439011",
"userId": "507f191e810c19729de860ea",
"userName": "John Doe",
"userEmail": "john@example.com",
"timestamp": "2024-01-20T10:30:00.000Z"
},
"details": {
"method": "POST",
"path": "/job-applications",
"candidateName": "Jane Smith",
"jobTitle": "Senior Developer"
}
}
}
"""
SPEC_TEST_EXAMPLE = """
{
"event": "webhook.test",
"timestamp": "2024-01-20T10:30:00.000Z",
"data": {
"message": "This is a test webhook",
"webhookId": "507f1f77bcf86cd799439011",
"webhookName": "My Webhook"
}
}
"""
SPEC_DETAILS = {
    "method": "POST",
    "path": "/job-applications",
    "candidateName": "Jane Smith",
    "jobTitle": "Senior Developer",
}


def _compact(pretty: str) -> bytes:
    """The spec's pretty example with the layout whitespace (line breaks, spaces after ':') removed."""
    return "".join(line.strip().replace('": ', '":') for line in pretty.strip().splitlines()).encode()


def _log(**overrides: Any) -> AuditLog:
    values: dict[str, Any] = {
        "action": "create_application",
        "resource_type": "job_application",
        "resource_id": "507f1f77bcf86cd799439011",
        "user_id": "507f191e810c19729de860ea",
        "user_name": "John Doe",
        "user_email": "john@example.com",
        "timestamp": None,
    }
    values.update(overrides)
    return AuditLog(**values)


def _body(
    details: object = None,
    *,
    log: AuditLog | None = None,
    event: str = "job_application_created",
    max_bytes: int = LIMIT,
) -> bytes:
    return build_event_body(event, log or _log(), details, now=NOW, max_bytes=max_bytes)


def _refused(details: object = None, **kwargs: Any) -> list[UserError]:
    with pytest.raises(UserErrors) as caught:
        _body(details, **kwargs)
    return caught.value.errors


def _only(errors: list[UserError]) -> UserError:
    assert len(errors) == 1, errors
    return errors[0]


def _details(body: bytes) -> Any:
    return json.loads(body)["data"]["details"]


# --- shape and bytes ------------------------------------------------------------------------------


def test_given_the_spec_example_when_built_then_the_bytes_are_the_spec_example_compacted() -> None:
    body = _body(SPEC_DETAILS)

    assert body == _compact(SPEC_EXAMPLE)
    assert body == (
        b'{"event":"job_application_created","timestamp":"2024-01-20T10:30:00.000Z","data":{"log":'
        b'{"action":"create_application","resourceType":"job_application",'
        b'"resourceId":"507f1f77bcf86cd799439011","userId":"507f191e810c19729de860ea",'
        b'"userName":"John Doe","userEmail":"john@example.com","timestamp":"2024-01-20T10:30:00.000Z"},'
        b'"details":{"method":"POST","path":"/job-applications","candidateName":"Jane Smith",'
        b'"jobTitle":"Senior Developer"}}}'
    )


def test_given_an_event_when_built_then_keys_follow_the_spec_order() -> None:
    pairs: list[list[str]] = []

    def keep(items: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs.append([key for key, _ in items])
        return dict(items)

    json.loads(_body({"z": 1, "a": 2}), object_pairs_hook=keep)

    assert pairs == [
        ["action", "resourceType", "resourceId", "userId", "userName", "userEmail", "timestamp"],
        ["z", "a"],
        ["log", "details"],
        ["event", "timestamp", "data"],
    ]


def test_given_an_event_when_built_then_it_is_compact_with_no_spaces() -> None:
    body = _body({"list": [1, 2, {"k": "v"}], "nested": {"a": None, "b": True}})

    assert b" " not in body.replace(b"John Doe", b"")
    assert b"\n" not in body
    assert b'"list":[1,2,{"k":"v"}],"nested":{"a":null,"b":true}' in body


def test_given_unicode_when_built_then_it_is_raw_utf8_not_escaped() -> None:
    body = _body({"candidateName": "Zoë 🚀", "city": "東京"}, log=_log(user_name="Zoë 🚀"))

    assert '"userName":"Zoë 🚀"'.encode() in body
    assert '"candidateName":"Zoë 🚀","city":"東京"'.encode() in body
    assert b"\\u" not in body


def test_given_no_log_timestamp_when_built_then_both_timestamps_are_now_with_milliseconds() -> None:
    now = datetime(2024, 1, 20, 10, 30, 5, 123456, tzinfo=UTC)

    payload = json.loads(build_event_body("job_created", _log(), None, now=now, max_bytes=LIMIT))

    assert payload["timestamp"] == "2024-01-20T10:30:05.123Z"
    assert payload["data"]["log"]["timestamp"] == "2024-01-20T10:30:05.123Z"


def test_given_a_log_timestamp_in_another_zone_when_built_then_it_is_written_in_utc() -> None:
    paris = timezone(timedelta(hours=1))
    log = _log(timestamp=datetime(2024, 1, 20, 9, 0, 0, 7000, tzinfo=paris))

    payload = json.loads(_body(log=log))

    assert payload["timestamp"] == "2024-01-20T10:30:00.000Z"
    assert payload["data"]["log"]["timestamp"] == "2024-01-20T08:00:00.007Z"


@pytest.mark.parametrize(("year", "shown"), [(999, "0999"), (42, "0042"), (1, "0001")])
def test_given_a_log_timestamp_before_the_year_1000_when_built_then_its_year_has_four_digits(
    year: int, shown: str
) -> None:
    log = _log(timestamp=datetime(year, 3, 4, 5, 6, 7, tzinfo=UTC))

    payload = json.loads(_body(log=log))

    assert payload["data"]["log"]["timestamp"] == f"{shown}-03-04T05:06:07.000Z"


def test_given_naive_datetimes_when_built_then_they_are_taken_as_utc() -> None:
    naive = datetime(2024, 1, 20, 10, 30)

    payload = json.loads(
        build_event_body("job_created", _log(timestamp=naive), None, now=naive, max_bytes=LIMIT)
    )

    assert payload["timestamp"] == payload["data"]["log"]["timestamp"] == "2024-01-20T10:30:00.000Z"


def test_given_no_details_when_built_then_details_is_an_empty_object() -> None:
    assert _body(None).endswith(b'"details":{}}}')
    assert _body({}).endswith(b'"details":{}}}')


def test_given_padded_text_and_uppercase_ids_when_built_then_they_are_trimmed_and_lowercased() -> None:
    log = _log(
        action="  create_application ",
        user_name=" John Doe\n",
        user_email=" john@example.com ",
        resource_id="507F1F77BCF86CD799439011",
    )

    written = json.loads(_body(log=log))["data"]["log"]

    assert written["action"] == "create_application"
    assert written["userName"] == "John Doe"
    assert written["userEmail"] == "john@example.com"
    assert written["resourceId"] == "507f1f77bcf86cd799439011"


def test_given_a_webhook_when_the_test_body_is_built_then_it_is_the_spec_test_example() -> None:
    body = build_test_body("507f1f77bcf86cd799439011", "My Webhook", now=NOW)

    assert body == _compact(SPEC_TEST_EXAMPLE)
    assert body == (
        b'{"event":"webhook.test","timestamp":"2024-01-20T10:30:00.000Z","data":{"message":'
        b'"This is a test webhook","webhookId":"507f1f77bcf86cd799439011","webhookName":"My Webhook"}}'
    )


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "code"),
    [
        ({"action": ""}, "log.action", ErrorCode.REQUIRED),
        ({"action": "   "}, "log.action", ErrorCode.REQUIRED),
        ({"action": "a" * 201}, "log.action", ErrorCode.TOO_LONG),
        ({"resource_type": "\t"}, "log.resourceType", ErrorCode.REQUIRED),
        ({"resource_type": "r" * 201}, "log.resourceType", ErrorCode.TOO_LONG),
        ({"user_name": ""}, "log.userName", ErrorCode.REQUIRED),
        ({"user_name": "n" * 201}, "log.userName", ErrorCode.TOO_LONG),
        ({"user_email": ""}, "log.userEmail", ErrorCode.REQUIRED),
        ({"user_email": "x" * 309 + "@example.com"}, "log.userEmail", ErrorCode.TOO_LONG),
        ({"user_email": "john.example.com"}, "log.userEmail", ErrorCode.INVALID),
        ({"user_email": "@example.com"}, "log.userEmail", ErrorCode.INVALID),
        ({"user_email": "john@"}, "log.userEmail", ErrorCode.INVALID),
        ({"user_email": "john@doe@example.com"}, "log.userEmail", ErrorCode.INVALID),
        ({"resource_id": "507f1f77bcf86cd79943901"}, "log.resourceId", ErrorCode.INVALID_ID),
        ({"resource_id": "507f1f77bcf86cd79943901g"}, "log.resourceId", ErrorCode.INVALID_ID),
        ({"user_id": ""}, "log.userId", ErrorCode.INVALID_ID),
        ({"user_id": "not-an-id"}, "log.userId", ErrorCode.INVALID_ID),
        ({"user_name": "bad \ud800 name"}, "log.userName", ErrorCode.INVALID),
    ],
)
def test_given_a_bad_log_field_when_built_then_it_is_refused_with_its_path_and_code(
    overrides: dict[str, Any], field: str, code: ErrorCode
) -> None:
    error = _only(_refused(log=_log(**overrides)))

    assert (error.field, error.code) == (field, code)
    assert error.message.startswith(field)


def test_given_limits_exactly_when_built_then_they_are_accepted() -> None:
    log = _log(
        action="a" * 200, resource_type="r" * 200, user_name="n" * 200, user_email="x" * 308 + "@example.com"
    )

    assert len(log.user_email) == 320
    assert json.loads(_body(log=log))["data"]["log"]["action"] == "a" * 200


def test_given_a_bad_id_when_built_then_the_message_explains_the_id_format() -> None:
    error = _only(_refused(log=_log(resource_id="123")))

    assert "must be a 24-character hex id" in error.message


def test_given_an_unknown_event_when_built_then_it_is_refused() -> None:
    error = _only(_refused(event="job_deleted"))

    assert (error.field, error.code) == ("event", ErrorCode.UNKNOWN_EVENT)


@pytest.mark.parametrize("details", [[1, 2], "text", 3, True])
def test_given_details_that_are_not_an_object_when_built_then_they_are_refused(details: object) -> None:
    error = _only(_refused(details))

    assert (error.field, error.code) == ("details", ErrorCode.INVALID)
    assert "JSON object" in error.message


@pytest.mark.parametrize(
    ("details", "field"),
    [
        ({"candidate": {"score": 2**53}}, "details.candidate.score"),
        ({"candidate": {"score": -(2**53)}}, "details.candidate.score"),
        ({"ids": [1, 10**30]}, "details.ids.1"),
    ],
)
def test_given_an_unsafe_integer_when_built_then_it_is_refused_with_advice(
    details: object, field: str
) -> None:
    error = _only(_refused(details))

    assert (error.field, error.code) == (field, ErrorCode.UNSAFE_NUMBER)
    assert "JSON.parse" in error.message
    assert "JavaScript" in error.message
    assert "as a string" in error.message


def test_given_the_largest_safe_integers_when_built_then_they_are_kept_exactly() -> None:
    body = _body({"max": MAX_SAFE_INTEGER, "min": -MAX_SAFE_INTEGER})

    assert b'"details":{"max":9007199254740991,"min":-9007199254740991}' in body


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_given_a_non_finite_float_when_built_then_it_is_refused(value: float) -> None:
    error = _only(_refused({"metrics": {"ratio": value}}))

    assert (error.field, error.code) == ("details.metrics.ratio", ErrorCode.INVALID)


def test_given_a_lone_surrogate_in_a_value_when_built_then_it_is_refused_clearly() -> None:
    error = _only(_refused({"note": ["ok", "half a pair: \udc00"]}))

    assert (error.field, error.code) == ("details.note.1", ErrorCode.INVALID)
    assert "lone surrogate (U+DC00)" in error.message


def test_given_a_lone_surrogate_in_a_key_when_built_then_the_path_is_printable() -> None:
    error = _only(_refused({"bad\ud83dkey": 1}))

    assert error.code is ErrorCode.INVALID
    assert error.field == "details.bad\\ud83dkey"
    error.field.encode("utf-8")
    error.message.encode("utf-8")


def test_given_a_non_string_key_when_built_then_it_is_refused() -> None:
    error = _only(_refused({"scores": {1: "one"}}))

    assert (error.field, error.code) == ("details.scores", ErrorCode.INVALID)
    assert "keys must be strings" in error.message


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", datetime(2024, 1, 1, tzinfo=UTC), object()])
def test_given_a_value_that_is_not_json_when_built_then_it_is_refused(value: object) -> None:
    error = _only(_refused({"x": value}))

    assert (error.field, error.code) == ("details.x", ErrorCode.INVALID)
    assert "not a JSON value" in error.message


def _nested(levels: int) -> dict[str, Any]:
    """An object ``levels`` deep: ``{"n": {"n": ... {}}}``."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def test_given_details_at_the_depth_limit_when_built_then_they_are_accepted() -> None:
    assert _details(_body(_nested(MAX_DETAILS_DEPTH))) == _nested(MAX_DETAILS_DEPTH)


def test_given_details_past_the_depth_limit_when_built_then_the_deepest_level_is_refused() -> None:
    error = _only(_refused(_nested(MAX_DETAILS_DEPTH + 1)))

    assert error.code is ErrorCode.INVALID
    assert error.field == "details" + ".n" * MAX_DETAILS_DEPTH
    assert "nested too deeply" in error.message


def test_given_a_self_referencing_object_when_built_then_it_is_refused_not_recursed_forever() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop

    assert _only(_refused(loop)).code is ErrorCode.INVALID


def test_given_many_problems_when_built_then_all_are_reported_at_once() -> None:
    log = _log(action="", resource_id="x", user_id="y", user_name="n" * 201, user_email="nope")
    details = {"a": math.nan, "b": {"c": 2**60}, "d": ["\ud800"]}

    errors = _refused(details, log=log, event="nope")

    assert [(e.field, e.code) for e in errors] == [
        ("event", ErrorCode.UNKNOWN_EVENT),
        ("log.action", ErrorCode.REQUIRED),
        ("log.resourceId", ErrorCode.INVALID_ID),
        ("log.userId", ErrorCode.INVALID_ID),
        ("log.userName", ErrorCode.TOO_LONG),
        ("log.userEmail", ErrorCode.INVALID),
        ("details.a", ErrorCode.INVALID),
        ("details.b.c", ErrorCode.UNSAFE_NUMBER),
        ("details.d.0", ErrorCode.INVALID),
    ]


def test_given_thousands_of_problems_when_built_then_the_report_is_capped() -> None:
    errors = _refused({"values": [math.nan] * 10_000})

    assert len(errors) == MAX_REPORTED_ERRORS
    assert errors[0].field == "details.values.0"


# --- size limit -----------------------------------------------------------------------------------


def test_given_a_body_exactly_at_the_limit_when_built_then_it_is_accepted() -> None:
    size = len(_body(SPEC_DETAILS))

    assert len(_body(SPEC_DETAILS, max_bytes=size)) == size


def test_given_a_body_over_the_limit_when_built_then_it_is_refused_with_size_and_limit() -> None:
    size = len(_body(SPEC_DETAILS))

    error = _only(_refused(SPEC_DETAILS, max_bytes=size - 1))

    assert (error.field, error.code) == ("details", ErrorCode.PAYLOAD_TOO_LARGE)
    assert str(size) in error.message
    assert str(size - 1) in error.message


def test_given_the_limit_when_measured_then_bytes_not_characters_count() -> None:
    ascii_size = len(_body({"note": "a" * 100}))
    emoji_body = _body({"note": "🚀" * 100})

    assert len(emoji_body) == ascii_size + 300
    assert _only(_refused({"note": "🚀" * 100}, max_bytes=ascii_size)).code is ErrorCode.PAYLOAD_TOO_LARGE


def test_given_an_oversized_and_invalid_body_when_built_then_both_problems_are_reported() -> None:
    errors = _refused({"big": "x" * 5000, "bad": math.nan}, max_bytes=1000)

    assert [(e.field, e.code) for e in errors] == [
        ("details.bad", ErrorCode.INVALID),
        ("details", ErrorCode.PAYLOAD_TOO_LARGE),
    ]


# --- normalization --------------------------------------------------------------------------------


def test_given_integral_floats_when_built_then_they_are_written_as_integers() -> None:
    body = _body({"one": 1.0, "negZero": -0.0, "big": 1e15, "neg": -3.0, "safeMax": float(2**53 - 1)})

    assert (
        b'"details":{"one":1,"negZero":0,"big":1000000000000000,"neg":-3,"safeMax":9007199254740991}' in body
    )


def test_given_floats_when_built_then_they_are_written_as_javascript_writes_them() -> None:
    body = _body({"a": 0.1, "b": 1e-7, "c": 1.5e-6, "d": 1e16, "e": 1e21, "f": 1.5e300, "g": 123456.789})

    assert (
        b'"details":{"a":0.1,"b":1e-7,"c":0.0000015,"d":10000000000000000,"e":1e+21,"f":1.5e+300,'
        b'"g":123456.789}' in body
    )


def test_given_array_index_keys_when_built_then_they_come_first_in_numeric_order_like_javascript() -> None:
    body = _body({"b": 1, "10": 2, "2": 3, "01": 4, "-1": 5, "4294967295": 6, "4294967294": 7, "0": 8})

    assert b'"details":{"0":8,"2":3,"10":2,"4294967294":7,"b":1,"01":4,"-1":5,"4294967295":6}' in body


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-2.5, "-2.5"),
        (0.1, "0.1"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.25e-7, "1.25e-7"),
        (123456.789, "123456.789"),
        (1e20, "100000000000000000000"),
        (1.2345678901234568e20, "123456789012345680000"),
        (1e21, "1e+21"),
        (1.5e300, "1.5e+300"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
    ],
)
def test_given_a_float_when_formatted_then_it_matches_javascript_number_to_string(
    value: float, expected: str
) -> None:
    assert js_number(value) == expected


def test_given_a_non_finite_float_when_formatted_then_it_is_an_error() -> None:
    with pytest.raises(ValueError):
        js_number(math.nan)


def test_given_keys_when_ordered_then_non_index_keys_keep_their_order() -> None:
    assert js_key_order(["b", "a", "c"]) == ["b", "a", "c"]
    assert js_key_order(["b", "3", "a", "1"]) == ["1", "3", "b", "a"]


def test_given_a_nested_value_when_normalized_then_types_are_plain_and_paths_are_used() -> None:
    class Name(str):
        pass

    class Count(int):
        pass

    normalized = normalize_json({"n": Name("x"), "c": Count(3), "t": (1.0, 2.5), "f": False}, "input")

    assert normalized == {"n": "x", "c": 3, "t": [1, 2.5], "f": False}
    assert isinstance(normalized, dict)
    assert type(normalized["n"]) is str
    assert type(normalized["c"]) is int
    assert type(normalized["f"]) is bool
    with pytest.raises(UserErrors) as caught:
        normalize_json({"x": [math.inf]}, "input")
    assert caught.value.errors[0].field == "input.x.0"


def test_given_a_normalized_value_when_dumped_then_floats_use_javascript_notation() -> None:
    assert (
        dumps_js({"a": [1.5e-6, 1e16, 2, None, "é"]})
        == '{"a":[0.0000015,10000000000000000,2,null,"é"]}'.encode()
    )


# --- the real JavaScript round trip ---------------------------------------------------------------


def node_binary() -> str:
    return require_tool("node", hint="apt-get install nodejs: the JSON round trip needs a real JS engine")


# Reads newline-separated JSON documents (compact JSON never holds a raw newline) and writes each back
# as JSON.stringify(JSON.parse(document)), exactly what the spec's Express receiver signs.
_ROUND_TRIP_JS = """
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c)).on('end', () => {
  const docs = Buffer.concat(chunks).toString('utf8').split('\\n');
  process.stdout.write(docs.map((d) => JSON.stringify(JSON.parse(d))).join('\\n'));
});
"""
_HMAC_JS = """
const crypto = require('crypto');
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c)).on('end', () => {
  const payload = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  process.stdout.write(crypto.createHmac('sha256', process.env.WEBHOOK_SECRET)
    .update(JSON.stringify(payload)).digest('hex'));
});
"""


def _node(script: str, stdin: bytes, env: dict[str, str] | None = None) -> bytes:
    done = subprocess.run(
        [node_binary(), "-e", script],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _random_doubles(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    values: list[float] = []
    while len(values) < count:
        value: float = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if math.isfinite(value):
            values.append(value)
    values += [rng.uniform(-1e-4, 1e-4) for _ in range(count // 4)]
    values += [float(rng.randint(-(2**70), 2**70)) for _ in range(count // 4)]
    values += [round(rng.uniform(-1000, 1000), rng.randint(0, 8)) for _ in range(count // 4)]
    return values


def _rich_payloads() -> list[object]:
    controls = "".join(chr(code) for code in range(0x20))
    return [
        SPEC_DETAILS,
        None,
        {
            "controls": controls,
            "quotes": "\"\\/'",
            "del": "\x7f",
            "separators": "\u2028\u2029",
            "bom": "\ufeff",
        },
        {"text": "Zoë 🚀 東京 𝄞 שָׁלוֹם مرحبا e\u0301 👩‍👩‍👧", "🔑": "emoji key", "": "empty key"},
        {
            "floats": [
                0.1,
                1e-7,
                1.5e300,
                123456.789,
                -0.0,
                1.0,
                0.30000000000000004,
                1e-6,
                1.5e-6,
                9.5e-6,
                1e16,
                1e20,
                123456789012345680000.0,
                1e21,
                1.5e21,
                5e-324,
                2.2250738585072014e-308,
                1.7976931348623157e308,
                -2.5e-8,
                2.0**60,
                1e-300,
                4.35e-10,
                1e100,
            ],
            "ints": [0, -1, 1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 2**31, 2**32, 2**32 - 1],
        },
        {
            "b": 1,
            "10": 2,
            "2": 3,
            "01": 4,
            "-1": 5,
            "1.5": 6,
            "4294967294": 7,
            "4294967295": 8,
            "0": 9,
            "__proto__": {"polluted": True},
            "constructor": "c",
            "a.b": 10,
        },
        {
            "deep": _nested(MAX_DETAILS_DEPTH - 1),
            "empty": {"list": [], "object": {}},
            "flags": [True, False, None],
        },
        {"doubles": _random_doubles(4000, seed=20240120)},
    ]


def test_given_rich_payloads_when_round_tripped_through_node_then_the_bytes_are_unchanged() -> None:
    bodies = [_body(details) for details in _rich_payloads()]
    bodies.append(
        _body({"n": 1}, log=_log(user_name="Zoë \u2028 🚀", action="act\x00ion", user_email="zoë@例え.jp"))
    )
    bodies.append(build_test_body("507f1f77bcf86cd799439011", 'Zoë\'s 🚀 "hook" \x01', now=NOW))
    assert all(b"\n" not in body for body in bodies)

    echoed = _node(_ROUND_TRIP_JS, b"\n".join(bodies)).split(b"\n")

    assert len(echoed) == len(bodies)
    for body, back in zip(bodies, echoed, strict=True):
        assert back == body


def test_given_bodies_when_node_verifies_like_the_spec_then_its_hmac_matches_ours() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    bodies = [
        _body(SPEC_DETAILS),
        _body({"name": "Zoë 🚀", "score": 0.1, "ratio": 1.0, "tiny": 1.5e-6, "9": "index key", "big": 1e20}),
        build_test_body("507f1f77bcf86cd799439011", "My Webhook", now=NOW),
    ]

    for body in bodies:
        ours = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        theirs = _node(_HMAC_JS, body, env={"WEBHOOK_SECRET": secret}).decode()
        assert theirs == ours
