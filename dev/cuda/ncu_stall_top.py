"""Summarizes an Nsight Compute source page (ncu -i R.ncu-rep --page source --csv --print-source sass > R.csv): the
stall reasons' share of the warp samples, and the SASS instructions with the most samples of the top reasons.

    python dev/cuda/ncu_stall_top.py R.csv
"""
import csv
import sys


def main(path: str, top: int = 5):
    rows = list(csv.reader(open(path)))
    head = next(i for i, r in enumerate(rows) if "Address" in r)
    hdr, data = rows[head], rows[head + 1:]
    col = {h: i for i, h in enumerate(hdr)}

    def val(r, key):
        return int(r[col[key]] or 0)

    total = sum(val(r, "Warp Stall Sampling (All Samples)") for r in data)
    reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
    share = sorted(((sum(val(r, k) for r in data), k) for k in reasons), reverse=True)
    print(f"{total} samples")
    for n, k in share[:8]:
        print(f"  {k:24s} {n / total:6.1%}")
    for _, k in share[:3]:
        print(k)
        for r in sorted(data, key=lambda r: -val(r, k))[:top]:
            print(f"  {val(r, k):6d}  {r[col['Address']][-5:]}  {r[col['Source']].strip()[:80]}")


if __name__ == "__main__":
    main(sys.argv[1])
