"""CPU check of the CUDA qgemm GEMV's data movement (csrc/quant/qgemm_cuda.cuh): emulates in numpy the
x fragment order (run_offset), the int4 8-byte loads + shuffle exchange, the pair decoding and the m16n8k16
A/B/C fragment layouts, and compares with x @ dequant(W)^T. Runs without a GPU: python dev/cuda/qgemm_fragment_emul.py
"""
import numpy as np
rng = np.random.default_rng(0)

def run_offset(bits, t, j):
    if bits == 4:
        w = ((t & 1) << 1) | (t >> 1)
        return 4 * w + [0, 2, 16, 18, 1, 3, 17, 19][j]
    return 8 * t + j

def pack_int4(q):  # q [N, K] in -8..7
    n, k = q.shape
    u = (q + 8).astype(np.uint8).reshape(n, k // 32, 2, 16)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).reshape(n, k // 2)

def int4_pair(w, shift):  # -> (lo, hi) levels
    v = (w >> shift) & 0x000F000F
    return (v & 0xFFFF) - 8, (v >> 16) - 8

def int8_pair(w, i):
    b = [(w >> (8 * j)) & 0xFF for j in range(4)]
    b = [x - 256 if x >= 128 else x for x in b]
    return b[2 * i], b[2 * i + 1]

def weight_pair(bits, w0, w1, p):
    return int4_pair(w0, 4 * p) if bits == 4 else int8_pair(w0 if p < 2 else w1, p & 1)

def emulate(bits, M, N, K, group):
    runs = K // 32
    if bits == 4:
        q = rng.integers(-8, 8, (N, K)); qw = pack_int4(q)
    else:
        q = rng.integers(-128, 128, (N, K)); qw = q.astype(np.int8).view(np.uint8)
    G = K // group
    s = rng.standard_normal((N, G))
    x = rng.standard_normal((M, K))
    NT = 1 if M <= 8 else 2 if M <= 16 else 4
    # prep: xp[run][nt][lane][8]
    xp = np.zeros((runs, NT, 32, 8))
    for run in range(runs):
        for nt in range(NT):
            for lane in range(32):
                m, t = nt * 8 + lane // 4, lane % 4
                for j in range(8):
                    xp[run, nt, lane, j] = x[m, run * 32 + run_offset(bits, t, j)] if m < M else 0
    row_bytes = K // 2 if bits == 4 else K
    chunks = (runs + 1) // 2 if bits == 4 else runs
    RPC = 2 if bits == 4 else 1
    y = np.zeros((M, N))
    for n0 in range(0, N, 32):
        acc = np.zeros((2, NT, 4, 32))
        for c in range(chunks):
            # loads: lane (g,t) gets 8 bytes of rows
            wv = {}
            for rt in range(2):
                for h in range(2):
                    for lane in range(32):
                        g, t = lane // 4, lane % 4
                        n = min(n0 + rt * 16 + h * 8 + g, N - 1)
                        has = bits == 8 or t < 2 or 2 * c + 1 < runs
                        off = c * 32 + 8 * t
                        b = qw[n, off:off + 8] if has else np.zeros(8, np.uint8)
                        words = [int(b[4*i]) | int(b[4*i+1]) << 8 | int(b[4*i+2]) << 16 | int(b[4*i+3]) << 24 for i in range(2)]
                        wv[rt, h, lane] = words
            wr = {}
            for rt in range(2):
                for h in range(2):
                    for lane in range(32):
                        t = lane % 4
                        v = wv[rt, h, lane]
                        if bits == 4:
                            low = t < 2
                            partner = wv[rt, h, lane ^ 2]
                            recv = partner[1] if (lane ^ 2) % 4 < 2 else partner[0]  # what partner sends
                            r0 = v[0] if low else recv
                            r1 = recv if low else v[1]
                            wr[rt, h, lane] = [[r0, 0], [r1, 0]]
                        else:
                            wr[rt, h, lane] = [[v[0], v[1]]]
            for r in range(RPC):
                run = c * RPC + r
                if run >= runs: break
                for rt in range(2):
                    # build A [16 x 16] per step from fragments
                    for step in range(2):
                        A = np.zeros((16, 16)); 
                        for lane in range(32):
                            g, t = lane // 4, lane % 4
                            w0 = wr[rt, 0, lane][r]; w1 = wr[rt, 1, lane][r]
                            p_lo, p_hi = 2 * step, 2 * step + 1
                            A[g, 2*t:2*t+2] = weight_pair(bits, w0[0], w0[1], p_lo)
                            A[g + 8, 2*t:2*t+2] = weight_pair(bits, w1[0], w1[1], p_lo)
                            A[g, 2*t+8:2*t+10] = weight_pair(bits, w0[0], w0[1], p_hi)
                            A[g + 8, 2*t+8:2*t+10] = weight_pair(bits, w1[0], w1[1], p_hi)
                        for nt in range(NT):
                            B = np.zeros((16, 8))
                            for lane in range(32):
                                g, t = lane // 4, lane % 4
                                xb = xp[run, nt, lane]
                                B[2*t:2*t+2, g] = xb[4*step:4*step+2]
                                B[2*t+8:2*t+10, g] = xb[4*step+2:4*step+4]
                            D = A @ B  # [16 rows, 8 m]
                            for lane in range(32):
                                g, t = lane // 4, lane % 4
                                ng = min(n0 + rt*16 + g, N-1); ng8 = min(n0 + rt*16 + g + 8, N-1)
                                acc[rt, nt, 0, lane] += s[ng, run*32//group] * D[g, 2*t]
                                acc[rt, nt, 1, lane] += s[ng, run*32//group] * D[g, 2*t+1]
                                acc[rt, nt, 2, lane] += s[ng8, run*32//group] * D[g+8, 2*t]
                                acc[rt, nt, 3, lane] += s[ng8, run*32//group] * D[g+8, 2*t+1]
        for rt in range(2):
            for nt in range(NT):
                for j in range(4):
                    for ln in range(32):
                        n = n0 + rt*16 + ln//4 + (8 if j >= 2 else 0); m = nt*8 + 2*(ln%4) + (j & 1)
                        if n < N and m < M: y[m, n] = acc[rt, nt, j, ln]
    w = q * np.repeat(s, group, axis=1)
    ref = x @ w.T
    err = np.abs(y - ref).max()
    print(bits, M, N, K, group, "max err", err)
    assert err < 1e-9

emulate(4, 3, 40, 96, 32)     # odd runs
emulate(4, 10, 33, 128, 64)
emulate(8, 5, 35, 96, 32)
emulate(8, 17, 20, 64, 64)
emulate(4, 1, 16, 224, 224)
