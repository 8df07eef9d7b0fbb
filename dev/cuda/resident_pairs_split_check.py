"""The x-resident GEMV's work split with tile pairs (resident_tile_pairs.patch), checked on the CPU: the kernel's
bookkeeping (ResidentGroups, UnitCursor, run_unit, the partial sums and their adding-up) written again in Python,
run for every block of many (tiles, spans, SMs), and each tile's stored sum checked to hold every span of it once.

    python dev/cuda/resident_pairs_split_check.py

A span's contribution is modelled as the set {(tile, span)}; a stored tile must get exactly its own spans' sets,
once. Exits non-zero on the first mismatch.
"""
import itertools
import sys

WARPS = 16  # kResWarps


class Groups:  # ResidentGroups
    def __init__(self, pairs: int, spans: int):
        self.pairs, self.spans = pairs, spans

    def pair(self, g: int) -> bool:
        return g < self.pairs

    def step(self, g: int) -> int:
        return 1 if self.pair(g) else 2

    def start(self, g: int) -> int:
        p, s = self.pairs, self.spans
        return g * s if g <= p else p * s + (g - p) * (s // 2)

    def of(self, u: int) -> int:
        p, s = self.pairs, self.spans
        return u // s if u < p * s else p + (u - p * s) // (s // 2)

    def first_span(self, g: int, u: int) -> int:
        return (u - self.start(g)) * self.step(g)


def warp_first_unit(w: int, units: int) -> int:
    return w * units // WARPS


def block(tile0: int, tile_end: int, spans: int, stored: dict) -> None:
    tiles = tile_end - tile0
    gr = Groups(tiles // 2, spans)
    units = gr.start((tiles + 1) // 2)
    heads, tails, ranges = {}, {}, []
    for warp in range(WARPS):
        u0, u1 = warp_first_unit(warp, units), warp_first_unit(warp + 1, units)
        ranges.append((u0, u1))
        first_group = gr.of(u0)
        head_shared = u0 != gr.start(first_group)
        group, span = first_group, gr.first_span(first_group, u0)
        acc = [set(), set()]  # the pair's tiles (block-relative), or the single tile's in acc[0]
        for _ in range(u0, u1):
            pair = gr.pair(group)
            parts = [(2 * group, span), (2 * group + 1, span)] if pair else [(2 * group, span), (2 * group, span + 1)]
            for j, (tile, sp) in enumerate(parts):
                assert sp < spans, (tile0, tile_end, spans, warp, group, sp)
                acc[j if pair else 0].add((tile, sp))
            span += gr.step(group)
            if span == spans:
                if group == first_group and head_shared:
                    heads[warp] = acc
                else:
                    store(stored, tile0, 2 * group, pair, acc)
                acc, span = [set(), set()], 0
                group += 1
        if span != 0:
            (heads if group == first_group else tails)[warp] = acc
        # the adding-up of a shared last group, by the warp with its first unit
    for warp, (u0, u1) in enumerate(ranges):
        if u0 == u1:
            continue
        last = gr.of(u1 - 1)
        begin, end = gr.start(last), gr.start(last + 1)
        if u1 == end or begin < u0:
            continue
        total = [set(), set()]
        for w, (b, e) in enumerate(ranges):
            if b == e or e <= begin or b >= end:
                continue
            part = (heads if gr.of(b) == last else tails)[w]
            for j in range(2):
                assert not (total[j] & part[j]), "a span added twice"
                total[j] |= part[j]
        store(stored, tile0, 2 * last, gr.pair(last), total)


def store(stored: dict, tile0: int, tile: int, pair: bool, acc: list) -> None:
    for j in range(2 if pair else 1):
        t = tile0 + tile + j
        assert t not in stored, f"tile {t} stored twice"
        stored[t] = {(tile0 + a, s) for a, s in acc[j]}
    if not pair:
        assert not acc[1], "a single tile's second accumulator used"


def check(tiles: int, spans: int, sms: int) -> None:
    grid = min(sms, tiles)
    stored = {}
    for b in range(grid):
        block(b * tiles // grid, (b + 1) * tiles // grid, spans, stored)
    for t in range(tiles):
        want = {(t, s) for s in range(spans)}
        assert stored.get(t) == want, (tiles, spans, sms, t, sorted(stored.get(t, set()) ^ want)[:6])


def main() -> None:
    cases = 0
    for tiles, spans, sms in itertools.product(
        list(range(1, 70)) + [129, 263, 264, 265, 512, 2688, 1344, 1536],  # 31B gate_up 2688, E2B gate_up 1536
        [2, 4, 6, 10, 16, 32, 42],
        [1, 3, 114, 132],
    ):
        check(tiles, spans, sms)
        cases += 1
    print(f"ok: {cases} (tiles, spans, SMs) cases, every tile stored once with each of its spans once")


if __name__ == "__main__":
    sys.exit(main())
