"""Which adapters receive webhooks, and their vendor modules.

An adapter receives at /hooks/<its name> when its type has a receiver, it reads (role `read` or
`both`: a write-only adapter's opt-outs are not read by polling either) and its verification
key is set. HubSpot has none: no app webhook reliably signals an opt-out; nor Klaviyo, whose system
webhooks carry metric events, not the suppressions its adapter reads (docs/adapters.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from state.errors import ConfigError

from .common import Hook

# The settings key that turns a type's receiver on, and the module.class that serves it.
KEYS = {"sendgrid": "webhook_public_key", "mailgun": "webhook_secret", "postmark": "webhook_secret",
        "mailchimp": "webhook_secret", "ses": "webhook_topic_arns"}
CLASSES = {"sendgrid": ("receiver.sendgrid", "SendGridHook"), "mailgun": ("receiver.mailgun", "MailgunHook"),
           "postmark": ("receiver.postmark", "PostmarkHook"), "mailchimp": ("receiver.mailchimp", "MailchimpHook"),
           "ses": ("receiver.ses", "SesHook")}


def enabled(config: Any) -> bool:
    """Whether this adapter's settings turn its receiver on."""
    key = KEYS.get(config.type)
    return key is not None and config.reads and bool(getattr(config, key, None))


def build_hooks(settings: Any, adapters: dict[str, Any], sns_fetch: Callable[[str], bytes] | None = None
                ) -> dict[str, Hook]:
    """A hook per enabled adapter, from its built adapter; ConfigError naming a key that cannot work."""
    import importlib

    hooks: dict[str, Hook] = {}
    for config in settings.adapters:
        if not enabled(config):
            continue
        module, name = CLASSES[config.type]
        cls = getattr(importlib.import_module(module), name)
        try:
            if config.type == "ses":
                hook = cls(adapters[config.name], settings.webhooks.sns_max_age, fetch=sns_fetch)
            else:
                hook = cls(adapters[config.name], settings.webhooks.max_age)
        except ValueError as exc:
            raise ConfigError(f"{settings.source}: adapter {config.name!r}: {exc}") from None
        hooks[config.name] = hook
    return hooks


def describe(settings: Any) -> tuple[bool, list[str]]:
    """`check`'s lines for the receiver: what listens where, and keys that cannot work (ok, lines)."""
    from connector.commands import build_adapters

    listen = settings.webhooks.listen
    names = [c.name for c in settings.adapters if enabled(c)]
    if not listen:
        lines = ["no receiver ([webhooks] listen is not set)"]
        if names:
            lines.append(f"webhook keys are set for {', '.join(names)}, but nothing listens for them")
        return True, lines
    lines = [f"listening on {listen}"]
    ok = True
    adapters = {}
    try:
        adapters = build_adapters(settings, names)
        hooks = build_hooks(settings, adapters)
    except ConfigError as exc:
        return False, [*lines, str(exc)]
    finally:
        for adapter in adapters.values():
            adapter.close()
    for name, hook in hooks.items():
        path = f"/hooks/{name}/<webhook_secret>" if settings.adapter(name).type == "mailchimp" else f"/hooks/{name}"
        lines.append(f"{path}: {hook.kind}")
    others = [c.name for c in settings.adapters if c.name not in hooks]
    if others:
        lines.append(f"polled only (no receiver): {', '.join(others)}")
    if not hooks:
        lines.append("no adapter has a webhook key: every path answers 404")
    return ok, lines
