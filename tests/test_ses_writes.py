"""SES writes: a spam complaint is one idempotent PUT; anything else is looked up first (never downgrades)."""

from __future__ import annotations

import httpx

from adapters.ses import SesAdapter, SesSettings
from state.models import ALREADY, APPLIED, OptOut

from .fakes.clock import FakeClock
from .fakes.ses import FakeSes

ACCESS, SECRET, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-west-1"


def test_a_complaint_is_put_without_a_lookup_and_a_bounce_never_replaces_a_complaint():
    clock = FakeClock()
    fake = FakeSes(ACCESS, SECRET, REGION, clock=clock)
    fake.suppress("held-complaint@example.com", "COMPLAINT")
    fake.suppress("held-bounce@example.com", "BOUNCE")
    config = SesSettings.model_validate({"name": "ses", "region": REGION, "access_key_id": ACCESS,
                                         "secret_access_key": SECRET})
    adapter = SesAdapter(config, {}, transport=httpx.MockTransport(fake.handle), clock=clock)
    batch = [OptOut("new-complaint@example.com", reason="spam_complaint", origin="system"),
             OptOut("held-bounce@example.com", reason="spam_complaint", origin="system"),
             OptOut("held-complaint@example.com", reason="hard_bounce", origin="system"),
             OptOut("new-bounce@example.com", reason="hard_bounce", origin="system")]
    results = adapter.apply(batch)
    assert [r.outcome for r in results] == [APPLIED, APPLIED, ALREADY, APPLIED]
    assert fake.held() == {"new-complaint@example.com": "COMPLAINT", "held-bounce@example.com": "COMPLAINT",
                           "held-complaint@example.com": "COMPLAINT", "new-bounce@example.com": "BOUNCE"}
    looked_up = [r.path.rsplit("/", 1)[-1] for r in fake.calls(method="GET")]
    assert looked_up == ["held-complaint@example.com", "new-bounce@example.com"]   # the bounces only
    assert len(fake.calls(method="PUT")) == 3
