"""Finds loops whose waits on a global load's scoreboard come soon after the last load on that scoreboard, from
`cuobjdump -sass` output (with the instruction encodings: the control bits are decoded from them). A warp's
loads that share a scoreboard are waited for together, so a wait a few instructions after a load stalls for
that load's whole latency, however many loads were issued before it (dev/cuda/experiments/README.md, "The loop
waited for loads it had just issued"). Here cuobjdump comes with triton:

    CU=/work/venv-cuda/lib/python3.11/site-packages/triton/backends/nvidia/bin/cuobjdump
    $CU -sass build/cc/qgemm_cuda.o > sass.txt      # dev/cuda/compile_check.sh builds the object
    python dev/cuda/sass_waits.py sass.txt [kernel name part] [most instructions between load and wait, 25]
"""
import re
import sys

INSTR = re.compile(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\* (0x[0-9a-f]+) \*/")
HIGH = re.compile(r"/\* (0x[0-9a-f]+) \*/")
BRANCH = re.compile(r"BRA (?:!?P\d, )?0x([0-9a-f]+)")


def instructions(body: str):
    """(address, text, write scoreboard or 7, wait mask) of each instruction: the control bits of sm_70+
    encodings sit in the high word, write barrier at bits 46-48, wait mask at 52-57."""
    lines, out, i = body.split("\n"), [], 0
    while i < len(lines):
        m = INSTR.match(lines[i])
        if m and i + 1 < len(lines) and HIGH.search(lines[i + 1]):
            high = int(HIGH.search(lines[i + 1]).group(1), 16)
            out.append((int(m.group(1), 16), m.group(2).strip(), (high >> 46) & 7, (high >> 52) & 0x3F))
            i += 2
        else:
            i += 1
    return out


def close_waits(ins, limit: int):
    """Per backward branch (a loop): waits on a scoreboard that a global load of the loop writes, fewer than
    `limit` instructions (cyclically) after the loop's last such load."""
    index = {a: k for k, (a, *_) in enumerate(ins)}
    for k, (a, text, _, _) in enumerate(ins):
        m = BRANCH.search(text)
        target = int(m.group(1), 16) if m else None
        if target is None or target >= a or target not in index:
            continue
        body = ins[index[target]:k + 1]
        loads = [(j, wb) for j, (_, t, wb, _) in enumerate(body) if "LDG" in t and wb != 7]
        for j, (_, t, _, mask) in enumerate(body):
            for sb in {wb for _, wb in loads}:
                if mask >> sb & 1:
                    gap = min((j - x) % len(body) or len(body) for x, w in loads if w == sb)
                    if gap < limit:
                        yield len(body), sb, j, gap, t


def main(path: str, part: str = "", limit: int = 25):
    for function in open(path).read().split("Function : ")[1:]:
        name = function.split("\n")[0].strip()
        if part not in name:
            continue
        for n, sb, j, gap, text in close_waits(instructions(function), limit):
            print(f"{name[:100]}  loop of {n}: SB{sb} waited at +{j} ({text[:40]}), {gap} after its last load")


if __name__ == "__main__":
    main(sys.argv[1], *(sys.argv[2:3]), *(int(v) for v in sys.argv[3:4]))
