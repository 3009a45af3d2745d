"""SSRF through the real API and worker, with the production default (private destinations refused).

Names resolve through an injected resolver (``webhooks.core.resolver_factory``), so the tests control
DNS answers exactly, including a name that changes its answer between creation and delivery.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from bson import ObjectId

import webhooks.core
from tests.conftest import make_settings
from tests.receiver import Receiver, run_receiver, status
from tests.support import Account, Stack, run_stack
from webhooks.db import raw_collections
from webhooks.outcomes import OutcomeClass
from webhooks.ssrf import IPAddress
from workers.sender import Sender

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id url } secret errors { field code message } }
}"""
UPDATE = """
mutation($id: ID!, $input: UpdateWebhookInput!) {
  updateWebhook(id: $id, input: $input) { webhook { id url } errors { field code message } }
}"""
TEST = "mutation($id: ID!) { testWebhook(id: $id) { delivery { id } errors { field code message } } }"
DELIVERY = """
query($id: ID!) {
  delivery(id: $id) {
    status
    attempts { number statusCode responseHeaders responseBody errorClass error }
  }
}"""


class TableResolver:
    """DNS with fixed answers that a test may change; unknown names do not resolve."""

    def __init__(self) -> None:
        self.table: dict[str, list[IPAddress]] = {}
        self.lookups: list[str] = []

    def set(self, host: str, *addresses: str) -> None:
        self.table[host] = [ipaddress.ip_address(a) for a in addresses]

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        try:
            return list(self.table[host.lower().rstrip(".")])
        except KeyError:
            raise OSError(f"{host} does not resolve") from None


RESOLVER = TableResolver()


@pytest.fixture(scope="module")
def _patched_resolver() -> Iterator[TableResolver]:
    saved = webhooks.core.resolver_factory
    webhooks.core.resolver_factory = lambda: RESOLVER
    RESOLVER.set("hooks.example.com", "93.184.216.34")
    RESOLVER.set("metadata.google.internal", "169.254.169.254")
    RESOLVER.set("intranet.example.com", "10.1.2.3")
    RESOLVER.set("dual.example.com", "93.184.216.34", "fd00::1")
    RESOLVER.set("v6.example.com", "2606:4700::1111")
    try:
        yield RESOLVER
    finally:
        webhooks.core.resolver_factory = saved


@pytest.fixture(scope="module")
async def stack(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory, _patched_resolver: TableResolver
) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("ssrf"),
        allow_private_destinations=False,
        allow_http=False,
        retry_schedule=(0.0,),
        queue_name="webhooks:ssrf-test",
    )
    async with run_stack(settings) as running:
        yield running


@pytest.fixture
async def acct(stack: Stack) -> Account:
    return await stack.account()


def webhook_input(url: str) -> dict[str, Any]:
    return {"name": "ssrf", "url": url, "events": ["JOB_APPLICATION_CREATED"]}


async def create(acct: Account, url: str) -> dict[str, Any]:
    payload: dict[str, Any] = (await acct.gql.execute(CREATE, {"input": webhook_input(url)}))["createWebhook"]
    return payload


REFUSED_AS_FORBIDDEN = [
    ("https://2130706433/", "127.0.0.1"),
    ("https://0x7f.1/", "127.0.0.1"),
    ("https://0x7f000001/", "127.0.0.1"),
    ("https://017700000001/", "127.0.0.1"),
    ("https://0177.0.0.1/", "127.0.0.1"),
    ("https://127.1/", "127.0.0.1"),
    ("https://127.0.0.1./", "127.0.0.1"),
    ("https://[::1]/", "::1"),
    ("https://[::ffff:127.0.0.1]/", "IPv4-mapped loopback"),
    ("https://[::ffff:7f00:1]/", "IPv4-mapped loopback"),
    ("https://[64:ff9b::a9fe:a9fe]/", "NAT64 cloud metadata"),
    ("https://１２７.０.０.１/", "127.0.0.1"),
    ("https://169.254.169.254/latest/meta-data", "metadata"),
    ("https://[fd00:ec2::254]/", "metadata"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://10.0.0.1:8443/hook", "private"),
    ("https://192.168.1.1/", "private"),
    ("https://100.64.0.1/", "CGNAT"),
    # names: the reason, never the address (customers must not learn what internal names resolve to)
    ("https://metadata.google.internal/computeMetadata/v1/", "cloud metadata address"),
    ("https://intranet.example.com/", "private address"),
    ("https://dual.example.com/", "unique local (private) address"),  # one bad address is enough
]
RESOLVED = {
    "metadata.google.internal": "169.254.169.254",
    "intranet.example.com": "10.1.2.3",
    "dual": "fd00::1",
}


@pytest.mark.parametrize(("url", "mentioned"), REFUSED_AS_FORBIDDEN)
async def test_non_public_destinations_are_refused_at_creation(
    stack: Stack, acct: Account, url: str, mentioned: str
) -> None:
    payload = await create(acct, url)
    assert payload["webhook"] is None and payload["secret"] is None
    [error] = payload["errors"]
    assert (error["field"], error["code"]) == ("url", "FORBIDDEN_DESTINATION")
    assert "forbidden webhook destination" in error["message"]
    assert mentioned in error["message"]
    assert not any(name in url and address in error["message"] for name, address in RESOLVED.items())
    assert await raw_collections(stack.core).webhooks.count_documents({"account_id": ObjectId(acct.id)}) == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://good@127.0.0.1/",  # user-info
        "https://good:pw@hooks.example.com/",
        "https://127.0.0.1\\@good.com/",  # backslash
        "https://hooks.example.com\\@127.0.0.1/",
        "https://hooks.example.com /x",  # whitespace
        "https://hooks.example.com/\x00",  # control characters
        "https://hooks.example.com\t/",
        "https://hooks.example.com\r\nX-Injected: 1/",
        "https://unknown-name.invalid/",  # does not resolve
        "https://[fe80::1%25eth0]/",  # zone id
        "https://[fe80::1]/",
        "https://[hooks.example.com]/",  # brackets hold IPv6 addresses only: not a name
        "https://[v1.x]/",  # nor an IPvFuture literal
        "http://hooks.example.com/",  # plain http (off by default)
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
    ],
)
async def test_url_tricks_are_refused(stack: Stack, acct: Account, url: str) -> None:
    payload = await create(acct, url)
    assert payload["webhook"] is None
    assert payload["errors"], url
    assert {e["code"] for e in payload["errors"]} <= {
        "INVALID_URL",
        "FORBIDDEN_DESTINATION",
        "HTTPS_REQUIRED",
    }
    assert all(e["field"] == "url" and e["message"] for e in payload["errors"])
    assert await raw_collections(stack.core).webhooks.count_documents({"account_id": ObjectId(acct.id)}) == 0


async def test_an_ipvfuture_literal_is_refused_as_such_and_never_looked_up(
    stack: Stack, acct: Account
) -> None:
    # when a URL holds an IPvFuture literal (which Python's URL parser lets through, as "v1.x")
    payload = await create(acct, "https://[v1.x]/")
    # then it is refused for what it is, not rewritten into the host name v1.x and looked up in DNS
    assert [(e["code"], "brackets" in e["message"]) for e in payload["errors"]] == [("INVALID_URL", True)]


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/hatchbeacon",
        "https://HOOKS.example.com./x",
        "https://v6.example.com/",
        "https://93.184.216.34/",
        "https://[2606:4700::1111]/",
        "https://[64:ff9b::808:808]/",  # NAT64 of 8.8.8.8: a public IPv4 address
    ],
)
async def test_public_destinations_are_accepted(stack: Stack, acct: Account, url: str) -> None:
    payload = await create(acct, url)
    assert payload["errors"] == []
    assert payload["webhook"]["url"].startswith("https://")


async def test_update_to_a_forbidden_destination_is_refused_and_nothing_changes(
    stack: Stack, acct: Account
) -> None:
    webhook = (await create(acct, "https://hooks.example.com/a"))["webhook"]
    before = await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(webhook["id"])})
    for url in ("https://169.254.169.254/", "https://metadata.google.internal/", "https://2130706433/"):
        payload = (await acct.gql.execute(UPDATE, {"id": webhook["id"], "input": {"url": url}}))[
            "updateWebhook"
        ]
        assert payload["webhook"] is None
        assert [(e["field"], e["code"]) for e in payload["errors"]] == [("url", "FORBIDDEN_DESTINATION")]
    assert await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(webhook["id"])}) == before


async def test_an_unchanged_url_sent_back_with_an_edit_is_not_resolved_again(
    stack: Stack, acct: Account
) -> None:
    # given a webhook whose host stopped resolving after it was created (an outage, a migration)
    RESOLVER.set("gone.example.com", "93.184.216.34")
    webhook = (await create(acct, "https://gone.example.com/hook"))["webhook"]
    RESOLVER.set("gone.example.com")
    # when the customer renames it with a form that sends every field back, the URL as it was
    edit = {"name": "Renamed", "url": "https://gone.example.com/hook", "events": ["JOB_APPLICATION_CREATED"]}
    payload = (await acct.gql.execute(UPDATE, {"id": webhook["id"], "input": edit}))["updateWebhook"]
    # then the rename is saved; a changed URL is still checked
    assert payload["errors"] == [] and payload["webhook"]["url"] == "https://gone.example.com/hook"
    moved = {"url": "https://gone.example.com/other"}
    refused = (await acct.gql.execute(UPDATE, {"id": webhook["id"], "input": moved}))["updateWebhook"]
    assert [e["field"] for e in refused["errors"]] == ["url"]


async def wait_for_attempts(acct: Account, delivery_id: str, count: int = 1) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            delivery: dict[str, Any] = (await acct.gql.execute(DELIVERY, {"id": delivery_id}))["delivery"]
            if len(delivery["attempts"]) >= count and delivery["status"] != "PENDING":
                return delivery
            await asyncio.sleep(0.1)


async def test_dns_rebinding_to_a_private_address_is_blocked_at_send_time(
    stack: Stack, acct: Account
) -> None:
    # given a name that is public when the webhook is saved
    RESOLVER.set("rebind.example.com", "93.184.216.34")
    webhook = (await create(acct, "https://rebind.example.com/hook"))["webhook"]
    assert webhook is not None
    # when it resolves to loopback by the time the worker connects
    RESOLVER.set("rebind.example.com", "127.0.0.1")
    test = (await acct.gql.execute(TEST, {"id": webhook["id"]}))["testWebhook"]
    assert test["errors"] == []
    delivery = await wait_for_attempts(acct, test["delivery"]["id"])
    # then the attempt is blocked before any connection and recorded without response data
    [attempt] = delivery["attempts"]
    assert delivery["status"] == "FAILED"
    assert attempt["errorClass"] == "blocked_destination"
    assert "loopback address" in attempt["error"] and "forbidden webhook destination" in attempt["error"]
    assert "127.0.0.1" not in attempt["error"]  # the log does not tell what a name resolves to
    assert attempt["statusCode"] is None and attempt["responseBody"] is None
    assert not attempt["responseHeaders"]


async def test_a_rebinding_to_a_metadata_address_is_blocked_too(stack: Stack, acct: Account) -> None:
    RESOLVER.set("rebind2.example.com", "93.184.216.34")
    webhook = (await create(acct, "https://rebind2.example.com/"))["webhook"]
    RESOLVER.set("rebind2.example.com", "93.184.216.34", "169.254.169.254")
    test = (await acct.gql.execute(TEST, {"id": webhook["id"]}))["testWebhook"]
    delivery = await wait_for_attempts(acct, test["delivery"]["id"])
    assert delivery["attempts"][0]["errorClass"] == "blocked_destination"
    assert "cloud metadata address" in delivery["attempts"][0]["error"]


# --- the Sender on its own ----------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with run_receiver() as running:
        yield running


async def test_a_redirect_to_the_metadata_address_is_not_followed(receiver: Receiver) -> None:
    # loopback is allowed here only so that the test receiver can be reached
    sender = Sender(timeout=5, allow_private=True)
    try:
        url = receiver.url("/redirect", status(302, {"Location": "http://169.254.169.254/latest/meta-data"}))
        result = await sender.send(url, b"{}", {"Content-Type": "application/json"})
    finally:
        await sender.close()
    assert not result.ok
    assert result.status_code == 302
    assert result.error is not None and "redirects are not followed" in result.error
    assert len(receiver.received["/redirect"]) == 1


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:9/", "https://2130706433:9/", "https://[::1]:9/", "https://169.254.169.254/"]
)
async def test_the_sender_blocks_ip_literals_before_connecting(url: str) -> None:
    sender = Sender(timeout=5, allow_private=False)
    try:
        result = await sender.send(url, b"{}", {})
    finally:
        await sender.close()
    assert result.outcome is OutcomeClass.BLOCKED_DESTINATION
    assert result.status_code is None and result.response_body is None


async def test_with_an_egress_proxy_destinations_are_still_checked_before_sending() -> None:
    resolver = TableResolver()
    resolver.set("sneaky.example.com", "10.0.0.7")
    sender = Sender(timeout=5, allow_private=False, resolver=resolver, proxy="http://127.0.0.1:9")
    try:
        result = await sender.send("https://sneaky.example.com/", b"{}", {})
    finally:
        await sender.close()
    assert result.outcome is OutcomeClass.BLOCKED_DESTINATION
    assert "forbidden webhook destination" in (result.error or "")
    assert "10.0.0.7" not in (result.error or "")  # what internal names resolve to is not told
