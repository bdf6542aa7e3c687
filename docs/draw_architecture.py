"""Draw the package's layers from its own imports, as a Mermaid diagram in docs/architecture.md.

    python docs/draw_architecture.py            # rewrite the diagram between its markers in docs/architecture.md
    python docs/draw_architecture.py --check    # exit 1 if the diagram there is not what the code imports
    python docs/draw_architecture.py --print    # print the Mermaid text only

A layer is a sub-package of ``virel_ppl`` (``inference/``, ``runtime/``, ...) or a top-level module (``agent.py``).
Every ``import`` and ``from ... import`` of ``virel_ppl`` in a layer's files, read with :mod:`ast` (nothing is
imported), is an arrow from that layer to the one it names: solid where the import runs when the module loads,
dashed where it runs only inside a function (a deferred import, e.g. of a heavy dependency's user). Imports
under ``if TYPE_CHECKING:`` (annotations only) are not arrows. An import circle between layers is an error.
GitHub and the MkDocs site render the Mermaid block as a picture.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "virel_ppl"
PAGE = ROOT / "docs" / "architecture.md"
START, END = "<!-- imports: start (python docs/draw_architecture.py) -->", "<!-- imports: end -->"


def layer_of(module: str) -> str | None:
    """``virel_ppl.inference.em`` → ``inference``; ``virel_ppl.agent`` → ``agent``; other packages → None."""
    parts = module.split(".")
    if parts[0] != "virel_ppl" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """The ``virel_ppl`` modules a file imports, each with whether the import runs at module load."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    type_only = {  # under a top-level `if TYPE_CHECKING:`: read by type checkers, never run
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: resolve it against this file's package
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module` names both
        else:
            continue
        found += [(name, id(node) in top_level) for name in names]
    return found


def layers() -> list[str]:
    """The package's sub-packages and top-level modules."""
    found = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    return sorted(found - {"__init__", "__pycache__"})


def edges() -> dict[tuple[str, str], bool]:
    """(importer layer, imported layer) → True if some import between them runs at module load."""
    known = set(layers())
    found: dict[tuple[str, str], bool] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        source = layer_of(module)
        for name, at_load in imports(path, module):
            target = layer_of(name)
            if source is None or target is None or target == source or target not in known:
                continue
            found[(source, target)] = found.get((source, target), False) or at_load
    return found


def check_no_circle(found: dict[tuple[str, str], bool]) -> None:
    """Raise ``SystemExit`` naming a circle of layers, if the imports make one."""
    graph: dict[str, set[str]] = {}
    for a, b in found:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circle = path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
                raise SystemExit(f"error: the layers import each other in a circle: {' -> '.join(circle)}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def mermaid(found: dict[tuple[str, str], bool]) -> str:
    """The Mermaid flowchart: each layer a box (folders end in ``/``), each importer above what it imports."""
    names = layers()
    label = {n: f"{n}/" if (PACKAGE / n).is_dir() else f"{n}.py" for n in names}
    lines = ["```mermaid", "flowchart TD"]
    lines += [f'    {n}["{label[n]}"]' for n in names]
    for (a, b), at_load in sorted(found.items()):
        lines.append(f"    {a} {'-->' if at_load else '-.->'} {b}")
    lines.append("```")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 if docs/architecture.md is out of date")
    group.add_argument("--print", action="store_true", help="print the diagram instead of writing it")
    args = parser.parse_args()
    found = edges()
    check_no_circle(found)
    diagram = mermaid(found)
    if args.print:
        print(diagram)
        return
    text = PAGE.read_text()
    if START not in text or END not in text:
        sys.exit(f"error: {PAGE} has no {START} ... {END} markers to write the diagram between.")
    head, rest = text.split(START, 1)
    new = f"{head}{START}\n{diagram}\n{END}{rest.split(END, 1)[1]}"
    if args.check:
        if new != text:
            sys.exit(f"error: the diagram in {PAGE} is out of date: run python docs/draw_architecture.py")
        print(f"{PAGE.relative_to(ROOT)}: the diagram matches the imports")
        return
    PAGE.write_text(new)
    print(f"wrote the diagram of {len(found)} imports between layers to {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
