"""The package's structure in two numbers: import circles, and the places that spell `ResNet`'s arguments.

    python benchmarks/structure.py [--root CHECKOUT] [--min-names 8]

Reads the source as text (Python's `ast`; nothing is imported, so it runs on any checkout, an old
commit's too: `git worktree add /tmp/old COMMIT && python benchmarks/structure.py --root /tmp/old`).

- Import circles: modules of keras_resnet_v2/, training/ and export/ (installed as
  keras_resnet_v2.training and .export) as nodes, every `import` of another (at the top or inside
  a function) as an edge; each strongly connected set of two or more modules is a circle.
- Argument spellings: `ResNet`'s keyword parameters, read from keras_resnet_v2/resnet.py's
  signature. A place spells them when one function signature, call, dict literal or class body
  names at least `--min-names` of them (as parameters, keywords, string keys or fields). Each
  place is printed, so a reader can see which lists remain and judge them.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections import defaultdict

ROOMS = {"keras_resnet_v2": "keras_resnet_v2", "training": "keras_resnet_v2.training",
         "export": "keras_resnet_v2.export"}


def modules(root: str) -> dict[str, str]:
    """Dotted module name -> file, for the package's three folders."""
    found = {}
    for folder, package in ROOMS.items():
        for directory, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(directory, name), os.path.join(root, folder))
                    parts = relative[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join([package, *parts])] = os.path.join(directory, name)
    return found


def imports(path: str, module: str, known: set[str]) -> set[str]:
    """The package's modules `path` imports (`from keras_resnet_v2 import x` counts x if it is a module)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    out.add(f"{base}.{alias.name}")
                elif base in known:
                    out.add(base)
    out.discard(module)
    return {name for name in out if name != "keras_resnet_v2"}  # the package's lazy front door


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def resnet_keywords(root: str) -> set[str]:
    tree = ast.parse(open(os.path.join(root, "keras_resnet_v2", "resnet.py"), encoding="utf-8").read())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "ResNet")
    return {arg.arg for arg in function.args.args + function.args.kwonlyargs}


def spellings(path: str, names: set[str], minimum: int) -> list[tuple[int, str, int]]:
    """(line, kind, how many of `names`) for each place in `path` naming at least `minimum` of them."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    places = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            named = {arg.arg for arg in node.args.args + node.args.kwonlyargs}
            kind = f"signature of {node.name}"
        elif isinstance(node, ast.Call):
            named = {keyword.arg for keyword in node.keywords if keyword.arg}
            kind = "call"
        elif isinstance(node, ast.Dict):
            named = {key.value for key in node.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}
            kind = "dict literal"
        elif isinstance(node, ast.ClassDef):
            named = {target.id for item in node.body if isinstance(item, ast.AnnAssign)
                     for target in [item.target] if isinstance(target, ast.Name)}
            kind = f"fields of {node.name}"
        elif isinstance(node, ast.Tuple):
            named = {item.value for item in node.elts if isinstance(item, ast.Constant) and isinstance(item.value, str)}
            kind = "tuple of names"
        else:
            continue
        count = len(named & names)
        if count >= minimum:
            places.append((node.lineno, kind, count))
    return places


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--min-names", type=int, default=8)
    args = parser.parse_args(argv)
    found = modules(args.root)
    graph = {module: imports(path, module, set(found)) for module, path in found.items()}
    loops = circles(graph)
    print(f"modules: {len(found)}; import edges: {sum(map(len, graph.values()))}; circles: {len(loops)}")
    for loop in loops:
        print("  circle: " + " <-> ".join(loop))
    names = resnet_keywords(args.root)
    places = defaultdict(list)
    for path in sorted(found.values()):
        for line, kind, count in spellings(path, names, args.min_names):
            places[os.path.relpath(path, args.root)].append(f"{line} {kind} ({count} of {len(names)})")
    total = sum(map(len, places.values()))
    print(f"places naming >= {args.min_names} of ResNet's {len(names)} arguments: {total}")
    for path, rows in places.items():
        for row in rows:
            print(f"  {path}:{row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
