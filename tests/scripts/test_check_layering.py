"""scripts/check_layering.py: the repository passes it, and it catches what it is meant to catch."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_layering", ROOT / "scripts" / "check_layering.py")
layering = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layering)


def test_repository_has_no_import_cycle():
    assert layering.import_cycles(ROOT / "python") == []


def test_reads_the_repository_imports():
    """The graph is not empty by mistake: module-level, lazy and `from gemma4 import <module>` imports count."""
    modules = layering.python_modules(ROOT / "python")
    imports = {name: layering.imports_of(name, modules[name], modules)
               for name in ("gemma4.demo", "gemma4.cli", "gemma4.modeling.linear")}
    assert "gemma4.cli_common" in imports["gemma4.demo"]
    assert "gemma4.cache" in imports["gemma4.cli"]  # imported inside a function
    assert "gemma4.ops" in imports["gemma4.modeling.linear"]


def test_repository_seams_include_no_kernel_header():
    assert layering.seam_violations(ROOT / "csrc") == []


def test_finds_an_import_cycle(tmp_path):
    pkg = tmp_path / "python" / "gemma4"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from gemma4.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g  # a lazy import still counts\n")
    (pkg / "c.py").write_text("import gemma4.a as a\n")
    (pkg / "d.py").write_text("from gemma4 import a, sub\nfrom . import c\n")  # imports, no cycle through d
    cycles = layering.import_cycles(tmp_path / "python")
    assert len(cycles) == 1
    assert cycles[0][0] == cycles[0][-1] and set(cycles[0]) == {"gemma4.a", "gemma4.sub.b", "gemma4.c"}


def test_finds_a_seam_that_includes_a_kernel_header(tmp_path):
    csrc = tmp_path / "csrc"
    (csrc / "common").mkdir(parents=True)
    (csrc / "norm").mkdir()
    (csrc / "common" / "checks.h").write_text("#include <ATen/ATen.h>\n")
    (csrc / "common" / "vec_utils.h").write_text("")
    (csrc / "norm" / "norm_kernels.h").write_text('#include "norm/norm_checks.h"\n')
    (csrc / "norm" / "norm_checks.h").write_text('#include "common/checks.h"\n#include "common/vec_utils.h"\n')
    assert layering.seam_violations(csrc) == ["csrc/norm/norm_checks.h includes the kernel header common/vec_utils.h"]
    (csrc / "norm" / "norm_checks.h").write_text('#include "common/checks.h"\n#include <optional>\n')
    assert layering.seam_violations(csrc) == []
    assert layering.main(["x", str(tmp_path)]) == 0
