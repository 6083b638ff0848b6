"""The package's layout: no import cycles between its modules, few modules at its top level,
and `recbole-hybrid --help` / `convert` without torch or RecBole."""

import ast
import os
import subprocess
import sys

import recbole_hybrid

PACKAGE = os.path.dirname(recbole_hybrid.__file__)
TOP_LEVEL_AT_MOST = 8


def modules():
    """{dotted module name: path} of every module of the package (a package is its __init__)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(folder, name), os.path.dirname(PACKAGE))
            parts = parts[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = os.path.join(folder, name)
    return found


def imports(path, known):
    """The package's modules that `path` imports anywhere (top level or inside functions):
    `from a.b import c` names the module a.b.c where it exists, else a.b."""
    named = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                named.add(submodule if submodule in known else node.module)
    return {name for name in named if name in known}


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph():
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    assert cycles(import_graph()) == []


def test_few_modules_at_the_top_level():
    top = sorted(name for name in os.listdir(PACKAGE) if name.endswith(".py"))
    assert len(top) <= TOP_LEVEL_AT_MOST, top


def test_help_and_convert_import_neither_torch_nor_recbole(tmp_path):
    source = tmp_path / "sequences.txt"
    source.write_text("u1 a b c\nu2 b c\n")
    probe = ("import sys\nfrom recbole_hybrid.cli import main\n"
             "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exit:\n    code = exit.code\n"
             "print(sorted(m for m in ('torch', 'recbole', 'pandas', 'ray') if m in sys.modules))\n"
             "sys.exit(code)\n")
    for argv in (["--help"], ["convert", "--format=sequences", f"--source={source}",
                              "--name=x", f"--data_path={tmp_path}"]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]", (argv, done.stdout)


def test_the_public_names_the_readme_imports():
    """Every name the README imports, from where it imports it, in a fresh process."""
    probe = ("from recbole_hybrid import run, Recommender, register_model, plugin_models\n"
             "from recbole_hybrid.compare import compare, load_grid\n"
             "from recbole_hybrid.tune import tune\n"
             "from recbole_hybrid.data.convert import convert\n"
             "from recbole_hybrid.modules import Mamba\n"
             "from recbole_hybrid.ops import selective_scan, causal_conv1d\n"
             "print(all(map(callable, (run, Recommender, register_model, plugin_models, compare,"
             " load_grid, tune, convert, Mamba, selective_scan, causal_conv1d))))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"
