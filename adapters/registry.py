"""Maps a settings `type = "..."` to the adapter class that implements it.

Adapter modules are imported on first use, not here: the network adapters pull
in httpx, botocore and their kin, which every command would otherwise pay for
at start-up even when no such adapter is configured.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Adapter, AdapterSettings


class _AdapterTypes(MutableMapping):
    """Type name -> adapter class; a "module:Class" entry is imported when first looked up."""

    def __init__(self, entries: dict[str, type | str]):
        self._entries = dict(entries)

    def __getitem__(self, type_name: str) -> type:
        entry = self._entries[type_name]
        if isinstance(entry, str):
            module_name, _, class_name = entry.partition(":")
            entry = getattr(importlib.import_module(module_name), class_name)
            self._entries[type_name] = entry
        return entry

    def __setitem__(self, type_name: str, adapter_class: type) -> None:
        self._entries[type_name] = adapter_class

    def __delitem__(self, type_name: str) -> None:
        del self._entries[type_name]

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._entries  # without importing anything

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


ADAPTER_TYPES: MutableMapping[str, type] = _AdapterTypes({
    "csv_folder": "adapters.csv_folder:CsvFolderAdapter",
    "csv_file": "adapters.csv_file:CsvFileAdapter",
    "hubspot": "adapters.hubspot:HubSpotAdapter",
    "sendgrid": "adapters.sendgrid:SendGridAdapter",
    "mailchimp": "adapters.mailchimp:MailchimpAdapter",
    "mailgun": "adapters.mailgun:MailgunAdapter",
    "postmark": "adapters.postmark:PostmarkAdapter",
    "ses": "adapters.ses:SesAdapter",
    "klaviyo": "adapters.klaviyo:KlaviyoAdapter",
})


def settings_model(type_name: str) -> type[AdapterSettings]:
    """The settings model of an adapter type; KeyError for an unknown type."""
    return ADAPTER_TYPES[type_name].settings_model


def register(type_name: str, adapter_class: type) -> None:
    """Add an adapter type (used by tests for in-memory adapters)."""
    ADAPTER_TYPES[type_name] = adapter_class


def build(settings: AdapterSettings, topics: dict[str, str]) -> Adapter:
    """An adapter instance for validated settings."""
    return ADAPTER_TYPES[settings.type](settings, topics)
