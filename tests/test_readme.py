"""The README's front door: its test command is exactly what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    after = text[text.index("Run the tests"):]
    return re.search(r"```sh\n(.+?)\n```", after, re.S).group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    command = _readme_test_command()
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] in (command, f"exec {command}"), (command, commands[-1])


def test_the_test_command_installs_chromium_itself():
    script = (ROOT / "tests" / "run").read_text()
    assert "need_debian_package chromium chromium" in script
    assert ".venv/bin/python -m pytest" in script
