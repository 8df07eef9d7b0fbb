"""Each pipe's share of its peak in an Nsight Compute raw page (ncu -i R.ncu-rep --page raw --csv > R.csv, a report
with the ComputeWorkloadAnalysis section): the metrics named *pipe*pct_of_peak_sustained_active, largest first,
and the shared-memory wavefronts' share.

    python dev/cuda/ncu_pipes.py R.csv
"""
import csv
import re
import sys

WANTED = re.compile(r"(pipe.*|data_pipe_lsu_wavefronts_mem_shared.*|issue_active.*)pct_of_peak_sustained_active$")


def main(path: str, top: int = 14):
    rows = list(csv.reader(open(path)))
    names, values = rows[0], rows[-1]  # the names, their units, then one row per kernel: the last
    found = []
    for name, value in zip(names, values):
        if WANTED.search(name):
            try:
                found.append((float(value.replace(",", "")), name))
            except ValueError:
                pass
    for value, name in sorted(found, reverse=True)[:top]:
        print(f"  {value:6.1f}%  {name}")


if __name__ == "__main__":
    main(sys.argv[1])
