#!/usr/bin/env python3
"""Fits the rational approximation of erf used by `erf_f32` in src/math.rs.

erf(x) ~ x * P(x^2) / Q(x^2) on [0, 4] (odd, so [-4, 4]), P of degree 6 and Q of degree 4 in
x^2 with Q(0) = 1. Linearised weighted least squares (Sanathanan-Koerner: divide by the previous
Q) with Lawson re-weighting towards the minimax error, in 40-digit arithmetic (mpmath; no numpy).
Prints the maximum absolute error on a dense grid and the coefficients, lowest degree first.
Takes about a minute. Usage: python3 tools/fit_erf.py
"""
import mpmath as mp

mp.mp.dps = 40
NP, NQ = 7, 5  # coefficients of P (t^0..t^6) and Q (t^0..t^4), t = x^2
X, N, ITERS = 4.0, 600, 60

xs = [mp.mpf(X) * (1 - mp.cos(mp.pi * (i + 0.5) / N)) / 2 for i in range(N)]  # Chebyshev nodes
fs = [mp.erf(x) for x in xs]


def poly(c, t):
    return sum(c[k] * t**k for k in range(len(c)))


lawson = [mp.mpf(1)] * N
q_prev = [mp.mpf(1)] * N
best = None
for it in range(ITERS):
    rows, rhs = [], []
    for i, x in enumerate(xs):
        t, w = x * x, lawson[i] / q_prev[i]
        rows.append([w * x * t**k for k in range(NP)] + [-w * fs[i] * t**k for k in range(1, NQ)])
        rhs.append(w * fs[i])
    a, b = mp.matrix(rows), mp.matrix(rhs)
    sol = mp.lu_solve(a.T * a, a.T * b)
    p = [sol[k] for k in range(NP)]
    q = [mp.mpf(1)] + [sol[NP + k] for k in range(NQ - 1)]
    errs = [x * poly(p, x * x) / poly(q, x * x) - f for x, f in zip(xs, fs)]
    worst = max(abs(e) for e in errs)
    if best is None or worst < best[0]:
        best = (worst, p, q)
    q_prev = [poly(q, x * x) for x in xs]
    if it >= 5:
        lawson = [l * abs(e) ** mp.mpf(0.5) for l, e in zip(lawson, errs)]
        s = sum(lawson)
        lawson = [l * N / s for l in lawson]

_, p, q = best
grid = max(
    abs(x * poly(p, x * x) / poly(q, x * x) - mp.erf(x))
    for x in (mp.mpf(X) * i / 20000 for i in range(20001))
)
print("max abs error on [0, 4]:", mp.nstr(grid, 5), "(erfc(4) =", mp.nstr(mp.erfc(4), 5), ")")
print("P =", [mp.nstr(c, 17) for c in p])
print("Q =", [mp.nstr(c, 17) for c in q])
