"""Regenerate the command-line section of docs/configuration.md from the `mi-crow` app itself.

    .venv/bin/python docs/cli_reference.py          # rewrite the section between the markers
    .venv/bin/python docs/cli_reference.py --print  # print it instead

tests/unit/test_docs_config.py fails when a command or flag is missing from that section.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
PAGE = Path(__file__).resolve().parent / "configuration.md"


def commands(cmd: Any, path: tuple[str, ...] = ("mi-crow",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(command path, leaf command) for every command of a (typer-built) click group, sorted by path."""
    if hasattr(cmd, "commands"):
        for name in sorted(cmd.commands):
            yield from commands(cmd.commands[name], (*path, name))
    else:
        yield path, cmd


def root_command() -> Any:
    import typer

    from mi_crow.cli import app

    return typer.main.get_command(app)


def _default(param: Any) -> str:
    value = param.default
    if param.param_type_name == "argument" or value in (None, "", (), []) or callable(value):
        return ""
    return f" (default `{str(value).lower() if isinstance(value, bool) else value}`)"


def _cell(text: str) -> str:
    return text.strip().replace("|", "\\|")  # a pipe would end the table cell


def render() -> str:
    out = []
    for path, cmd in commands(root_command()):
        out.append(f"### `{' '.join(path)}`\n")
        out.append(((cmd.help or "").strip().splitlines() or [""])[0] + "\n")
        rows = []
        for p in cmd.params:
            if p.name == "help":
                continue
            env = f" (env `{p.envvar}`)" if p.envvar else ""
            if p.param_type_name == "argument":
                name = f"`{p.name.upper()}`" + (" …" if p.nargs == -1 else "")
                rows.append((name, (p.help or "argument") + env))
            else:
                flags = " / ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                rows.append((flags, (p.help or "") + _default(p) + env))
        if rows:
            out.append("| argument or flag | meaning |\n|---|---|")
            out.extend(f"| {name} | {_cell(text)} |" for name, text in rows)
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    section = render()
    if "--print" in sys.argv:
        print(section)
        return
    page = PAGE.read_text(encoding="utf-8")
    head, _, rest = page.partition(START)
    _, _, tail = rest.partition(END)
    PAGE.write_text(f"{head}{START}\n\n{section}\n{END}{tail}", encoding="utf-8")
    print(f"rewrote the CLI section of {PAGE}")


if __name__ == "__main__":
    main()
