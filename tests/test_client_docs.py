"""docs/python-client.md stays true: every Python example compiles, and the first one
runs against a live service and prints what the page says it prints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import running, token_for

MANUAL = Path(__file__).resolve().parent.parent / "docs" / "python-client.md"
_PYTHON = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXAMPLES = _PYTHON.findall(MANUAL.read_text(encoding="utf-8"))


def test_the_manual_has_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_every_example_compiles(number: int):
    compile(EXAMPLES[number], f"{MANUAL.name}, example {number + 1}", "exec")


async def test_the_first_example_runs_against_a_service(capsys):
    program, last = EXAMPLES[0].rstrip().rsplit("\n", 1)
    assert last.startswith("trio.run(main, ")  # the line a reader runs; the test calls main
    namespace: dict[str, Any] = {}
    exec(compile(program, MANUAL.name, "exec"), namespace)
    async with running(open_rooms=("project_*",)) as service:
        await namespace["main"](service.url, token_for(7, service.config))
    assert re.fullmatch(r"room_message project_7 \{'hello': 'world'\} 1 [0-9a-f]+\n",
                        capsys.readouterr().out)


async def test_the_readme_python_tour_runs_against_a_service(capsys):
    readme = MANUAL.parent.parent / "README.md"
    [tour] = [block for block in _PYTHON.findall(readme.read_text(encoding="utf-8"))
              if "roomcast.client" in block]
    program, last = tour.rstrip().rsplit("\n", 1)
    assert last == "trio.run(main, sys.argv[1])"
    async with running() as service:
        program = program.replace('"ws://127.0.0.1:8000/api/v1/ws"', repr(service.url))
        namespace: dict[str, Any] = {}
        exec(compile(program, readme.name, "exec"), namespace)
        await namespace["main"](token_for(42, service.config))
    joined, message = capsys.readouterr().out.splitlines()
    assert "message='Joined room: project_123'" in joined
    assert "type='room_message', message='hi'" in message
