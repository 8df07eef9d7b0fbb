"""Static instruction counts of a kernel's main loop from an object file's SASS (no GPU needed): the smallest
backward branch range that holds every HMMA of the function, and the opcodes in it.

    python dev/cuda/sass_loop_count.py build/cc/qgemm_cuda.o 'qgemv_resident_kernel.*bf16.*bf16.*bf16.*Li2E'

The function pattern is a regex on the mangled name (cuobjdump prints those); every match is reported.
"""
import collections
import re
import subprocess
import sys

CUOBJDUMP = "/work/venv-cuda/lib/python3.11/site-packages/triton/backends/nvidia/bin/cuobjdump"
LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def functions(obj: str) -> dict[str, list[tuple[int, str, str]]]:
    """Mangled name -> [(address, opcode with modifiers, operands)]."""
    out = subprocess.run([CUOBJDUMP, "-sass", obj], capture_output=True, text=True, check=True).stdout
    funcs, name = {}, None
    for line in out.splitlines():
        if "Function :" in line:
            name = line.split("Function :")[1].strip()
            funcs[name] = []
        elif name is not None and (m := LINE.search(line)):
            funcs[name].append((int(m.group(1), 16), m.group(3), m.group(4).strip()))
    return funcs


def main_loop(code: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The instructions of the smallest backward-branch range that holds every HMMA (all of it if none does)."""
    mma = [a for a, op, _ in code if op.startswith("HMMA")]
    if not mma:
        return code
    best = None
    for a, op, args in code:
        if op.startswith("BRA") and (t := re.search(r"0x([0-9a-f]+)", args)):
            target = int(t.group(1), 16)
            if target <= min(mma) and a >= max(mma) and (best is None or a - target < best[1] - best[0]):
                best = (target, a)
    return code if best is None else [c for c in code if best[0] <= c[0] <= best[1]]


def main(obj: str, pattern: str) -> None:
    for name, code in functions(obj).items():
        if not re.search(pattern, name):
            continue
        loop = main_loop(code)
        ops = collections.Counter(op.split(".")[0] for _, op, _ in loop)
        print(f"{name}\n  function {len(code)} instructions, main loop {len(loop)}: "
              + ", ".join(f"{k} {v}" for k, v in ops.most_common(14)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
