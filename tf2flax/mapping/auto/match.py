"""The global matching of ``mapping="auto"``: one assignment over all evidence, with a margin test.

Targets (rows) and checkpoint layers (columns) carry scores (name similarity plus order evidence;
``-inf`` where a checkpoint layer cannot load a target). :func:`best_assignment` finds the matching
with the highest total score (Hungarian algorithm); a target may stay unmatched at a cost of
:data:`UNMATCHED`. :func:`assign_with_margins` also asks, for each pair the best matching makes, how much the total
drops when that pair is forbidden: a small drop means another matching explains the evidence almost
as well, and the pair is not decided.

Example::

    scores = np.array([[1.0, 0.2], [0.1, 0.9]])
    rows, drops = assign_with_margins(scores)     # [0, 1], [1.6, 1.6]
"""

from __future__ import annotations

import numpy as np

UNMATCHED = 100.0
_BIG = 1e9


def best_assignment(scores: np.ndarray) -> list[int | None]:
    """For each row the column of a maximum-score matching (None: unmatched, at a cost of UNMATCHED)."""
    return assign_with_margins(scores, with_margins=False)[0]


def total(scores: np.ndarray, rows: list[int | None]) -> float:
    """The score of a matching (UNMATCHED subtracted per unmatched row)."""
    return float(sum(scores[i, c] if c is not None else -UNMATCHED for i, c in enumerate(rows)))


def margins(scores: np.ndarray, rows: list[int | None] | None = None) -> list[float]:
    """Per row: how much the best total drops when its pair is forbidden (inf if it is unmatched)."""
    return assign_with_margins(scores)[1]


def assign_with_margins(scores: np.ndarray, with_margins: bool = True) -> tuple[list[int | None], list[float]]:
    """The best matching and, per row, the drop of the best total when its pair is forbidden.

    The drop comes from the optimal dual solution, without solving again. The problem is made square
    (a column per "unmatched" choice, a zero-cost row per spare column), so any other matching differs
    from the best by alternating cycles; the best one without pair (i, c) differs by the cheapest cycle
    through row i and column c: a shortest path in reduced costs (all >= 0) from row i, through columns
    and the rows holding them, to column c. O(n^2) per row.
    """
    n, m = scores.shape
    if n == 0:
        return [], []
    keep = _top_columns(scores, n + 1)
    if len(keep) < m:  # the rest cannot change the best matching, nor the best one without any one pair
        rows, drops = assign_with_margins(scores[:, keep], with_margins)
        return [None if c is None else int(keep[c]) for c in rows], drops
    size = m + n
    cost = np.zeros((size, size))
    cost[:n] = UNMATCHED
    cost[:n, :m] = np.where(np.isfinite(scores), -scores, _BIG)
    cols, u, v = _hungarian(cost)
    rows = [c if c < m else None for c in cols[:n]]
    if not with_margins:
        return rows, []
    reduced = np.maximum(cost - u[:, None] - v[None, :], 0.0)
    holder = np.empty(size, dtype=int)
    holder[cols] = np.arange(size)
    out = []
    for i, c in enumerate(cols[:n]):
        if c >= m:
            out.append(float("inf"))
            continue
        dist = reduced[i].copy()
        dist[c] = np.inf
        done = np.zeros(size, dtype=bool)
        drop = np.inf
        while True:
            open_ = np.where(done, np.inf, dist)
            j = int(np.argmin(open_))
            d = float(open_[j])
            if d >= min(drop, _BIG / 2):
                break
            done[j] = True
            step = d + reduced[holder[j]]
            drop = min(drop, float(step[c]))       # the holder of j takes column c: the cycle closes
            step[c] = np.inf
            dist = np.minimum(dist, step)
        out.append(float("inf") if drop >= _BIG / 2 else drop)
    return rows, out


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """The columns among some row's ``k`` best possible ones, in order.

    With n rows, a best matching exists that gives every row one of its n best columns (at most n - 1
    are taken by the others), and a best one without a given pair, one of its n + 1 best.
    """
    n, m = scores.shape
    if m <= k:
        return np.arange(m)
    keep = np.zeros(m, dtype=bool)
    for row in scores:
        finite = np.flatnonzero(np.isfinite(row))
        keep[finite[np.argsort(-row[finite], kind="stable")[:k]]] = True
    return np.flatnonzero(keep)


def _hungarian(cost: np.ndarray) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Minimum-cost assignment of every row to a distinct column (rows <= columns), with the dual
    potentials ``u`` (rows), ``v`` (columns); e-maxx's shortest-augmenting-path form, vectorised."""
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
    return cols, u[1:], v[1:]
