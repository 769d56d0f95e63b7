"""The code stays in small pieces: no module outside tests/ over 400 lines, no function over 60 lines of code."""

import ast
import io
import os
import sys
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_MODULE_LINES = 400
MAX_FUNCTION_CODE_LINES = 60
SKIPPED_DIRS = {".venv", ".git", "tests", "runs", "build", "__pycache__"}


def _sources():
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
        for name in names:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def _code_lines(source: str) -> set[int]:
    """Line numbers holding code: not blank, not only a comment, not a docstring."""
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                              tokenize.DEDENT, tokenize.ENDMARKER):
            lines.update(range(token.start[0], token.end[0] + 1))
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            lines -= set(range(body[0].lineno, body[0].end_lineno + 1))
    return lines


def oversized() -> list[str]:
    """Returns one line per module or function over its limit."""
    found = []
    for path in _sources():
        with open(path) as f:
            source = f.read()
        name = os.path.relpath(path, REPO)
        if source.count("\n") > MAX_MODULE_LINES:
            found.append(f"{name}: {source.count(chr(10))} lines")
        code = _code_lines(source)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = len(code & set(range(node.lineno, node.end_lineno + 1)))
                if count > MAX_FUNCTION_CODE_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {count} lines of code")
    return found


def test_modules_and_functions_stay_small():
    assert oversized() == []


def test_the_counter_sees_a_long_function(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_CODE_LINES + 1))
    (tmp_path / "long.py").write_text(f'def f():\n    """Doc."""\n{body}\n')
    monkeypatch.setattr(sys.modules[__name__], "REPO", str(tmp_path))
    assert oversized() == [f"long.py:1 f: {MAX_FUNCTION_CODE_LINES + 2} lines of code"]
