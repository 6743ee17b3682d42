"""What the operator's commands show: masked rejected values, the rejected-rows file, failures and dismissal,
and the dry run's listing."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from connector import operator
from connector.cli import main
from connector.logs import mask_value
from connector.settings import load_settings
from state.models import OptOut, Page
from state.store import Store

from .conftest import write_settings

# Invalid shapes of an address, each with the text that must not show when masked.
INVALID = [
    ("a b@example.com", "a b"),
    ("zed", "zed"),
    ("john.doe@localhost", "john.doe"),
    ("ann@@example.com", "ann@"),
    ("Jane Doe <jane@example.com>", "Jane Doe"),
    ("x", None),
    ("bo@x", "bo@"),
    ("pat.smith@example..com", "pat.smith"),
]


@pytest.fixture
def world(tmp_path):
    path = write_settings(tmp_path, [
        {"name": "crm", "type": "memory"},
    ])
    return tmp_path, path, load_settings(path, environ={})


def cli(path, *args):
    return CliRunner().invoke(main, ["--config", str(path), *args], catch_exceptions=False)


def write_list(folder, values, name="list.csv"):
    path = folder / name
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "email"])
        writer.writerows([["n", value] for value in values])
    return path


@pytest.mark.parametrize("value", [v for v, _ in INVALID])
def test_mask_value_is_never_longer_and_hides_the_local_part(value):
    masked = mask_value(value)
    assert len(masked) <= len(value.strip())
    local = value.rpartition("@")[0] or value
    assert local not in masked or len(local) == 0
    assert mask_value(masked) == masked          # masking twice changes nothing


def test_import_preview_masks_every_invalid_value_by_one_rule(world):
    tmp_path, path, settings = world
    listing = write_list(tmp_path, ["ok@example.com", *(v for v, _ in INVALID)])

    result = cli(path, "import", str(listing))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("    row ")]
    assert len(lines) == len(INVALID)
    for (value, secret), line in zip(INVALID, lines):
        assert f"'{mask_value(value)}'" in line, line
        if secret:
            assert secret not in line, line
        # The masked line is never longer than the same line unmasked.
    shown = cli(path, "--show-addresses", "import", str(listing))
    shown_lines = [line for line in shown.output.splitlines() if line.startswith("    row ")]
    for (value, _), line, masked_line in zip(INVALID, shown_lines, lines):
        assert repr(value) in line
        assert len(masked_line) <= len(line)
    assert "row 2:" not in "\n".join(lines)       # the valid row is not listed


def test_rejected_out_gives_the_row_number_its_own_integer_column(world):
    tmp_path, path, settings = world
    # Rows 2 and 4 valid, 3, 5 and 7 rejected, row 6 blank (not a row of the list, but counted).
    listing = tmp_path / "list.csv"
    listing.write_text("email\nok@x.io\nbad one\nok2@x.io\nnope\n\nfoo@bar\n", encoding="utf-8")
    out = tmp_path / "rejected.csv"
    operator.import_file(settings, listing, rejected_out=out)
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["row", "value", "reason"]
    assert [int(r["row"]) for r in rows] == [3, 5, 7]
    assert [r["value"] for r in rows] == ["bad one", "nope", "foo@bar"]
    source_lines = listing.read_text(encoding="utf-8").splitlines()
    for r in rows:    # the number is the file's own line number (header = row 1)
        assert source_lines[int(r["row"]) - 1] == r["value"]
