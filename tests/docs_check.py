"""The checks behind tests/test_docs.py: Markdown's fenced blocks, links and anchors; the shell
commands in the blocks parsed against their tool's own flags; the ```python blocks run in order."""

from __future__ import annotations

import ast
import configparser
import contextlib
import dataclasses
import glob
import importlib
import io
import os
import re
import shlex
import textwrap

from absl import flags

from contracts import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHONS = ("python", "python3", ".venv/bin/python", "$(PY)")
SHELL_OPERATORS = ("&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "(", ")")
# absl's own flags every tool answers (absl.app and absl.logging define them), with their types.
ABSL_FLAGS = {"verbosity": int, "v": int, "logtostderr": bool, "alsologtostderr": bool, "log_dir": str,
              "stderrthreshold": str, "helpfull": bool, "help": bool, "helpshort": bool,
              "only_check_args": bool, "pdb": bool, "flagfile": str}
_ABSL_DEFINERS = {int: flags.DEFINE_integer, bool: flags.DEFINE_bool, str: flags.DEFINE_string}
ABSL_PARSED_LATER = ("flagfile",)  # reads its file while parsing: checked by name only


def doc_pages(repo: str = REPO) -> list[str]:
    """Every Markdown page of the project (not those of installed packages)."""
    pages = [os.path.join(repo, name) for name in ("README.md", "ARCHITECTURE.md")]
    for pattern in ("docs/*.md", "tests/*.md", "bench/*.md"):
        pages += sorted(glob.glob(os.path.join(repo, pattern)))
    return [p for p in pages if os.path.exists(p)]


def rel(path: str, repo: str = REPO) -> str:
    return os.path.relpath(path, repo)


# --- Markdown -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Block:
    info: str  # the fence's info string ("python", "sh", "")
    text: str
    line: int  # 1-based line of the first line inside the fence


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """(fenced blocks, [(line number, line)] of the prose outside them)."""
    blocks, prose = [], []
    fence, info, start, body = None, "", 0, []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip()
        if fence is None:
            match = re.match(r"(`{3,}|~{3,})\s*([^`\s]*)", stripped)
            if match:
                fence, info, start, body = match.group(1), match.group(2).lower(), number + 1, []
                continue
            prose.append((number, line))
        elif stripped.startswith(fence) and not stripped[len(fence):].strip():
            blocks.append(Block(info, textwrap.dedent("\n".join(body)), start))
            fence = None
        else:
            body.append(line)
    return blocks, prose


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lowercased, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for _, line in split_markdown(text)[1]:
        match = re.match(r" {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings: name, name-1, name-2
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    found.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", text))
    return found


def links(text: str) -> list[tuple[int, str]]:
    """[(line, target)] of the inline and reference links in the prose (not in code)."""
    found = []
    for number, line in split_markdown(text)[1]:
        line = re.sub(r"(`+).*?\1", "", line)  # code spans are not links
        found += [(number, target) for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line)]
        found += [(number, m) for m in re.findall(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", line)]
    return found


def broken_links(page: str, repo: str = REPO) -> list[str]:
    """One line per relative link of `page` whose file or #anchor does not exist."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    problems = []
    for number, target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        where = f"{rel(page, repo)}:{number}: link {target}"
        if not os.path.exists(resolved):
            problems.append(f"{where}: {rel(resolved, repo)} does not exist")
        elif anchor and resolved.endswith(".md"):
            with open(resolved, encoding="utf-8") as f:
                if anchor not in anchors(f.read()):
                    problems.append(f"{where}: no heading #{anchor} in {rel(resolved, repo)}")
    return problems


# --- Command lines --------------------------------------------------------------------------------

def command_lines(block: Block) -> list[tuple[int, list[str]]]:
    """[(line, tokens)] of each shell command in a block; `\\` continuations joined, comments and
    heredoc bodies dropped, `a && b` split in two."""
    lines, heredoc, pending, first = [], None, "", 0
    for offset, raw in enumerate(block.text.splitlines()):
        if heredoc is not None:
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        first = first if pending else block.line + offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = pending + raw, ""
        marker = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if marker:
            heredoc = marker.group(1)
        try:
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
        except ValueError:
            continue
        command: list[str] = []
        for token in tokens + [";"]:
            if token in SHELL_OPERATORS or token.startswith("#"):
                if command:
                    lines.append((first, command))
                command = []
                if token.startswith("#"):
                    break
            else:
                command.append(token)
    return lines


def _console_scripts(repo: str) -> dict[str, str]:
    """cxr-* console script -> the script's path (setup.cfg's entry points)."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(repo, "setup.cfg"))
    scripts = {}
    for line in parser["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        scripts[name] = target.split(":")[0].replace(".", "/") + ".py"
    return scripts


@dataclasses.dataclass
class Tool:
    path: str  # relative to the repository
    values: flags.FlagValues | None  # the tool's own flags, parsed for real; None: names only
    names: set[str]
    required: list[str]


def _config_type(module, source: str):
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "cli" and node.args
                and isinstance(node.args[0], ast.Name)):
            return getattr(module, node.args[0].id)
    return None


def _defined_names(source: str) -> set[str]:
    """Flags a script defines with absl's flags.DEFINE_*("name", ...) (read from its source)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE_") and node.args
                and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
            if node.func.attr == "DEFINE_bool":
                names.add("no" + node.args[0].value)
    return names


def load_tool(path: str, repo: str = REPO) -> Tool:
    """A script's flag set: generated from its config (cli.run), or its DEFINE_* calls otherwise."""
    with open(os.path.join(repo, path), encoding="utf-8") as f:
        source = f.read()
    values = flags.FlagValues()  # absl's own flags as stand-ins: parsing them changes no global state
    for name, kind in ABSL_FLAGS.items():
        _ABSL_DEFINERS[kind](name, None, "absl's", flag_values=values)
    config_type = None
    if "cli.run(" in source:
        module = importlib.import_module(path[:-3].replace("/", "."))
        config_type = _config_type(module, source)
    if config_type is None:
        names = _defined_names(source) | set(ABSL_FLAGS)
        return Tool(path, None, names, [])
    cli.define_flags(config_type, values)
    names = set(values) | {"no" + n for n in values if isinstance(values[n], flags.BooleanFlag)}
    return Tool(path, values, names, cli.required(config_type))


def _makefile(repo: str) -> tuple[set[str], set[str]]:
    with open(os.path.join(repo, "Makefile"), encoding="utf-8") as f:
        text = f.read()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z][A-Z0-9_]*)\s*\?=", text, re.M))
    return targets, variables


def _check_make(tokens: list[str], repo: str) -> list[str]:
    targets, variables = _makefile(repo)
    problems = []
    for token in tokens[1:]:
        name, eq, _ = token.partition("=")
        if token.startswith("-"):  # make's own options
            continue
        if eq and name not in variables:
            problems.append(f"make variable {name} is not one the Makefile reads ({', '.join(sorted(variables))})")
        elif not eq and token not in targets:
            problems.append(f"make target {token} does not exist ({', '.join(sorted(targets))})")
    return problems


def _check_flags(tool: Tool, args: list[str]) -> list[str]:
    given = [a for a in args if a.startswith("-")]
    problems = []
    for arg in given:
        name = arg.lstrip("-").split("=", 1)[0]
        if name not in tool.names:
            problems.append(f"{tool.path} defines no flag --{name}")
    if problems or tool.values is None:
        return problems
    checked = [a for a in args if a.lstrip("-").split("=", 1)[0] not in ABSL_PARSED_LATER]
    for name in tool.values:  # the last command's values must not count for this one
        tool.values[name].unparse()
    try:
        rest = tool.values([tool.path] + checked)
    except flags.Error as err:
        return [f"{tool.path}: {err}"]
    if rest[1:]:
        problems.append(f"{tool.path} takes no positional argument (got {' '.join(rest[1:])})")
    stated = {a.lstrip("-").split("=", 1)[0] for a in given}
    if not stated & {"help", "helpfull", "helpshort", "flagfile"}:
        problems += [f"{tool.path} needs --{name}" for name in tool.required if name not in stated]
    return problems


def tool_of(tokens: list[str], repo: str = REPO) -> tuple[str | None, list[str]]:
    """(the project script a command runs, its arguments), or (None, []) for any other command."""
    while tokens and re.match(r"[A-Za-z_]\w*=", tokens[0]):  # VAR=value before the command
        tokens = tokens[1:]
    if not tokens:
        return None, []
    head = tokens[0]
    if head in PYTHONS or head.endswith("/python"):
        script = tokens[1] if len(tokens) > 1 else ""
        script = script[2:] if script.startswith("./") else script
        if script.endswith(".py") and os.path.exists(os.path.join(repo, script)):
            return script, tokens[2:]
        return None, []
    if head in _console_scripts(repo):
        return _console_scripts(repo)[head], tokens[1:]
    if head.lstrip("./") == "bench/gpu_check.sh":
        return "bench/gpu_check.py", tokens[1:]
    if head == "make":
        return "Makefile", tokens[1:]
    return None, []


def command_problems(page: str, repo: str = REPO, tools: dict[str, Tool] | None = None) -> list[str]:
    """One line per command of `page` that names a target, variable, flag or value its tool lacks."""
    tools = {} if tools is None else tools
    with open(page, encoding="utf-8") as f:
        blocks = split_markdown(f.read())[0]
    problems = []
    for block in blocks:
        if block.info in ("python", "py", "json", "text", "pycon", "diff", "yaml", "toml"):
            continue
        for line, tokens in command_lines(block):
            script, args = tool_of(tokens, repo)
            if script is None:
                continue
            if script == "Makefile":
                found = _check_make(["make"] + args, repo)
            else:
                if script not in tools:
                    tools[script] = load_tool(script, repo)
                found = _check_flags(tools[script], args)
            problems += [f"{rel(page, repo)}:{line}: {p}" for p in found]
    return problems


# --- Python examples ------------------------------------------------------------------------------

def python_blocks(page: str) -> list[Block]:
    with open(page, encoding="utf-8") as f:
        return [b for b in split_markdown(f.read())[0] if b.info in ("python", "py")]


def run_examples(page: str, repo: str = REPO) -> None:
    """Runs each of the page's python blocks, in order, each in a namespace of its own: a reader
    copies one block, so none may lean on names another defined (the caller sets the directory)."""
    for n, block in enumerate(python_blocks(page), 1):
        code = compile(block.text, f"{rel(page, repo)} (python block {n}, line {block.line})", "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, {"__name__": "__docs_example__"})  # noqa: S102  (the docs' own examples)


def block_under(page: str, heading: str) -> Block:
    """The first ```python block after the line `heading` (e.g. "## TensorFlow Serving")."""
    with open(page, encoding="utf-8") as f:
        text = f.read()
    start = text.splitlines().index(heading) + 1
    return next(b for b in python_blocks(page) if b.line > start)
