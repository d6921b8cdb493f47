"""The user documentation names only what exists: CADENCE_* variables, `cadence` commands and options, make targets.

Why: README.md, DEVELOPERS.md and docs/*.md are how operators find a setting or a command; a
renamed option or variable left in them fails only when someone follows the docs. Static and
fast: the docs are read as text, the CLI's click tree is walked without running anything.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import typer

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
#: where code that reads a CADENCE_* variable lives (tests are no reader)
CODE_DIRS = ("cadence", "server", "evaluation", "federated", "fusion", "modalities", "compliance", "continuous",
             "mobile_client", "scripts")


def _doc_text() -> dict[Path, str]:
    return {p: p.read_text("utf-8") for p in DOCS}


def _code_text() -> str:
    return "\n".join(p.read_text("utf-8", errors="replace") for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_every_documented_cadence_variable_exists() -> None:
    from cadence.settings import Settings

    settings = {f"CADENCE_{name.upper()}" for name in Settings.model_fields}
    code = _code_text()
    unknown: dict[str, str] = {}
    for path, text in _doc_text().items():
        for name in set(re.findall(r"\bCADENCE_[A-Z0-9_]*[A-Z0-9]\b", text)):
            # a setting, or a variable some module reads by its exact name
            if name not in settings and f'"{name}"' not in code and f"'{name}'" not in code:
                unknown.setdefault(name, path.relative_to(ROOT).as_posix())
    assert not unknown, f"documented CADENCE_* variables that nothing reads: {unknown}"


def _commands() -> click.Group:
    from cadence.cli import app

    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    return group


#: stands for an escaped `\\|` between alternatives (`cadence audit verify \\| seal`)
ALT = "<or>"


def _snippets(text: str) -> list[str]:
    """Each `cadence ...` invocation shown: lines of fenced code, and inline code spans (joined across lines)."""
    out: list[str] = []
    for lang, block in re.findall(r"^```([^\n]*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang.strip() != "mermaid":  # a diagram's labels are no commands
            out += block.splitlines()
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    out += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    found = []
    for s in out:
        s = s.replace("\\|", f" {ALT} ")  # a table's escaped "|": alternatives of one command
        for m in re.finditer(r"(?:^|[\s;&(])(cadence (?:[a-z][\w-]*)(?:[^#|;&)]*))", s):
            found.append(m.group(1).replace("\\", "").strip())
    return found


def _check(group: click.Group, snippet: str) -> str | None:
    """Why `snippet` names no command or option of `group`, or None."""
    try:
        words = shlex.split(snippet.replace("[", " ").replace("]", " "))
    except ValueError:
        words = snippet.replace("[", " ").replace("]", " ").split()
    cmd: click.Command = group
    path = ["cadence"]
    parent: click.Group = group
    for i, w in enumerate(words[1:], start=1):
        if w == ALT:  # the next word is another subcommand of the same group, or more options of this command
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if not nxt.startswith("-"):  # another subcommand: checked against the group
                cmd, path = parent, path[:-1]
            continue
        if isinstance(cmd, click.Group):
            if not re.fullmatch(r"[a-z][a-z-]*", w):
                return None  # a placeholder or "..." after a group: nothing more to check
            sub = cmd.commands.get(w)
            if sub is None:
                return f"{' '.join(path)} has no command {w!r}"
            parent, cmd, path = cmd, sub, path + [w]
            continue
        if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w):
            name = w.split("=", 1)[0]
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help", "-h"}
            if name not in known:
                return f"{' '.join(path)} has no option {name}"
    return None


def test_every_documented_cadence_command_and_option_exists() -> None:
    group = _commands()
    problems = []
    seen = 0
    for path, text in _doc_text().items():
        for snippet in _snippets(text):
            seen += 1
            why = _check(group, snippet)
            if why:
                problems.append(f"{path.relative_to(ROOT).as_posix()}: `{snippet}`: {why}")
    assert seen > 40, f"found only {seen} `cadence ...` snippets: the extraction broke"
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_command_or_option() -> None:
    group = _commands()
    assert _check(group, "cadence models list") is None
    assert _check(group, "cadence bench NAME --data-dir D --out O --quick --seed N") is None
    assert _check(group, "cadence modles list") is not None
    assert _check(group, "cadence models lsit") is not None
    assert _check(group, "cadence federated run --secure") is not None
    assert _check(group, f"cadence audit verify {ALT} seal --out F") is None
    assert _check(group, f"cadence audit verify {ALT} seel") is not None
    assert _check(group, f"cadence bench NAME --data-dir D {ALT} --train-dir A --evaldir B") is not None


def test_every_make_target_the_docs_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text("utf-8")
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = {t for text in _doc_text().values() for t in re.findall(r"`make ([\w-]+)", text)}
    assert named and named <= targets, f"make targets the docs name but the Makefile lacks: {named - targets}"


def test_readme_keeps_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    setup = readme.split("## Set up and run", 1)[1].split("##", 1)[0]
    block = re.search(r"```sh\n(.*?)```", setup, flags=re.S)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
