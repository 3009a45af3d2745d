"""The event catalog: the 16 events of the customer spec, 4 operational events, plus the test event."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

TEST_EVENT = "webhook.test"
TEST_MESSAGE = "This is a test webhook"


class EventName(Enum):
    JOB_APPLICATION_CREATED = "job_application_created"
    JOB_APPLICATION_UPDATED = "job_application_updated"
    APPLICATION_STATUS_CHANGED = "application_status_changed"
    INTERVIEW_SCHEDULED = "interview_scheduled"
    INTERVIEW_COMPLETED = "interview_completed"
    OFFER_SENT = "offer_sent"
    OFFER_ACCEPTED = "offer_accepted"
    OFFER_REJECTED = "offer_rejected"
    CANDIDATE_HIRED = "candidate_hired"
    JOB_CREATED = "job_created"
    JOB_UPDATED = "job_updated"
    JOB_CLOSED = "job_closed"
    REFERRAL_CREATED = "referral_created"
    NOTE_ADDED = "note_added"
    USER_CREATED = "user_created"
    USER_UPDATED = "user_updated"
    # Operational events: emitted by HatchBeacon about the account's own webhooks, never published.
    WEBHOOK_FAILING = "webhook.failing"
    WEBHOOK_DISABLED = "webhook.disabled"
    DELIVERY_EXHAUSTED = "delivery.exhausted"
    DELIVERY_RECOVERED = "delivery.recovered"


@dataclass(frozen=True, slots=True)
class EventSpec:
    name: EventName
    description: str
    action: str
    resource_type: str
    method: str
    path: str
    extra: dict[str, Any]

    def example(self) -> dict[str, Any]:
        """An example payload in exactly the shape receivers get."""
        ts = "2024-01-20T10:30:00.000Z"
        return {
            "event": self.name.value,
            "timestamp": ts,
            "data": {
                "log": {
                    "action": self.action,
                    "resourceType": self.resource_type,
                    "resourceId": "507f1f77bcf86cd799439011",
                    "userId": "507f191e810c19729de860ea",
                    "userName": "John Doe",
                    "userEmail": "john@example.com",
                    "timestamp": ts,
                },
                "details": {"method": self.method, "path": self.path, **self.extra},
            },
        }


_APP = "job_application"
_APP_PATH = "/job-applications/507f1f77bcf86cd799439011"
_SPECS = [
    EventSpec(
        EventName.JOB_APPLICATION_CREATED,
        "A new job application is submitted",
        "create_application",
        _APP,
        "POST",
        "/job-applications",
        {"candidateName": "Jane Smith", "jobTitle": "Senior Developer"},
    ),
    EventSpec(
        EventName.JOB_APPLICATION_UPDATED,
        "A job application is modified",
        "update_application",
        _APP,
        "PATCH",
        _APP_PATH,
        {"candidateName": "Jane Smith", "changedFields": ["phone"]},
    ),
    EventSpec(
        EventName.APPLICATION_STATUS_CHANGED,
        "Application status changes (e.g., screening → interview)",
        "change_application_status",
        _APP,
        "PATCH",
        _APP_PATH + "/status",
        {"candidateName": "Jane Smith", "fromStatus": "screening", "toStatus": "interview"},
    ),
    EventSpec(
        EventName.INTERVIEW_SCHEDULED,
        "An interview is scheduled for a candidate",
        "schedule_interview",
        "interview",
        "POST",
        "/interviews",
        {"candidateName": "Jane Smith", "scheduledAt": "2024-01-25T14:00:00.000Z"},
    ),
    EventSpec(
        EventName.INTERVIEW_COMPLETED,
        "An interview is marked as completed",
        "complete_interview",
        "interview",
        "PATCH",
        "/interviews/507f1f77bcf86cd799439011",
        {"candidateName": "Jane Smith", "outcome": "passed"},
    ),
    EventSpec(
        EventName.OFFER_SENT,
        "An offer is sent to a candidate",
        "send_offer",
        "offer",
        "POST",
        "/offers",
        {"candidateName": "Jane Smith", "jobTitle": "Senior Developer"},
    ),
    EventSpec(
        EventName.OFFER_ACCEPTED,
        "A candidate accepts an offer",
        "accept_offer",
        "offer",
        "PATCH",
        "/offers/507f1f77bcf86cd799439011",
        {"candidateName": "Jane Smith", "startDate": "2024-02-15"},
    ),
    EventSpec(
        EventName.OFFER_REJECTED,
        "A candidate rejects an offer",
        "reject_offer",
        "offer",
        "PATCH",
        "/offers/507f1f77bcf86cd799439011",
        {"candidateName": "Jane Smith", "reason": "Accepted another offer"},
    ),
    EventSpec(
        EventName.CANDIDATE_HIRED,
        "A candidate is marked as hired",
        "hire_candidate",
        "candidate",
        "POST",
        "/candidates/507f1f77bcf86cd799439011/hire",
        {"candidateName": "Jane Smith", "jobTitle": "Senior Developer"},
    ),
    EventSpec(
        EventName.JOB_CREATED,
        "A new job posting is created",
        "create_job",
        "job",
        "POST",
        "/jobs",
        {"jobTitle": "Senior Developer", "department": "R&D"},
    ),
    EventSpec(
        EventName.JOB_UPDATED,
        "A job posting is modified",
        "update_job",
        "job",
        "PATCH",
        "/jobs/507f1f77bcf86cd799439011",
        {"jobTitle": "Senior Developer", "changedFields": ["salaryRange"]},
    ),
    EventSpec(
        EventName.JOB_CLOSED,
        "A job posting is closed",
        "close_job",
        "job",
        "POST",
        "/jobs/507f1f77bcf86cd799439011/close",
        {"jobTitle": "Senior Developer", "reason": "filled"},
    ),
    EventSpec(
        EventName.REFERRAL_CREATED,
        "A new referral is submitted",
        "create_referral",
        "referral",
        "POST",
        "/referrals",
        {"candidateName": "Jane Smith", "referrerName": "John Doe"},
    ),
    EventSpec(
        EventName.NOTE_ADDED,
        "A note is added to an application",
        "add_note",
        "note",
        "POST",
        _APP_PATH + "/notes",
        {"candidateName": "Jane Smith", "note": "Strong system design answers"},
    ),
    EventSpec(
        EventName.USER_CREATED,
        "A new user is added to the system",
        "create_user",
        "user",
        "POST",
        "/users",
        {"newUserEmail": "ada@example.com", "role": "recruiter"},
    ),
    EventSpec(
        EventName.USER_UPDATED,
        "A user profile is modified",
        "update_user",
        "user",
        "PATCH",
        "/users/507f191e810c19729de860ea",
        {"changedFields": ["role"]},
    ),
]


@dataclass(frozen=True, slots=True)
class OperationalSpec:
    """An event HatchBeacon emits about a webhook or a delivery: ``data`` holds its fields directly."""

    name: EventName
    description: str
    data: dict[str, Any]

    def example(self) -> dict[str, Any]:
        return {"event": self.name.value, "timestamp": "2024-01-20T10:30:00.000Z", "data": dict(self.data)}


_WEBHOOK = {"webhookId": "65a1b2c3d4e5f60718293a4b", "webhookName": "CRM sync"}
_DELIVERY = {
    "deliveryId": "65a1b2c3d4e5f60718293a4c",
    **_WEBHOOK,
    "event": "job_application_created",
    "attempts": 6,
}
OPERATIONAL_SPECS = [
    OperationalSpec(
        EventName.WEBHOOK_FAILING,
        "A webhook keeps failing: sent at 5 and at 8 consecutive failed deliveries, before it is disabled",
        {**_WEBHOOK, "consecutiveFailures": 5, "disableAfter": 10},
    ),
    OperationalSpec(
        EventName.WEBHOOK_DISABLED,
        "A webhook was disabled, automatically after consecutive failed deliveries or by a user",
        {
            **_WEBHOOK,
            "reason": "Disabled automatically after 10 consecutive failed deliveries",
            "consecutiveFailures": 10,
        },
    ),
    OperationalSpec(
        EventName.DELIVERY_EXHAUSTED,
        "A delivery failed finally: its last automatic attempt failed",
        _DELIVERY,
    ),
    OperationalSpec(
        EventName.DELIVERY_RECOVERED,
        "A delivery that had failed (or was held) succeeded after a retry or a recovery",
        {**_DELIVERY, "attempts": 7},
    ),
]

CATALOG: dict[EventName, EventSpec | OperationalSpec] = {spec.name: spec for spec in _SPECS}
CATALOG.update({spec.name: spec for spec in OPERATIONAL_SPECS})
WIRE_NAMES: frozenset[str] = frozenset(e.value for e in EventName)
OPERATIONAL_EVENTS: frozenset[EventName] = frozenset(spec.name for spec in OPERATIONAL_SPECS)
OPERATIONAL_WIRE_NAMES: frozenset[str] = frozenset(e.value for e in OPERATIONAL_EVENTS)
DELIVERED_NAMES: frozenset[str] = WIRE_NAMES | {TEST_EVENT}
"""Every ``event`` a delivery can carry: the catalog plus the test event."""
assert len(CATALOG) == len(EventName) == 20
