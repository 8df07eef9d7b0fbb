"""Static instruction counts of a kernel's main loop from an object file's SASS (no GPU needed): the smallest
backward branch range that holds every HMMA of the function, and the opcodes in it.

    python dev/cuda/sass_loop_count.py build/cc/qgemm_cuda.o 'qgemv_resident_kernel.*bf16.*bf16.*bf16.*Li2E'

The function pattern is a regex on the mangled name (cuobjdump prints those); every match is reported. With
`--blocks`, the main loop's basic blocks too (split at branches and branch targets: their sizes and opcodes), which
is how a unit's hot path is counted apart from the code it skips, such as a tile's stores.
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


def branch_target(op: str, args: str) -> int | None:
    if op.startswith("BRA") and (t := re.search(r"0x([0-9a-f]+)", args)):
        return int(t.group(1), 16)
    return None


def main_loop(code: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """The instructions of the smallest backward-branch range that holds every HMMA (all of it if none does)."""
    mma = [a for a, op, _ in code if op.startswith("HMMA")]
    if not mma:
        return code
    best = None
    for a, op, args in code:
        target = branch_target(op, args)
        if target is None or target > min(mma) or a < max(mma):
            continue  # not a backward branch around every HMMA
        if best is None or a - target < best[1] - best[0]:
            best = (target, a)
    return code if best is None else [c for c in code if best[0] <= c[0] <= best[1]]


def basic_blocks(code: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """code cut before every branch target and after every branch."""
    targets = {t for _, op, args in code if (t := branch_target(op, args)) is not None}
    blocks, block = [], []
    for c in code:
        if c[0] in targets and block:
            blocks.append(block)
            block = []
        block.append(c)
        if c[1].startswith(("BRA", "EXIT", "RET")):
            blocks.append(block)
            block = []
    return blocks + ([block] if block else [])


def opcode_counts(code: list[tuple[int, str, str]], top: int) -> str:
    ops = collections.Counter(op.split(".")[0] for _, op, _ in code)
    return ", ".join(f"{k} {v}" for k, v in ops.most_common(top))


def main(obj: str, pattern: str, blocks: bool = False) -> None:
    for name, code in functions(obj).items():
        if not re.search(pattern, name):
            continue
        loop = main_loop(code)
        print(f"{name}\n  function {len(code)} instructions, main loop {len(loop)}: {opcode_counts(loop, 14)}")
        for block in basic_blocks(loop) if blocks else []:
            print(f"    {block[0][0]:#06x} {len(block):4d}: {opcode_counts(block, 8)}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--blocks"]
    main(args[0], args[1], "--blocks" in sys.argv)
