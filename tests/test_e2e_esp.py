"""End-to-end: the real `optout-sync run` process syncing HubSpot, SendGrid, Mailchimp and CSV fakes.

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
from .fakes.mailchimp import FakeMailchimp
from .fakes.sendgrid import FakeSendGrid
from .fakes.serve import serve
from .process import Daemon, wait_for

pytestmark = pytest.mark.e2e

INTERVAL = 1.0
HUBSPOT_TOKEN = "pat-na1-e2e-token-secret"
SENDGRID_KEY = "SG.e2e-key.secret-part"
MAILCHIMP_KEY = "00112233445566778899aabbccddeeff-us21"
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
    # What each system holds before: these people are subscribed Mailchimp members.
    people = ["csv-out", "csv-bounce", "csv-spam", "hs-out", "hs-bounce", "hs-spam", "sg-out", "sg-bounce",
              "sg-spam", "sg-topic", "mc-out", "mc-bounce", "mc-spam"]
    for person in people:
        mailchimp.add_member(f"{person}@example.com", "subscribed")

    with ExitStack() as stack:
        hubspot_url = stack.enter_context(serve(hubspot.handle))
        sendgrid_url = stack.enter_context(serve(sendgrid.handle))
        mailchimp_url = stack.enter_context(serve(mailchimp.handle))
        common = {"interval": INTERVAL, "max_attempts": 2, "backoff_initial": 0.05, "backoff_max": 0.2}
        settings = write_settings(tmp_path, [
            {"name": "hubspot", "type": "hubspot", "token": HUBSPOT_TOKEN, "base_url": hubspot_url,
             "topics": {"newsletter": str(NEWSLETTER)}, **common},
            {"name": "sendgrid", "type": "sendgrid", "api_key": SENDGRID_KEY, "base_url": sendgrid_url,
             "topics": {"newsletter": str(NEWSLETTER)}, **common},
            {"name": "mailchimp", "type": "mailchimp", "api_key": MAILCHIMP_KEY, "list_id": LIST,
             "base_url": f"{mailchimp_url}/3.0", **common},
            {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": INTERVAL, "settle_seconds": 0.1},
            {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": INTERVAL},
        ], topics={"newsletter": "Newsletter"}, store={"path": "data/store.db"},
            # An idle cycle is logged at debug level only, and the first cycles below are idle.
            logging={"level": "debug"})

        with Daemon(settings) as daemon:
            wait_for(lambda: "started" in daemon.log(), timeout=10)
            # Every adapter has read once (an empty world), so what follows is new to all of them.
            wait_for(lambda: all(f"cycle adapter={n}" in daemon.log()
                                 for n in ("hubspot", "sendgrid", "mailchimp", "inbox", "sink")), timeout=10)

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

            everyone = {f"{p}@example.com" for p in people} - {"sg-topic@example.com"}
            # A system is never written what it reported itself (no echo): its own list already has it.
            to_sendgrid = everyone - {"sg-bounce@example.com", "sg-spam@example.com"}
            to_hubspot = everyone - {"hs-bounce@example.com", "hs-spam@example.com"}

            def spread() -> bool:
                rows = sink_rows(tmp_path)
                return (all((a, "*") in rows for a in everyone)
                        and ("sg-topic@example.com", "newsletter") in rows
                        and to_sendgrid <= sendgrid.globally_suppressed()
                        and all(hubspot.opted_out_of_all(a) for a in to_hubspot)
                        and hubspot.status_of("sg-topic@example.com", NEWSLETTER) == "UNSUBSCRIBED"
                        and all(mailchimp.status_of(a) in ("unsubscribed", "cleaned") for a in everyone))

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
    for system in ("csv", "hs", "sg", "mc"):
        assert reasons[f"{system}-bounce@example.com"] == "hard_bounce"
        assert reasons[f"{system}-spam@example.com"] == "spam_complaint"
    assert ("soft@example.com", "*") not in rows and not hubspot.opted_out_of_all("soft@example.com")
    assert "soft@example.com" not in sendgrid.globally_suppressed()
    # The topic opt-out stayed a topic opt-out: nobody put that person out of all email.
    assert not hubspot.opted_out_of_all("sg-topic@example.com")
    assert "sg-topic@example.com" not in sendgrid.globally_suppressed()
    assert mailchimp.status_of("sg-topic@example.com") == "subscribed"  # the audience stands for all email

    # Nothing was ever subscribed, re-subscribed, deleted or created.
    assert hubspot.api_subscribes == []
    assert not [r for r in hubspot.requests if r.method == "DELETE" or "archive" in r.path]
    assert not [r for r in hubspot.requests if r.path.startswith("/communication-preferences/v3")]
    assert sendgrid.calls(method="DELETE") == []
    assert mailchimp.subscribe_writes == [] and mailchimp.deletes == [] and mailchimp.created_by_api == []
    written = [m for c in mailchimp.calls(f"/lists/{LIST}", "POST") for m in c.body["members"]]
    assert written and {m["status"] for m in written} == {"unsubscribed"}
    for secret in (HUBSPOT_TOKEN, SENDGRID_KEY, MAILCHIMP_KEY):
        assert secret not in log
