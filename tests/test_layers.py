"""Data flows down: no import circle, no package importing a layer above it or a top-level script,
no `sys.path` edit outside the two script shims, and no public function with more than 8 parameters.

Read from the code's own imports (function-level ones included), so a lazy import cannot hide a circle.
"""

import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bottom to top: a package imports only packages listed before it (and itself).
LAYERS = ("contracts", "preprocess", "pipeline", "models", "training", "evaluation", "serving")
SHIMS = ("preprocess/build_tfrecords.py", "preprocess/synthetic.py")  # scripts that live inside a package
MAX_PARAMETERS = 8
SKIPPED = {".venv", ".git", "tests", "bench", "runs", "build", "__pycache__"}


def _modules(repo: str) -> dict[str, str]:
    """Dotted module name -> path, for every product module."""
    found = {}
    for root, dirs, names in os.walk(repo):
        dirs[:] = [d for d in dirs if d not in SKIPPED and not d.endswith(".egg-info")]
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), repo)
                module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
                found[module] = rel
    return found


def import_graph(repo: str = REPO) -> tuple[dict[str, set[str]], dict[str, ast.Module]]:
    """Module -> the project modules it imports anywhere in its body; and each module's tree."""
    modules = _modules(repo)
    graph, trees = {}, {}
    for module, rel in modules.items():
        with open(os.path.join(repo, rel)) as f:
            trees[module] = tree = ast.parse(f.read())
        package = module if rel.endswith("__init__.py") else module.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
                imported.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                                for a in node.names)
        graph[module] = {m for m in imported if m in modules and m != module}
    return graph, trees


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]], modules: dict[str, str]) -> list[str]:
    """`a -> b` for each package module importing a higher layer or a top-level script."""
    scripts = {m for m in modules if "." not in m and m not in LAYERS}
    bad = []
    for module, imported in sorted(graph.items()):
        layer = module.split(".")[0]
        if layer not in LAYERS or modules[module] in SHIMS:
            continue
        for target in sorted(imported):
            top = target.split(".")[0]
            if target in scripts or (top in LAYERS and LAYERS.index(top) > LAYERS.index(layer)):
                bad.append(f"{module} -> {target}")
    return bad


def path_edits(trees: dict[str, ast.Module], modules: dict[str, str]) -> list[str]:
    """Modules other than the shims that change sys.path."""
    bad = []
    for module, tree in trees.items():
        if modules[module] in SHIMS:
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                bad.append(modules[module])
                break
    return bad


def wide_functions(trees: dict[str, ast.Module], modules: dict[str, str]) -> list[str]:
    """Public functions taking more than MAX_PARAMETERS parameters (self and cls not counted)."""
    bad = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len([n for n in names if n not in ("self", "cls")])
                if count > MAX_PARAMETERS:
                    bad.append(f"{modules[module]}:{node.lineno} {node.name}: {count} parameters")
    return bad


def test_no_import_circle():
    graph, _ = import_graph()
    assert circles(graph) == []


def test_no_package_imports_upward_or_a_script():
    graph, _ = import_graph()
    assert upward_imports(graph, _modules(REPO)) == []


def test_only_the_shims_edit_sys_path():
    _, trees = import_graph()
    assert path_edits(trees, _modules(REPO)) == []


def test_no_public_function_takes_more_than_eight_parameters():
    _, trees = import_graph()
    assert wide_functions(trees, _modules(REPO)) == []


def test_the_checks_see_a_lazy_circle_an_upward_import_a_path_edit_and_a_wide_function(tmp_path):
    """Each checker finds the one-line regression it exists for, in a tree made here."""
    (tmp_path / "contracts").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "contracts" / "__init__.py").write_text("")
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "train.py").write_text("")
    (tmp_path / "contracts" / "a.py").write_text("def f():\n    from contracts import b\n")
    (tmp_path / "contracts" / "b.py").write_text("import contracts.a\nimport train\n")
    (tmp_path / "contracts" / "c.py").write_text("from models import m\nimport sys\nsys.path.insert(0, '.')\n")
    (tmp_path / "models" / "m.py").write_text("def g(a, b, c, d, e, f, g, h, i):\n    pass\n")
    graph, trees = import_graph(str(tmp_path))
    modules = _modules(str(tmp_path))
    assert circles(graph) == [["contracts.a", "contracts.b"]]
    assert upward_imports(graph, modules) == ["contracts.b -> train", "contracts.c -> models.m"]
    assert path_edits(trees, modules) == [os.path.join("contracts", "c.py")]
    assert wide_functions(trees, modules) == [os.path.join("models", "m.py") + ":1 g: 9 parameters"]
