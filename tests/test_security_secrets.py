"""Signing secrets: encryption at rest, encryption-key rotation, rotateWebhookSecret with a grace period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from cryptography.fernet import Fernet

from tests.conftest import make_settings
from tests.delivery_support import wait_for_status
from tests.receiver import Receiver, run_receiver
from tests.support import Account, Stack, run_stack
from webhooks.core import open_core
from webhooks.crypto import DECRYPTED_CACHE, SecretBox, new_signing_secret
from webhooks.db import raw_collections
from webhooks.models import PreviousSecret, Webhook
from webhooks_cli.main import rotate_encryption_key
from workers.signing import spec_signature, standard_signature

CREATE = """
mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { webhook { id } secret errors { field code message } }
}"""
ROTATE = """
mutation($id: ID!, $hours: Int) {
  rotateWebhookSecret(id: $id, gracePeriodHours: $hours) {
    webhook { id name } secret errors { field code message }
  }
}"""
ROTATE_DEFAULT = """
mutation($id: ID!) { rotateWebhookSecret(id: $id) { webhook { id } secret errors { field code message } } }"""
TEST = "mutation($id: ID!) { testWebhook(id: $id) { delivery { id } errors { field code message } } }"


# --- encryption keys ----------------------------------------------------------------------------


async def test_rotating_the_encryption_key_keeps_every_secret_readable(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    data = tmp_path_factory.mktemp("keys")
    before = make_settings(mongodb_url, data, secret_keys=(old,))
    both = before.model_copy(update={"secret_keys": (new, old)})
    only_new = before.model_copy(update={"secret_keys": (new,)})
    plain: dict[ObjectId, list[str]] = {}
    async with open_core(before) as core:
        account = await core.accounts.create("keys")
        for i in range(3):
            current, previous = new_signing_secret(), new_signing_secret()
            webhook = await core.webhook_repo.insert(
                account, f"w{i}", "https://hooks.example.com/", ["candidate_hired"], core.box.encrypt(current)
            )
            await core.webhook_repo.replace_secret(
                account,
                webhook.id,
                webhook.secret_enc,
                core.box.encrypt(current),
                [PreviousSecret(core.box.encrypt(previous), datetime.now(UTC) + timedelta(hours=1))],
            )
            plain[webhook.id] = [current, previous]

    def secrets_of(doc: dict[str, Any]) -> list[str]:
        return [doc["secret_enc"], *(p["secret_enc"] for p in doc["previous_secrets"])]

    async with open_core(both) as core:
        # with [new, old] everything stays readable before the rotation
        docs = await raw_collections(core).webhooks.find({"account_id": account}).to_list()
        assert {d["_id"]: [core.box.decrypt(t) for t in secrets_of(d)] for d in docs} == plain
        assert await rotate_encryption_key(both) == 3
        assert await rotate_encryption_key(both) == 0  # idempotent
        docs = await raw_collections(core).webhooks.find({"account_id": account}).to_list()
    # after the rotation the newest key alone reads everything
    new_box = SecretBox([new])
    assert {d["_id"]: [new_box.decrypt(t) for t in secrets_of(d)] for d in docs} == plain
    assert all(plain_text not in str(d) for d in docs for plain_text in plain[d["_id"]])
    async with open_core(only_new) as core:
        for webhook_id, (current, _) in plain.items():
            found = await core.webhook_repo.get(account, webhook_id)
            assert found is not None and core.box.decrypt(found.secret_enc) == current


async def test_a_signing_secret_rotated_while_the_encryption_key_is_rotated_is_re_encrypted_too(
    mongodb_url: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a webhook whose signing secret is encrypted with the old key
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    before = make_settings(mongodb_url, tmp_path_factory.mktemp("race"), secret_keys=(old,))
    both = before.model_copy(update={"secret_keys": (new, old)})
    async with open_core(before) as core:
        account = await core.accounts.create("race")
        secret_enc = core.box.encrypt(new_signing_secret())
        webhook = await core.webhook_repo.insert(
            account, "w", "https://hooks.example.com/", ["candidate_hired"], secret_enc
        )
    async with open_core(both) as core:
        repo = core.webhook_repo
        real_update = repo._col.update_one
        rotated = False

        async def update_after_a_customer_rotation(*args: Any, **kwargs: Any) -> Any:
            nonlocal rotated
            if not rotated:  # the customer rotates the signing secret between the command's read and write
                rotated = True
                current = await repo.get(account, webhook.id)
                assert current is not None
                grace = [PreviousSecret(current.secret_enc, datetime.now(UTC) + timedelta(hours=24))]
                fresh = core.box.encrypt(new_signing_secret())
                await repo.replace_secret(account, webhook.id, current.secret_enc, fresh, grace)
            return await real_update(*args, **kwargs)

        monkeypatch.setattr(repo._col, "update_one", update_after_a_customer_rotation)
        # when the encryption key is rotated
        changed = await repo.reencrypt_all(core.box.rewrap)
        doc = await raw_collections(core).webhooks.find_one({"_id": webhook.id})
    # then the webhook is re-encrypted after all, its old secret (kept for the grace period) included: the
    # newest key alone reads every one of them
    assert rotated and changed == 1 and doc is not None
    new_box = SecretBox([new])
    for token in [doc["secret_enc"], *(p["secret_enc"] for p in doc["previous_secrets"])]:
        new_box.decrypt(token)


def test_a_secret_encrypted_with_an_unknown_key_is_an_error_not_garbage() -> None:
    token = SecretBox([Fernet.generate_key().decode()]).encrypt("whsec_x")
    with pytest.raises(RuntimeError, match="cannot be decrypted"):
        SecretBox([Fernet.generate_key().decode()]).decrypt(token)
    with pytest.raises(RuntimeError, match="cannot be decrypted"):
        SecretBox([Fernet.generate_key().decode()]).rewrap(token)


def test_decrypting_the_same_secret_again_gives_it_again_and_the_remembered_ones_stay_bounded() -> None:
    # given a box and more secrets than it remembers decrypted
    box = SecretBox([Fernet.generate_key().decode()])
    secrets = [new_signing_secret() for _ in range(DECRYPTED_CACHE + 10)]
    tokens = [box.encrypt(s) for s in secrets]
    # when each is decrypted twice (the second time from memory, for the first ones)
    first = [box.decrypt(t) for t in tokens]
    again = [box.decrypt(t) for t in tokens]
    # then every answer is the secret, and a token of an unknown key is still refused
    assert first == secrets and again == secrets
    assert len(box._decrypted) == DECRYPTED_CACHE
    other = SecretBox([Fernet.generate_key().decode()])
    with pytest.raises(RuntimeError):
        other.decrypt(tokens[-1])


def test_only_unexpired_previous_secrets_sign() -> None:
    now = datetime.now(UTC)
    webhook = Webhook(
        id=ObjectId(),
        account_id=ObjectId(),
        name="w",
        url="https://x/",
        events=(),
        enabled=True,
        secret_enc="current",
        consecutive_failures=0,
        disabled_reason=None,
        disabled_at=None,
        created_at=now,
        updated_at=now,
        previous_secrets=(
            PreviousSecret("fresh", now + timedelta(seconds=5)),
            PreviousSecret("expired", now - timedelta(seconds=1)),
        ),
    )
    assert webhook.signing_secrets_enc(now) == ["current", "fresh"]


# --- rotateWebhookSecret ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def stack(mongodb_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    settings = make_settings(
        mongodb_url,
        tmp_path_factory.mktemp("rotate"),
        retry_schedule=(0.0,),
        queue_name="webhooks:secrets-test",
    )
    async with run_stack(settings) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with run_receiver() as running:
        yield running


async def create(acct: Account, url: str) -> tuple[str, str]:
    payload = (
        await acct.gql.execute(CREATE, {"input": {"name": "rot", "url": url, "events": ["CANDIDATE_HIRED"]}})
    )["createWebhook"]
    assert payload["errors"] == []
    return payload["webhook"]["id"], payload["secret"]


async def rotate(acct: Account, webhook_id: str, hours: int | None = None) -> dict[str, Any]:
    if hours is None:
        result: dict[str, Any] = (await acct.gql.execute(ROTATE_DEFAULT, {"id": webhook_id}))[
            "rotateWebhookSecret"
        ]
    else:
        result = (await acct.gql.execute(ROTATE, {"id": webhook_id, "hours": hours}))["rotateWebhookSecret"]
    return result


async def signed_test_request(
    acct: Account, receiver: Receiver, path: str, webhook_id: str, count: int
) -> Any:
    test = (await acct.gql.execute(TEST, {"id": webhook_id}))["testWebhook"]
    assert test["errors"] == []
    return (await receiver.wait_for(path, count))[count - 1]


def standard(secret: str, request: Any) -> str:
    return standard_signature(
        secret, request.headers["webhook-id"], int(request.headers["webhook-timestamp"]), request.body
    )


async def test_rotation_signs_with_both_secrets_during_the_grace_period(
    stack: Stack, receiver: Receiver
) -> None:
    acct = await stack.account()
    path = "/rotate"
    webhook_id, first = await create(acct, receiver.url(path))
    # when the secret is rotated (default grace period: 24 hours)
    rotated = await rotate(acct, webhook_id)
    assert rotated["errors"] == [] and rotated["webhook"]["id"] == webhook_id
    second = rotated["secret"]
    assert second.startswith("whsec_") and second != first
    request = await signed_test_request(acct, receiver, path, webhook_id, 1)
    # then webhook-signature carries both (new first) and X-Webhook-Signature only the new one
    assert request.headers["webhook-signature"] == f"{standard(second, request)} {standard(first, request)}"
    assert request.headers["X-Webhook-Signature"] == spec_signature(second, request.body)
    # and the stored document holds both encrypted, with the old one's expiry
    doc = await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(webhook_id)})
    assert doc is not None and first not in str(doc) and second not in str(doc)
    [previous] = doc["previous_secrets"]
    assert stack.core.box.decrypt(previous["secret_enc"]) == first
    assert timedelta(hours=23) < previous["expires_at"] - datetime.now(UTC) <= timedelta(hours=24)
    # a second rotation keeps both older secrets signing, newest first
    third = (await rotate(acct, webhook_id, 1))["secret"]
    request = await signed_test_request(acct, receiver, path, webhook_id, 2)
    assert request.headers["webhook-signature"].split(" ") == [
        standard(third, request),
        standard(second, request),
        standard(first, request),
    ]
    # a rotation with no grace period revokes every earlier secret at once
    fourth = (await rotate(acct, webhook_id, 0))["secret"]
    request = await signed_test_request(acct, receiver, path, webhook_id, 3)
    assert request.headers["webhook-signature"] == standard(fourth, request)
    assert request.headers["X-Webhook-Signature"] == spec_signature(fourth, request.body)
    # secrets and signatures never reach the delivery records (once every test delivery is recorded)
    for delivery_id in {r.headers["X-Webhook-Delivery"] for r in receiver.received[path]}:
        await wait_for_status(acct.gql, delivery_id, "SUCCEEDED")
    records = (
        await raw_collections(stack.core).deliveries.find({"webhook_id": ObjectId(webhook_id)}).to_list()
    )
    assert records
    for secret in (first, second, third, fourth):
        assert secret not in str(records)
        assert secret.removeprefix("whsec_") not in str(records)
    assert request.headers["X-Webhook-Signature"] not in str(records)


@pytest.mark.parametrize("hours", [-1, 169])
async def test_grace_periods_outside_0_to_168_hours_are_refused(stack: Stack, hours: int) -> None:
    acct = await stack.account()
    webhook_id, _ = await create(acct, "https://hooks.example.com/")
    before = await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(webhook_id)})
    result = await rotate(acct, webhook_id, hours)
    assert result["secret"] is None and result["webhook"] is None
    assert [(e["field"], e["code"]) for e in result["errors"]] == [("gracePeriodHours", "INVALID")]
    assert await raw_collections(stack.core).webhooks.find_one({"_id": ObjectId(webhook_id)}) == before


async def test_rotating_an_unknown_webhook_is_not_found(stack: Stack) -> None:
    acct = await stack.account()
    result = await rotate(acct, str(ObjectId()))
    assert [e["code"] for e in result["errors"]] == ["NOT_FOUND"] and result["secret"] is None


async def test_rotation_needs_the_manage_scope(stack: Stack) -> None:
    from webhooks.models import Scope

    owner = await stack.account()
    webhook_id, _ = await create(owner, "https://hooks.example.com/")
    publisher = await stack.account(frozenset({Scope.PUBLISH_EVENTS}))
    body = await publisher.gql.raw(ROTATE_DEFAULT, {"id": webhook_id})
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_reencrypt_skips_documents_already_under_the_newest_key() -> None:
    new, old = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    box = SecretBox([new, old])
    assert box.rewrap(box.encrypt("s")) is None
    rewrapped = box.rewrap(SecretBox([old]).encrypt("s"))
    assert rewrapped is not None and SecretBox([new]).decrypt(rewrapped) == "s"
