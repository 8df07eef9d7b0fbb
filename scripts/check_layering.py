#!/usr/bin/env python3
"""Checks the layering of the repository; exits 1 and names each violation.

1. No import cycle among the modules of python/gemma4 (every ``import``, at module level or inside a
   function, counts: a lazy import only hides a cycle).
2. No C++ check header (csrc/common/checks.h, csrc/<family>/<family>_checks.h: the device-agnostic
   seams) includes a kernel header: a seam may include only other check headers, plain problem-struct
   headers (csrc/<family>/*_problem.h) and system/library headers, so a CUDA source can include it
   without pulling in CPU kernel code.

Usage: python scripts/check_layering.py [repo_root]
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path


def module_name(path: Path, src_root: Path) -> str:
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_modules(src_root: Path) -> dict[str, Path]:
    return {module_name(p, src_root): p for p in sorted((src_root / "gemma4").rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The gemma4 modules that module `name` imports (resolved to modules that exist)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # The longest existing module prefix: "gemma4.ops.norm.rms_norm" -> "gemma4.ops.norm".
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gemma4":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "gemma4":
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in modules else mod)
    return found


def import_cycles(src_root: Path) -> list[list[str]]:
    modules = python_modules(src_root)
    graph = {name: sorted(imports_of(name, path, modules)) for name, path in modules.items()}
    cycles, state, stack = [], {}, []  # state: 1 = on the stack, 2 = done

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    return cycles


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def is_check_header(rel: str) -> bool:
    return rel == "common/checks.h" or re.fullmatch(r"[a-z_]+/[a-z_]+_checks\.h", rel) is not None


def is_seam_header(rel: str) -> bool:
    """What a check header may include: check headers and plain problem-struct headers."""
    return is_check_header(rel) or re.fullmatch(r"[a-z_]+/[a-z_0-9]+_problem\.h", rel) is not None


def seam_violations(csrc: Path) -> list[str]:
    bad = []
    for header in sorted(csrc.rglob("*.h")):
        rel = header.relative_to(csrc).as_posix()
        if not is_check_header(rel):
            continue
        for inc in _INCLUDE.findall(header.read_text()):
            if (csrc / inc).exists() and not is_seam_header(inc):
                bad.append(f"csrc/{rel} includes the kernel header {inc}")
    return bad


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = [f"import cycle: {' -> '.join(c)}" for c in import_cycles(root / "python")]
    problems += seam_violations(root / "csrc")
    for p in problems:
        print(p)
    if not problems:
        print("layering ok: no import cycle in python/gemma4, no check header includes a kernel header")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
