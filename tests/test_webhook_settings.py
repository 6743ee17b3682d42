"""[webhooks] settings, the per-adapter webhook keys, and what `check` and `config` say about them."""

from __future__ import annotations

from click.testing import CliRunner

from connector.cli import main

from . import webhook_signing as sign
from .conftest import write_settings


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env={"OPTOUT_SYNC_CONFIG": None, **(env or {})})


def _settings(tmp_path, sendgrid_key: str = None, **webhooks):
    secret = tmp_path / "mailgun-signing-key"
    secret.write_text(sign.MAILGUN_KEY + "\n")
    secret.chmod(0o600)
    path = write_settings(tmp_path, [
        {"name": "sg", "type": "sendgrid", "api_key": "SG.k.s", "base_url": "http://127.0.0.1:9",
         "webhook_public_key": sendgrid_key or sign.sendgrid_public_key()},
        {"name": "mg", "type": "mailgun", "api_key": "key-x", "domain": "mg.example.com",
         "base_url": "http://127.0.0.1:9", "webhook_secret_file": str(secret)},
        {"name": "mc", "type": "mailchimp", "api_key": "0123456789abcdef0123456789abcdef-us21", "list_id": "abc",
         "base_url": "http://127.0.0.1:9/3.0"},
        {"name": "sink", "type": "csv_file", "path": "out.csv"},
    ], webhooks=webhooks)
    path.chmod(0o600)
    return path


def test_check_lists_each_receiver_path_and_the_adapters_left_to_polling(tmp_path):
    result = cli("--config", str(_settings(tmp_path, listen="127.0.0.1:8090")), "check", "--adapter", "sink")
    assert "  webhooks: ok" in result.output
    assert "listening on 127.0.0.1:8090" in result.output
    assert "/hooks/sg: sendgrid signed Event Webhook" in result.output
    assert "/hooks/mg: Mailgun signed webhooks" in result.output
    assert "polled only (no receiver): mc, sink" in result.output
    assert sign.MAILGUN_KEY not in result.output


def test_check_refuses_a_public_key_that_is_not_an_ec_key_with_one_line(tmp_path):
    result = cli("--config", str(_settings(tmp_path, "bm90IGEga2V5", listen="127.0.0.1:8090")), "check",
                 "--adapter", "sink")
    assert result.exit_code == 1
    assert "  webhooks: FAILED" in result.output
    assert "adapter 'sg': webhook_public_key is not a public key in base64 DER" in result.output
    assert "Traceback" not in result.output


def test_keys_without_a_listener_are_named_by_check(tmp_path):
    result = cli("--config", str(_settings(tmp_path)), "check", "--adapter", "sink")
    assert "no receiver ([webhooks] listen is not set)" in result.output
    assert "webhook keys are set for sg, mg, but nothing listens for them" in result.output


def test_bad_webhook_settings_stop_the_start_naming_the_key(tmp_path):
    path = _settings(tmp_path, listen="nowhere", max_body=10_000_000, body_timeout="0s")
    result = cli("--config", str(path), "check")
    assert result.exit_code == 2
    assert "key 'webhooks.listen': expected 'host:port'" in result.output
    assert "key 'webhooks.max_body'" in result.output and "key 'webhooks.body_timeout'" in result.output


def test_config_shows_the_webhook_secret_as_stars_and_its_file_as_the_origin(tmp_path):
    result = cli("--config", str(_settings(tmp_path, listen="127.0.0.1:8090")), "config")
    assert result.exit_code == 0, result.output
    assert sign.MAILGUN_KEY not in result.output
    line = next(line for line in result.output.splitlines() if "webhook_secret" in line)
    assert "***" in line and "mailgun-signing-key" in line
    assert "webhooks.listen" in result.output


def test_klaviyo_and_hubspot_have_no_webhook_key_and_are_polled_only(tmp_path):
    # Neither has a receiver (docs/adapters.md, Webhooks): a webhook key there is an unknown key, not ignored.
    for kind, extra in (("klaviyo", {"api_key": "pk_test"}), ("hubspot", {"token": "pat-test"})):
        folder = tmp_path / kind
        folder.mkdir()
        path = write_settings(folder, [{"name": "k", "type": kind, "webhook_secret": "0123456789abcdef", **extra},
                                       {"name": "sink", "type": "csv_file", "path": "out.csv"}],
                              webhooks={"listen": "127.0.0.1:8090"})
        path.chmod(0o600)
        result = cli("--config", str(path), "check")
        assert result.exit_code == 2, result.output
        assert "key 'adapters[0] (k).webhook_secret': unknown key" in result.output
    path = write_settings(tmp_path, [{"name": "k", "type": "klaviyo", "api_key": "pk_test",
                                      "base_url": "http://127.0.0.1:9"},
                                     {"name": "sink", "type": "csv_file", "path": "out.csv"}],
                          webhooks={"listen": "127.0.0.1:8090"})
    result = cli("--config", str(path), "check", "--adapter", "sink")
    assert "polled only (no receiver): k, sink" in result.output
    assert "no adapter has a webhook key: every path answers 404" in result.output
