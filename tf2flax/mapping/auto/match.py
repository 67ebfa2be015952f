"""The global matching of ``mapping="auto"``: one assignment over all evidence, with a margin test.

Targets (rows) and checkpoint layers (columns) carry scores (name similarity plus order evidence;
``-inf`` where a checkpoint layer cannot load a target). :func:`best_assignment` finds the matching
with the highest total score (Hungarian algorithm); a target may stay unmatched at a cost of
:data:`UNMATCHED`. :func:`margins` asks, for each pair the best matching makes, how much the total
drops when that pair is forbidden: a small drop means another matching explains the evidence almost
as well, and the pair is not decided.

Example::

    scores = np.array([[1.0, 0.2], [0.1, 0.9]])
    rows = best_assignment(scores)          # [0, 1]
    margins(scores, rows)                   # [1.6, 1.6]
"""

from __future__ import annotations

import numpy as np

UNMATCHED = 100.0
_BIG = 1e9


def best_assignment(scores: np.ndarray) -> list[int | None]:
    """For each row the column of a maximum-score matching (None: unmatched, at a cost of UNMATCHED)."""
    n, m = scores.shape
    if n == 0:
        return []
    cost = np.full((n, m + n), UNMATCHED)
    cost[:, :m] = np.where(np.isfinite(scores), -scores, _BIG)
    cols = _hungarian(cost)
    return [c if c < m else None for c in cols]


def total(scores: np.ndarray, rows: list[int | None]) -> float:
    """The score of a matching (UNMATCHED subtracted per unmatched row)."""
    return float(sum(scores[i, c] if c is not None else -UNMATCHED for i, c in enumerate(rows)))


def margins(scores: np.ndarray, rows: list[int | None]) -> list[float]:
    """Per row: how much the best total drops when its pair is forbidden (inf if it is unmatched or the
    row has no other possible column)."""
    best = total(scores, rows)
    out = []
    for i, c in enumerate(rows):
        if c is None or np.isfinite(scores[i]).sum() <= 1 and np.isfinite(scores[:, c]).sum() <= 1:
            out.append(float("inf"))
            continue
        forbidden = scores.copy()
        forbidden[i, c] = -np.inf
        alt = best_assignment(forbidden)
        out.append(best - total(forbidden, alt))
    return out


def _hungarian(cost: np.ndarray) -> list[int]:
    """Minimum-cost assignment of every row to a distinct column (rows <= columns); e-maxx's
    shortest-augmenting-path form, the inner loop vectorised."""
    n, m = cost.shape
    a = np.zeros((n + 1, m + 1))
    a[1:, 1:] = cost
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=int)
    way = np.zeros(m + 1, dtype=int)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used
            free[0] = False
            cur = a[i0] - u[i0] - v
            better = free & (cur < minv)
            minv[better] = cur[better]
            way[better] = j0
            candidates = np.where(free, minv, np.inf)
            j1 = int(np.argmin(candidates))
            delta = candidates[j1]
            u[p[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = [0] * n
    for j in range(1, m + 1):
        if p[j]:
            cols[p[j] - 1] = j - 1
    return cols
