"""Layering of the repository as the command line checks it: `python scripts/check_layering.py [root]` exits 0
on this repository and 1, naming the import cycle, on a package that has one.

The check itself (no import cycle in python/gemma4, lazy imports included; no kernel header in a C++
seam) lives once, in scripts/check_layering.py; tests/scripts/test_check_layering.py tests its functions.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_layering.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_repository_passes():
    done = run_check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("layering ok")


def test_a_cycle_fails_the_check(tmp_path):
    pkg = tmp_path / "python" / "gemma4"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from gemma4 import b\n")
    (pkg / "b.py").write_text("def f():\n    import gemma4.a  # a lazy import still ties the modules\n")
    done = run_check(str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.splitlines() in (["import cycle: gemma4.a -> gemma4.b -> gemma4.a"],
                                        ["import cycle: gemma4.b -> gemma4.a -> gemma4.b"]), done.stdout
