"""The shape of the package's code, as a reader meets it: the longest functions, the largest files, and every place
that builds an optimiser. Reads source only (``ast``), so it runs on any checkout:

    python benchmarks/code_shape.py                  # this tree
    python benchmarks/code_shape.py --tree /tmp/old  # another checkout, e.g. `git worktree add /tmp/old <commit>`
    python benchmarks/code_shape.py --top 15

A function's length is its lines from ``def`` to its last line (docstring and comments included); a nested function
counts in its own right and in its parent. An optimiser is built where the code calls ``torch.optim.<X>(...)``,
``pyro.optim.<X>(...)``, or a bare ``Adam``/``SGD``/... imported from them; the calls of the package's own builder
``em.adam`` are listed apart.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

OPTIMISERS = {"Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "ClippedAdam"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def builds_optimiser(call: ast.Call) -> bool:
    name = _dotted(call.func)
    parts = name.split(".")
    return parts[-1] in OPTIMISERS and (len(parts) == 1 or "optim" in parts[:-1])


def shape(package: Path) -> tuple[list, list, list, list]:
    """(functions as (lines, where)), (files as (lines, path)), optimiser builds and calls of ``em.adam`` (where)."""
    functions, files, optimisers, adams = [], [], [], []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        rel = path.relative_to(package.parent)
        files.append((len(text.splitlines()), str(rel)))
        tree = ast.parse(text)
        scopes: dict[ast.AST, str] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                scopes[child] = f"{scopes.get(node, '')}{node.name}." if hasattr(node, "name") else scopes.get(node, "")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{scopes.get(node, '')}{node.name}"
                functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {name}"))
            if isinstance(node, ast.Call) and builds_optimiser(node):
                optimisers.append(f"{rel}:{node.lineno} {scopes.get(node, '').rstrip('.') or '<module>'}")
            if isinstance(node, ast.Call) and _dotted(node.func) == "adam":
                adams.append(f"{rel}:{node.lineno} {scopes.get(node, '').rstrip('.') or '<module>'}")
    return sorted(functions, reverse=True), sorted(files, reverse=True), optimisers, adams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1], help="a checkout's root")
    parser.add_argument("--top", type=int, default=10, help="rows of each table")
    args = parser.parse_args()
    functions, files, optimisers, adams = shape(args.tree / "virel_ppl")
    print(f"## {args.tree}: {len(files)} files, {sum(n for n, _ in files)} lines, {len(functions)} functions\n")
    print("| longest functions | lines |\n|---|---:|")
    print("\n".join(f"| {where} | {n} |" for n, where in functions[: args.top]))
    print("\n| largest files | lines |\n|---|---:|")
    print("\n".join(f"| {path} | {n} |" for n, path in files[: args.top]))
    print(f"\n| places that build an optimiser: {len(optimisers)} |\n|---|")
    print("\n".join(f"| {where} |" for where in optimisers))
    print(f"\n| calls of em.adam (the agent's optimisers): {len(adams)} |\n|---|")
    print("\n".join(f"| {where} |" for where in adams))


if __name__ == "__main__":
    main()
