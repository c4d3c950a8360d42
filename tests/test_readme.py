"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _block_containing(marker: str) -> str:
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if marker in block:
            return str(block)
    raise AssertionError(f"no README example contains {marker!r}")


async def test_unit_testing_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(_block_containing("async def test_reminder_is_sent"), namespace)
    await namespace["test_reminder_is_sent_after_a_day_and_retried"]()  # type: ignore[operator]


def test_readme_commands_match_ci() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", text)
    assert len(commands) == 2
    demo, tests = commands
    assert "nova demo" in demo and "nox -s lint types tests" in tests
    assert "nox -s lint types tests" in ci and "nova demo" in ci


def test_quick_start_app_registers_its_handlers() -> None:
    namespace: dict[str, object] = {}
    exec(_block_containing("app = nova.App("), namespace)
    app = namespace["app"]
    assert app.queues == {"default": ["email"], "images": ["resize"], "reports": ["report"]}  # type: ignore[attr-defined]
    assert app.queue_for("resize") == "images"  # type: ignore[attr-defined]
