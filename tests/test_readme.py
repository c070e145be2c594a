"""The README is a newcomer's guide: short, and every command and option it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

from bncheck.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands() -> dict[tuple[str, ...], click.Command]:
    """Every command path of the CLI: ('run',), ('generate', 'grid'), ..."""
    out: dict[tuple[str, ...], click.Command] = {}

    def walk(cmd: click.Command, path: tuple[str, ...]) -> None:
        out[path] = cmd
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))

    walk(main, ())
    return out


def _options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} | {"--help"}


def _invocations(text: str) -> list[list[str]]:
    """Every `bncheck ...` command line in code spans and code blocks, tokenised."""
    spans = re.findall(r"`([^`\n]+)`", text)
    blocks = [line for b in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for line in b.splitlines()]
    found = []
    for piece in spans + blocks:
        for m in re.finditer(r"\bbncheck ((?:[\w./*'\"=,@<>:{}\[\]-]+ ?)+)", piece):
            try:
                words = shlex.split(m.group(1).split("#")[0])
            except ValueError:
                words = m.group(1).split()
            found.append(words)
    return found


def test_every_command_and_option_the_readme_names_exists():
    commands = _commands()
    checked = 0
    for words in _invocations(README):
        path: tuple[str, ...] = ()
        for w in words:
            if (*path, w) in commands:
                path = (*path, w)
            else:
                break
        if not path:
            continue  # prose such as "bncheck is ...", or `pip install bncheck`
        cmd = commands[path]
        for w in (w.strip("[]") for w in words):
            if w.startswith("--"):
                assert w.split("=")[0] in _options(cmd), f"README: 'bncheck {' '.join(path)}' has no option {w}"
        checked += 1
    assert checked >= 15
    every = set().union(*(_options(c) for c in commands.values()))
    named = set(re.findall(r"`(--[a-z][a-z-]*)", README))
    assert named and named <= every, f"options named in the README that no command has: {sorted(named - every)}"
    for cmd in re.findall(r"\| `bncheck ([a-z]+)", README):
        assert (cmd,) in commands, cmd


def test_the_readme_is_a_short_guide_linking_existing_docs():
    assert len(README.splitlines()) <= 220
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link
    assert not re.search(r"\b20\d\d-\d\d-\d\d \d\d:\d\d\b", README), "dated measurements belong in docs/"
