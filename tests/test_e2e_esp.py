"""End-to-end: the real `optout-sync run` process syncing HubSpot, SendGrid, Mailchimp, Klaviyo and CSV fakes.

Each vendor fake is served on 127.0.0.1 by tests/fakes/serve.py; the daemon's
adapters point at them with http:// loopback base URLs and short intervals. An
opt-out, a bounce and a spam complaint entered in each system must reach every
other system that can represent it within two cycles, and no fake may ever see
a subscribe, a re-subscribe or a delete.
"""

from __future__ import annotations

import csv
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from .conftest import write_settings
from .fakes.hubspot import FakeHubSpot
from .fakes.klaviyo import FakeKlaviyo
from .fakes.mailchimp import FakeMailchimp
from .fakes.sendgrid import FakeSendGrid
from .fakes.serve import serve
from .process import Daemon, wait_for

# SQLite only, for time: the vendors' side is tested here; the store's on both backends in test_e2e_backends.py.
pytestmark = pytest.mark.e2e

INTERVAL = 1.0
HUBSPOT_TOKEN = "pat-na1-e2e-token-secret"
SENDGRID_KEY = "SG.e2e-key.secret-part"
MAILCHIMP_KEY = "00112233445566778899aabbccddeeff-us21"
KLAVIYO_KEY = "pk_e2e0123456789abcdef0123456789ab"
KLAVIYO_LIST = "Y6nRLr"
LIST = "a1b2c3d4e5"
NEWSLETTER = 101  # HubSpot subscription id and SendGrid group id both


def sink_rows(tmp_path: Path) -> dict[tuple[str, str], dict]:
    path = tmp_path / "out" / "suppressions.csv"
    if not path.exists():
        return {}
    try:
        with path.open(newline="") as handle:
            return {(row["email"], row["scope"]): row for row in csv.DictReader(handle)}
    except (OSError, KeyError):
        return {}  # caught between the sink's write and rename: look again


def drop_csv(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.part"
    temp.write_text("email,scope,reason\n" + "\n".join(rows) + "\n", encoding="utf-8")
    temp.rename(folder / name)


def test_opt_outs_bounces_and_spam_complaints_spread_everywhere_within_two_cycles(tmp_path):
    hubspot = FakeHubSpot(HUBSPOT_TOKEN)
    sendgrid = FakeSendGrid(SENDGRID_KEY, groups={NEWSLETTER: "Newsletter"})
    mailchimp = FakeMailchimp(MAILCHIMP_KEY, audiences={LIST: "Customers"})
    klaviyo = FakeKlaviyo(KLAVIYO_KEY, lists={KLAVIYO_LIST: "Newsletter"})
    # What each system holds before: these people are subscribed Mailchimp members.
    people = ["csv-out", "csv-bounce", "csv-spam", "hs-out", "hs-bounce", "hs-spam", "sg-out", "sg-bounce",
              "sg-spam", "sg-topic", "mc-out", "mc-bounce", "mc-spam", "kl-out", "kl-bounce", "kl-spam", "kl-topic"]
    for person in people:
        mailchimp.add_member(f"{person}@example.com", "subscribed")

    with ExitStack() as stack:
        hubspot_url = stack.enter_context(serve(hubspot.handle))
        sendgrid_url = stack.enter_context(serve(sendgrid.handle))
        mailchimp_url = stack.enter_context(serve(mailchimp.handle))
        klaviyo_url = stack.enter_context(serve(klaviyo.handle))
        common = {"interval": INTERVAL, "max_attempts": 2, "backoff_initial": 0.05, "backoff_max": 0.2}
        settings = write_settings(tmp_path, [
            {"name": "hubspot", "type": "hubspot", "token": HUBSPOT_TOKEN, "base_url": hubspot_url,
             "topics": {"newsletter": str(NEWSLETTER)}, **common},
            {"name": "sendgrid", "type": "sendgrid", "api_key": SENDGRID_KEY, "base_url": sendgrid_url,
             "topics": {"newsletter": str(NEWSLETTER)}, **common},
            {"name": "mailchimp", "type": "mailchimp", "api_key": MAILCHIMP_KEY, "list_id": LIST,
             "base_url": f"{mailchimp_url}/3.0", **common},
            {"name": "klaviyo", "type": "klaviyo", "api_key": KLAVIYO_KEY, "base_url": klaviyo_url,
             "topics": {"newsletter": KLAVIYO_LIST}, **common},
            {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": INTERVAL, "settle_seconds": 0.1},
            {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": INTERVAL},
        ], topics={"newsletter": "Newsletter"}, store={"path": "data/store.db"},
            # An idle cycle is logged at debug level only, and the first cycles below are idle.
            logging={"level": "debug"})

        with Daemon(settings) as daemon:
            wait_for(lambda: "started" in daemon.log(), timeout=10)
            # Every adapter has read once (an empty world), so what follows is new to all of them.
            wait_for(lambda: all(f"cycle adapter={n}" in daemon.log()
                                 for n in ("hubspot", "sendgrid", "mailchimp", "klaviyo", "inbox", "sink")),
                     timeout=10)

            entered = time.monotonic()
            drop_csv(tmp_path / "inbox", "list.csv", ["csv-out@example.com,,", "csv-bounce@example.com,,hard_bounce",
                                                      "csv-spam@example.com,,spam_complaint"])
            hubspot.recipient_unsubscribes_all("hs-out@example.com")
            hubspot.bounce("hs-bounce@example.com")
            hubspot.spam_report("hs-spam@example.com")
            sendgrid.recipient_unsubscribes("sg-out@example.com")
            sendgrid.bounce("sg-bounce@example.com", status="5.1.1")
            sendgrid.spam_report("sg-spam@example.com")
            sendgrid.recipient_leaves_group("sg-topic@example.com", NEWSLETTER)
            sendgrid.bounce("soft@example.com", status="4.2.2")  # a soft bounce: not an opt-out anywhere
            mailchimp.recipient_unsubscribes("mc-out@example.com")
            mailchimp.clean("mc-bounce@example.com")
            mailchimp.abuse_report("mc-spam@example.com")
            klaviyo.suppress("kl-out@example.com", "UNSUBSCRIBE")
            klaviyo.suppress("kl-bounce@example.com", "HARD_BOUNCE")
            klaviyo.suppress("kl-spam@example.com", "SPAM_COMPLAINT")
            klaviyo.leave_list("kl-topic@example.com", KLAVIYO_LIST)

            topics = {"sg-topic@example.com", "kl-topic@example.com"}
            everyone = {f"{p}@example.com" for p in people} - topics
            # A system is never written what it reported itself (no echo): its own list already has it.
            to_sendgrid = everyone - {"sg-bounce@example.com", "sg-spam@example.com"}
            to_hubspot = everyone - {"hs-bounce@example.com", "hs-spam@example.com"}

            def spread() -> bool:
                rows = sink_rows(tmp_path)
                return (all((a, "*") in rows for a in everyone)
                        and all((a, "newsletter") in rows for a in topics)
                        and to_sendgrid <= sendgrid.globally_suppressed()
                        and "kl-topic@example.com" in sendgrid.in_group(NEWSLETTER)
                        and all(hubspot.opted_out_of_all(a) for a in to_hubspot)
                        and all(hubspot.status_of(a, NEWSLETTER) == "UNSUBSCRIBED" for a in topics)
                        and all(mailchimp.status_of(a) in ("unsubscribed", "cleaned") for a in everyone)
                        and all(klaviyo.reasons_of(a) for a in everyone)
                        and KLAVIYO_LIST in klaviyo.lists_of("sg-topic@example.com"))

            wait_for(spread, timeout=20, step=0.05)
            took = time.monotonic() - entered
            # Two cycles, plus a second for process start-up jitter on a busy machine.
            assert took <= 2 * INTERVAL + 1.0, f"took {took:.2f} s for an interval of {INTERVAL} s"

            time.sleep(INTERVAL)  # one more round of cycles: the echoes must change nothing
            assert daemon.terminate(timeout=10) == 0

    log = daemon.log()
    assert "worker_error" not in log, log

    rows = sink_rows(tmp_path)
    reasons = {address: rows[(address, "*")]["reason"] for address in everyone}
    for system in ("csv", "hs", "sg", "mc", "kl"):
        assert reasons[f"{system}-bounce@example.com"] == "hard_bounce"
        assert reasons[f"{system}-spam@example.com"] == "spam_complaint"
    assert ("soft@example.com", "*") not in rows and not hubspot.opted_out_of_all("soft@example.com")
    assert "soft@example.com" not in sendgrid.globally_suppressed()
    # The topic opt-outs stayed topic opt-outs: nobody put those people out of all email.
    for address in topics:
        assert not hubspot.opted_out_of_all(address)
        assert address not in sendgrid.globally_suppressed()
        assert mailchimp.status_of(address) == "subscribed"  # the audience stands for all email
        assert klaviyo.reasons_of(address) == set()
    # Klaviyo was written what others reported, as suppressions a user made; what it reported itself stays
    # as it recorded it (no echo written back).
    assert klaviyo.reasons_of("sg-out@example.com") == {"USER_SUPPRESSED"}
    assert klaviyo.reasons_of("kl-bounce@example.com") == {"HARD_BOUNCE"}
    suppressed_there = {e for kind, emails in klaviyo.jobs for e in emails
                        if kind == "profile-suppression-bulk-create-job"}
    assert not suppressed_there & {"kl-out@example.com", "kl-bounce@example.com", "kl-spam@example.com"}
    assert not [r for r in klaviyo.requests if "bulk-delete-jobs" in r.path and "suppression" in r.path]

    # Nothing was ever subscribed, re-subscribed, deleted or created.
    assert hubspot.api_subscribes == []
    assert not [r for r in hubspot.requests if r.method == "DELETE" or "archive" in r.path]
    assert not [r for r in hubspot.requests if r.path.startswith("/communication-preferences/v3")]
    assert sendgrid.calls(method="DELETE") == []
    assert mailchimp.subscribe_writes == [] and mailchimp.deletes == [] and mailchimp.created_by_api == []
    written = [m for c in mailchimp.calls(f"/lists/{LIST}", "POST") for m in c.body["members"]]
    assert written and {m["status"] for m in written} == {"unsubscribed"}
    for secret in (HUBSPOT_TOKEN, SENDGRID_KEY, MAILCHIMP_KEY, KLAVIYO_KEY):
        assert secret not in log
