"""Maps a settings `type = "..."` to the adapter class that implements it."""

from __future__ import annotations

from .base import Adapter, AdapterSettings
from .csv_file import CsvFileAdapter
from .csv_folder import CsvFolderAdapter
from .hubspot import HubSpotAdapter
from .mailchimp import MailchimpAdapter
from .sendgrid import SendGridAdapter
from .mailgun import MailgunAdapter
from .postmark import PostmarkAdapter
from .ses import SesAdapter

ADAPTER_TYPES: dict[str, type] = {
    "csv_folder": CsvFolderAdapter,
    "csv_file": CsvFileAdapter,
    "hubspot": HubSpotAdapter,
    "sendgrid": SendGridAdapter,
    "mailchimp": MailchimpAdapter,
    "mailgun": MailgunAdapter,
    "postmark": PostmarkAdapter,
    "ses": SesAdapter,
}


def settings_model(type_name: str) -> type[AdapterSettings]:
    """The settings model of an adapter type; KeyError for an unknown type."""
    return ADAPTER_TYPES[type_name].settings_model


def register(type_name: str, adapter_class: type) -> None:
    """Add an adapter type (used by tests for in-memory adapters)."""
    ADAPTER_TYPES[type_name] = adapter_class


def build(settings: AdapterSettings, topics: dict[str, str]) -> Adapter:
    """An adapter instance for validated settings."""
    return ADAPTER_TYPES[settings.type](settings, topics)
