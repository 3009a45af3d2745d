"""Endpoint controls given on createWebhook / updateWebhook: payload filter, custom headers, ordering.

One value object the service turns into document fields (validated, values encrypted), so the webhook
service only has to pass it along.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from webhooks.crypto import SecretBox
from webhooks.custom_headers import HeaderInput, headers_doc, seal_headers, validate_headers
from webhooks.db import Doc
from webhooks.errors import UserError, UserErrors
from webhooks.filters import filter_text, validate_filter
from webhooks.models import Ordering


class Keep(Enum):
    """Marks a control that was not given: an update leaves it as it is."""

    KEEP = "KEEP"


KEEP = Keep.KEEP


@dataclass(frozen=True, slots=True)
class EndpointControls:
    filter: object = KEEP  # a JSON filter; None clears it
    headers: Sequence[HeaderInput] | None = None  # the full new set; [] removes all; None keeps
    ordering: Ordering | None = None  # None keeps

    def fields(self, box: SecretBox, errors: list[UserError]) -> Doc:
        """Document fields to store (only those given), or the problems added to ``errors``."""
        out: Doc = {}
        if self.filter is not KEEP:
            if self.filter is None:
                out["filter"] = None
            else:
                try:
                    out["filter"] = filter_text(validate_filter(self.filter))
                except UserErrors as exc:
                    errors.extend(exc.errors)
        if self.headers is not None:
            try:
                out["headers"] = headers_doc(seal_headers(validate_headers(self.headers), box.encrypt))
            except UserErrors as exc:
                errors.extend(exc.errors)
        if self.ordering is not None:
            out["ordering"] = self.ordering.value
        return out

    def creation_fields(self, box: SecretBox, errors: list[UserError]) -> Doc:
        """Like :meth:`fields`, with the defaults of a new webhook for what was not given."""
        return {"filter": None, "headers": [], "ordering": Ordering.NONE.value, **self.fields(box, errors)}


NO_CONTROLS = EndpointControls()
