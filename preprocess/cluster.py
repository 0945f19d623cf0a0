"""DBSCAN clustering of the non-ground points: a Numba grid implementation (CPU) and cuML (GPU).

Semantics are those of scikit-learn's ``DBSCAN(eps, min_samples)`` with the Euclidean metric on x, y (default,
[paper]) or x, y, z: a point is *core* if at least ``min_samples`` points (itself included, duplicates counted)
lie at distance ``<= eps``; clusters are the connected components of core points linked by ``<= eps``; a
non-core point within ``eps`` of a core point is a *border* point and joins the cluster of its nearest core point
(DBSCAN allows any neighbouring cluster; scikit-learn takes the first one its expansion reaches); everything else
is noise (-1). Clusters are numbered ``0..K-1`` in the order of their lowest-index core point, as scikit-learn
numbers them, so core points get exactly scikit-learn's labels. Distances are computed in float64 and
compared squared (``d^2 <= eps^2``), as scikit-learn's KD-tree does.

CPU kernel (``_dbscan_kernel``), after Gunawan's grid DBSCAN:

1. cells of side ``eps / sqrt(dim)`` (a hair smaller), so that any two points of one cell are within ``eps``;
   points are counting-sorted by cell (a dense cell table when the bounding box has at most
   ``max(2M, 8 N)`` cells, else sorted cell keys + binary search);
2. the neighbour cells of a cell are those at offsets in {-2..2}^dim whose closest approach is ``<= eps``
   (all 25 in 2-D, all 125 in 3-D);
3. a cell with ``>= min_samples`` points makes all its points core; otherwise each point counts its neighbours
   over the neighbour cells (early exit at ``min_samples``);
4. union-find over cells holding core points (the core points of one cell are one cluster): two neighbour cells
   are merged as soon as one core pair between them is within ``eps``;
5. each non-core point takes the label of its nearest core point within ``eps`` (or -1).

Range bands [ours]: :func:`cluster_nonground` (the pipeline's entry) scales eps by the xy range band of each
point (``ClusterConfig.eps_range_edges`` / ``eps_range_scale``), running the exact DBSCAN above once per band
and joining clusters that share a point across a band edge (:func:`banded_labels`); :func:`dbscan` and
:func:`dbscan_core` are plain DBSCAN at ``eps``, equal to scikit-learn's. The GPU path runs cuML per band and
the same host-side joining.

Bad input: points with a non-finite coordinate are noise (-1, not core) and are left out of every neighbourhood.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numba import njit

from shared.backend import resolve_backend
from shared.errors import ConfigError, InputError

__all__ = ["ClusterConfig", "dbscan", "dbscan_core", "cluster_nonground", "banded_labels", "join_stacked",
           "reattach_low_points",
           "dbscan_reference", "adjusted_rand_index", "core_partition_equal"]

#: The dense cell tables (2 x int32 per cell) are used when the bounding box holds at most
#: max(_DENSE_CELL_LIMIT, 8 N) cells.
_DENSE_CELL_LIMIT = 1 << 21


@dataclass(frozen=True)
class ClusterConfig:
    """DBSCAN parameters. eps (metres) = 0.75 [paper]; min_samples = 5 [paper] (the point itself counts, as in
    scikit-learn); dims ``"xy"`` [paper, proto] or ``"xyz"`` (option, [ours]).

    Stacked clusters [ours] (see :func:`join_stacked`): with ``stack_gap > 0`` two clusters are joined when one
    lies above the other -- their z ranges overlap by at most ``stack_max_overlap`` metres and are at most
    ``stack_max_vgap`` apart, the smaller one's x-y box lies within the other's grown by ``stack_gap`` -- and
    some point of one is within ``stack_gap`` metres (x-y) of a point of the other: the scan lines on a vehicle's lower body and those on its cabin, set back by up to a metre, are
    further apart in x-y than eps. 0 = off.

    Low points [ours] (see :func:`reattach_low_points`): with ``reattach_radius > 0`` a ground point joins the
    cluster whose lowest point in a neighbouring x-y cell (side ``reattach_radius``) is at most
    ``reattach_max_gap`` metres above it: the lower body of an object labelled ground goes back to the object,
    the road beside it does not (no cluster point above it), nor the road under a canopy (too far below). 0 = off
    (default).

    Range bands [ours] (see :func:`cluster_nonground`): points are sparser far from the sensor, so the
    neighbourhood radius grows with the xy range: ``eps * eps_range_scale[k]`` in the range band k, whose edges
    are ``eps_range_edges`` (metres; bands ``[0, e0), [e0, e1), ..., [e_last, inf)``). Defaults: edges 10, 20,
    30 m, scales 0.5, 0.8, 1.5, 2 (eps 0.375, 0.6, 1.125, 1.5 m: tighter than the paper's 0.75 m up to 20 m,
    where pedestrians, bicycles and barriers stand next to cars; the car split that a smaller eps causes is
    undone by the stacked-cluster join). Empty edges and scales: one eps everywhere (the paper's DBSCAN).
    Defaults of the stacked join (1.5, 0.1, 0.5 m) are [ours], measured in docs/preprocess.md "Region
    quality"; the low-point reattachment is off by default (0.15 / 1.5 m helps the generated data but gives
    6-14 % of the real scans' road to the clusters beside it, see there).
    """

    eps: float = 0.75
    min_samples: int = 5
    dims: Literal["xy", "xyz"] = "xy"
    eps_range_edges: tuple[float, ...] = (10.0, 20.0, 30.0)
    eps_range_scale: tuple[float, ...] = (0.5, 0.8, 1.5, 2.0)
    stack_gap: float = 1.5
    stack_max_overlap: float = 0.1
    stack_max_vgap: float = 0.5
    reattach_radius: float = 0.0
    reattach_max_gap: float = 1.5

    def __post_init__(self):
        if not (isinstance(self.eps, (int, float, np.floating)) and math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError("eps", self.eps, "must be a finite number > 0 (metres)")
        if isinstance(self.min_samples, bool) or not isinstance(self.min_samples, (int, np.integer)) \
                or self.min_samples < 1:
            raise ConfigError("min_samples", self.min_samples, "must be an integer >= 1")
        if self.dims not in ("xy", "xyz"):
            raise ConfigError("dims", self.dims, "must be 'xy' or 'xyz'")
        for name in ("eps_range_edges", "eps_range_scale"):
            v = getattr(self, name)
            try:
                if isinstance(v, (str, bytes)) or any(isinstance(e, bool) for e in v):
                    raise TypeError
                t = tuple(float(e) for e in v)
            except (TypeError, ValueError):
                raise ConfigError(name, v, "must be a sequence of numbers") from None
            if not all(math.isfinite(e) and e > 0 for e in t):
                raise ConfigError(name, v, "must hold finite numbers > 0")
            object.__setattr__(self, name, t)  # lists (e.g. from TOML) become a hashable tuple
        edges, scale = self.eps_range_edges, self.eps_range_scale
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError("eps_range_edges", edges, "must be strictly increasing (metres)")
        if (edges or scale) and len(scale) != len(edges) + 1:
            raise ConfigError("eps_range_scale", scale, f"needs one value per range band: {len(edges) + 1} for "
                                                        f"{len(edges)} eps_range_edges (both empty: one eps)")

        for name in ("stack_gap", "stack_max_overlap", "stack_max_vgap", "reattach_radius", "reattach_max_gap"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or v < 0:
                raise ConfigError(name, v, "must be a finite number >= 0 (metres)")

    @property
    def ndim(self) -> int:
        return 2 if self.dims == "xy" else 3

    @property
    def band_eps(self) -> tuple[float, ...]:
        """eps (metres) of each range band, nearest first; one value when there are no bands."""
        return tuple(self.eps * s for s in self.eps_range_scale) or (float(self.eps),)


# ----------------------------------------------------------------------------------------------------------
# Numba kernels


@njit(cache=True, inline="always")
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit(cache=True, inline="always")
def _d2(pts, i, j):
    s = 0.0
    for k in range(pts.shape[1]):
        t = pts[i, k] - pts[j, k]
        s += t * t
    return s


@njit(cache=True, inline="always")
def _box_d2(sp, t, lo, hi, c):
    """Squared distance from point sp[t] to the box [lo[c], hi[c]] (a lower bound, slightly shrunk against
    rounding)."""
    s = 0.0
    for k in range(sp.shape[1]):
        g = max(lo[c, k] - sp[t, k], sp[t, k] - hi[c, k])
        if g > 0:
            s += g * g
    return s * (1.0 - 1e-9)


@njit(cache=True, inline="always")
def _boxes_d2(lo, hi, a, b):
    """Squared distance between boxes a and b (a lower bound, slightly shrunk against rounding)."""
    s = 0.0
    for k in range(lo.shape[1]):
        g = max(lo[a, k] - hi[b, k], lo[b, k] - hi[a, k])
        if g > 0:
            s += g * g
    return s * (1.0 - 1e-9)


@njit(cache=True)
def _tight_boxes(sp, cstart, sel, use_sel, lo, hi):
    """Bounding box of the points of each cell (only where sel, if use_sel); empty boxes are inverted."""
    m = cstart.shape[0] - 1
    dim = sp.shape[1]
    for c in range(m):
        for k in range(dim):
            lo[c, k] = np.inf
            hi[c, k] = -np.inf
        for t in range(cstart[c], cstart[c + 1]):
            if use_sel and not sel[t]:
                continue
            for k in range(dim):
                v = sp[t, k]
                if v < lo[c, k]:
                    lo[c, k] = v
                if v > hi[c, k]:
                    hi[c, k] = v


@njit(cache=True, inline="always")
def _link(parent, c, c2, sp, score, cstart, blo, bhi, eps2):
    """Union cells c and c2 if one core pair between them is within eps (no-op if already joined)."""
    r1 = _find(parent, c)
    r2 = _find(parent, c2)
    if r1 == r2:
        return
    # try the core point of c nearest to c2's core box first: dense neighbour cells link at once
    linked = False
    t_best = -1
    d_best = eps2
    for t in range(cstart[c], cstart[c + 1]):
        if score[t]:
            db = _box_d2(sp, t, blo, bhi, c2)
            if db <= d_best:
                d_best = db
                t_best = t
                if db <= 0.25 * eps2:  # close enough: likely to have a core neighbour in c2
                    break
    if t_best < 0:
        return  # no core point of c comes within eps of c2's core box
    for t2 in range(cstart[c2], cstart[c2 + 1]):
        if score[t2] and _d2(sp, t_best, t2) <= eps2:
            linked = True
            break
    for t in range(cstart[c], cstart[c + 1]):
        if linked:
            break
        if t == t_best or not score[t] or _box_d2(sp, t, blo, bhi, c2) > eps2:
            continue
        for t2 in range(cstart[c2], cstart[c2 + 1]):
            if score[t2] and _d2(sp, t, t2) <= eps2:
                linked = True
                break
    if linked:
        if r1 < r2:
            parent[r2] = r1
        else:
            parent[r1] = r2


@njit(cache=True)
def _dbscan_kernel(pts, eps, min_samples, dense_limit):
    """pts (n, d) float64 finite, d in {2, 3}. Returns labels (n,) int32 and core (n,) bool."""
    n, dim = pts.shape
    labels = np.full(n, -1, np.int32)
    core = np.zeros(n, np.bool_)
    if n == 0:
        return labels, core
    eps2 = eps * eps
    side = eps / math.sqrt(dim) * (1.0 - 1e-9)
    inv = 1.0 / side
    lo = np.empty(dim)
    for k in range(dim):
        lo[k] = pts[0, k]
    for i in range(n):
        for k in range(dim):
            if pts[i, k] < lo[k]:
                lo[k] = pts[i, k]
    cc = np.empty((n, dim), np.int64)
    ext = np.zeros(dim, np.int64)
    for i in range(n):
        for k in range(dim):
            c = int(math.floor((pts[i, k] - lo[k]) * inv))
            cc[i, k] = c
            if c + 1 > ext[k]:
                ext[k] = c + 1
    # pad by 2 cells on each side so that neighbour offsets never leave the box
    total = 1
    for k in range(dim):
        ext[k] += 4
        total *= ext[k]
    key = np.empty(n, np.int64)
    for i in range(n):
        kk = 0
        for k in range(dim):
            kk = kk * ext[k] + cc[i, k] + 2
        key[i] = kk
    # offsets in {-2..2}^dim with closest approach <= eps: sum(max(|o|-1, 0)^2) * side^2 <= eps^2
    # ordered nearest first (the cell itself, then adjacent cells): early exits come sooner
    n_off = 0
    offs = np.empty(5 ** dim, np.int64)
    prio = np.empty(5 ** dim, np.int64)
    for t in range(5 ** dim):
        r = t
        s2 = 0
        lin = 0
        cheb = 0
        l1 = 0
        for k in range(dim):
            o = r % 5 - 2
            r //= 5
            a = abs(o) - 1
            if a > 0:
                s2 += a * a
            cheb = max(cheb, abs(o))
            l1 += abs(o)
            lin = lin * ext[k] + o
        if s2 * side * side <= eps2:
            offs[n_off] = lin
            prio[n_off] = cheb * 16 + l1
            n_off += 1
    srt = np.argsort(prio[:n_off], kind="mergesort")
    offs = offs[:n_off][srt]
    n_adj = 0  # the first n_adj offsets are the cell itself and its adjacent cells (Chebyshev distance <= 1)
    for o in range(n_off):
        if prio[srt[o]] < 32:
            n_adj += 1
    # sort points by cell key; unique cells
    dense = total <= dense_limit
    if dense:
        cnt = np.zeros(total + 1, np.int32)  # n < 2^31: int32 halves the memory of the dense tables
        for i in range(n):
            cnt[key[i] + 1] += 1
        for t in range(total):
            cnt[t + 1] += cnt[t]
        order = np.empty(n, np.int64)
        fill = cnt[:-1].copy()
        for i in range(n):
            order[fill[key[i]]] = i
            fill[key[i]] += 1
    else:
        order = np.argsort(key, kind="mergesort")
    # unique cells in sorted order
    m = 0
    cstart = np.empty(n + 1, np.int64)
    ukey = np.empty(n, np.int64)
    for t in range(n):
        kk = key[order[t]]
        if t == 0 or kk != ukey[m - 1]:
            ukey[m] = kk
            cstart[m] = t
            m += 1
    cstart[m] = n
    cstart = cstart[: m + 1]
    ukey = ukey[:m]
    cell_of = np.empty(n, np.int64)  # by sorted position
    for c in range(m):
        for t in range(cstart[c], cstart[c + 1]):
            cell_of[t] = c
    sp = np.empty((n, dim))  # points in sorted order (cache friendly)
    for t in range(n):
        for k in range(dim):
            sp[t, k] = pts[order[t], k]
    # neighbour cells (CSR), including the cell itself
    if dense:
        table = np.full(total, -1, np.int32)
        for c in range(m):
            table[ukey[c]] = c
    else:
        table = np.empty(0, np.int32)
    nb_start = np.empty(m + 1, np.int64)
    nb = np.empty(m * n_off, np.int64)
    nb_adj = np.empty(m * n_off, np.bool_)
    e = 0
    for c in range(m):
        nb_start[c] = e
        for o in range(n_off):
            kk = ukey[c] + offs[o]
            if dense:
                j = np.int64(table[kk])
            else:
                j = np.searchsorted(ukey, kk)
                if j >= m or ukey[j] != kk:
                    j = -1
            if j >= 0:
                nb[e] = j
                nb_adj[e] = o < n_adj
                e += 1
    nb_start[m] = e
    # core points
    blo = np.empty((m, dim))  # tight bounding boxes of the cells' points
    bhi = np.empty((m, dim))
    score = np.zeros(n, np.bool_)  # core, by sorted position
    _tight_boxes(sp, cstart, score, False, blo, bhi)
    for c in range(m):
        a = cstart[c]
        b = cstart[c + 1]
        if b - a >= min_samples:
            for t in range(a, b):
                score[t] = True
            continue
        for t in range(a, b):
            count = 0
            for q in range(nb_start[c], nb_start[c + 1]):
                c2 = nb[q]
                if _box_d2(sp, t, blo, bhi, c2) > eps2:
                    continue
                for t2 in range(cstart[c2], cstart[c2 + 1]):
                    if _d2(sp, t, t2) <= eps2:
                        count += 1
                        if count >= min_samples:
                            break
                if count >= min_samples:
                    break
            if count >= min_samples:
                score[t] = True
    # union-find over cells with core points
    has_core = np.zeros(m, np.bool_)
    for t in range(n):
        if score[t]:
            has_core[cell_of[t]] = True
    _tight_boxes(sp, cstart, score, True, blo, bhi)  # now: boxes of the core points
    parent = np.arange(m)
    # adjacent cell pairs first; the other pairs are deferred (mostly joined through adjacent ones by then)
    n_def = 0
    deferred = np.empty((0, 2), np.int64)
    for c in range(m):
        if not has_core[c]:
            continue
        for q in range(nb_start[c], nb_start[c + 1]):
            c2 = nb[q]
            if c2 <= c or not has_core[c2] or _boxes_d2(blo, bhi, c, c2) > eps2:
                continue
            if not nb_adj[q]:
                if n_def == deferred.shape[0]:
                    grown = np.empty((max(64, 2 * n_def), 2), np.int64)
                    grown[:n_def] = deferred[:n_def]
                    deferred = grown
                deferred[n_def, 0] = c
                deferred[n_def, 1] = c2
                n_def += 1
                continue
            _link(parent, c, c2, sp, score, cstart, blo, bhi, eps2)
    for j in range(n_def):
        _link(parent, deferred[j, 0], deferred[j, 1], sp, score, cstart, blo, bhi, eps2)
    # number clusters in the order of their lowest-index core point (as scikit-learn)
    pos = np.empty(n, np.int64)  # original index -> sorted position
    for t in range(n):
        pos[order[t]] = t
    root_label = np.full(m, -1, np.int32)
    k = 0
    for i in range(n):
        t = pos[i]
        if score[t]:
            r = _find(parent, cell_of[t])
            if root_label[r] < 0:
                root_label[r] = k
                k += 1
            labels[i] = root_label[r]
            core[i] = True
    # border points: nearest core point within eps
    for i in range(n):
        t = pos[i]
        if score[t]:
            continue
        c = cell_of[t]
        best = eps2
        found = -1
        for q in range(nb_start[c], nb_start[c + 1]):
            c2 = nb[q]
            if not has_core[c2] or _box_d2(sp, t, blo, bhi, c2) > best:
                continue
            for t2 in range(cstart[c2], cstart[c2 + 1]):
                if score[t2]:
                    d2 = _d2(sp, t, t2)
                    if d2 <= best and (found < 0 or d2 < best):
                        best = d2
                        found = t2
        if found >= 0:
            labels[i] = root_label[_find(parent, cell_of[found])]
    return labels, core


@njit(cache=True)
def _merge_bands(lab, home, n_labels):
    """Labels (m,) int32 of the range-banded clustering: ``lab`` (B, m) holds each band's labels (offset so that
    they are distinct across bands, -1 noise or not in the band), ``home`` (m,) the band each point belongs to.
    Two labels are joined when one point carries both (in the overlap of adjacent bands); a point takes its home
    band's label, joined, and the clusters are numbered 0..K-1 in the order of their lowest-index point."""
    nb, m = lab.shape
    parent = np.arange(max(n_labels, 1))
    for i in range(m):
        for k in range(nb - 1):
            a = lab[k, i]
            b = lab[k + 1, i]
            if a >= 0 and b >= 0:
                ra = _find(parent, a)
                rb = _find(parent, b)
                if ra != rb:
                    if ra < rb:
                        parent[rb] = ra
                    else:
                        parent[ra] = rb
    own = np.empty(m, np.int32)
    for i in range(m):
        own[i] = lab[home[i], i]
    return _number_joined(parent, own)


@njit(cache=True)
def _number_joined(parent, lab):
    """Labels (m,) int32 of the joined clusters: point i (with ``lab[i] >= 0``) takes the root of ``lab[i]`` in
    the union-find ``parent``, the roots numbered 0..K-1 in the order of their lowest-index point."""
    m = lab.shape[0]
    out = np.full(m, -1, np.int32)
    number = np.full(max(parent.shape[0], 1), -1, np.int32)
    k_next = 0
    for i in range(m):
        a = lab[i]
        if a < 0:
            continue
        r = _find(parent, a)
        if number[r] < 0:
            number[r] = k_next
            k_next += 1
        out[i] = number[r]
    return out


@njit(cache=True)
def _join_stacked(xy, z, lab, gap, max_overlap, max_vgap):
    """Labels (m,) int32 with stacked clusters joined (see :func:`join_stacked`); xy (m, >= 2) float64, z (m,)
    float64, lab (m,) int32 (-1 noise, clusters 0..k-1). Joined clusters are numbered 0..K-1 in the order of
    their lowest-index point."""
    m = lab.shape[0]
    k = 0
    for i in range(m):
        if lab[i] + 1 > k:
            k = lab[i] + 1
    out = np.full(m, -1, np.int32)
    if k == 0:
        return out
    lo = np.full((k, 3), np.inf)
    hi = np.full((k, 3), -np.inf)
    start = np.zeros(k + 1, np.int64)
    for i in range(m):
        c = lab[i]
        if c < 0:
            continue
        start[c + 1] += 1
        for d in range(3):
            v = xy[i, d] if d < 2 else z[i]
            lo[c, d] = min(lo[c, d], v)
            hi[c, d] = max(hi[c, d], v)
    for c in range(k):
        start[c + 1] += start[c]
    order = np.empty(start[k], np.int64)
    fill = start[:-1].copy()
    for i in range(m):
        c = lab[i]
        if c >= 0:
            order[fill[c]] = i
            fill[c] += 1
    gap2 = gap * gap
    parent = np.arange(k)
    by_x = np.argsort(lo[:, 0], kind="mergesort")  # sweep over clusters by their lowest x
    for p in range(k):
        a = by_x[p]
        for q in range(p + 1, k):
            b = by_x[q]
            if lo[b, 0] > hi[a, 0] + gap:
                break
            overlap = min(hi[a, 2], hi[b, 2]) - max(lo[a, 2], lo[b, 2])  # < 0: a vertical gap
            if overlap > max_overlap or -overlap > max_vgap or abs(lo[a, 2] - lo[b, 2]) <= max_overlap:
                continue  # not one above the other (nor two pieces of one scan line at the same height)
            gy = max(lo[a, 1] - hi[b, 1], lo[b, 1] - hi[a, 1])
            gx = max(lo[a, 0] - hi[b, 0], lo[b, 0] - hi[a, 0])
            if max(gx, 0.0) ** 2 + max(gy, 0.0) ** 2 > gap2:
                continue
            # the x-y box of the one with the smaller box lies within the other's grown by gap (pieces of one
            # object, not two that meet at a corner)
            area_a = (hi[a, 0] - lo[a, 0]) * (hi[a, 1] - lo[a, 1])
            area_b = (hi[b, 0] - lo[b, 0]) * (hi[b, 1] - lo[b, 1])
            up, dn = (a, b) if area_a < area_b else (b, a)
            if lo[up, 0] < lo[dn, 0] - gap or hi[up, 0] > hi[dn, 0] + gap \
                    or lo[up, 1] < lo[dn, 1] - gap or hi[up, 1] > hi[dn, 1] + gap:
                continue
            ra = _find(parent, a)
            rb = _find(parent, b)
            if ra == rb:
                continue
            near = False
            for t in range(start[a], start[a + 1]):
                i = order[t]
                if xy[i, 0] < lo[b, 0] - gap or xy[i, 0] > hi[b, 0] + gap \
                        or xy[i, 1] < lo[b, 1] - gap or xy[i, 1] > hi[b, 1] + gap:
                    continue
                for u in range(start[b], start[b + 1]):
                    j = order[u]
                    dx = xy[i, 0] - xy[j, 0]
                    dy = xy[i, 1] - xy[j, 1]
                    if dx * dx + dy * dy <= gap2:
                        near = True
                        break
                if near:
                    break
            if near:
                if ra < rb:
                    parent[rb] = ra
                else:
                    parent[ra] = rb
    return _number_joined(parent, lab)


@njit(cache=True)
def _reattach_kernel(xyz, gmask, lab, side, max_gap, dense_limit):
    """New labels (n,) int32 and ground mask (n,) bool (see :func:`reattach_low_points`): xyz (n, >= 3)
    finite-or-not float, gmask (n,) bool, lab (n,) int32 (-1 noise / ground)."""
    n = xyz.shape[0]
    out_lab = lab.copy()
    out_g = gmask.copy()
    lo0 = np.inf
    lo1 = np.inf
    hi0 = -np.inf
    hi1 = -np.inf
    m = 0
    for i in range(n):
        if lab[i] >= 0 and not gmask[i]:
            lo0 = min(lo0, xyz[i, 0])
            lo1 = min(lo1, xyz[i, 1])
            hi0 = max(hi0, xyz[i, 0])
            hi1 = max(hi1, xyz[i, 1])
            m += 1
    if m == 0:
        return out_lab, out_g
    inv = 1.0 / side
    nx = int(math.floor((hi0 - lo0) * inv)) + 3  # one cell of padding on each side
    ny = int(math.floor((hi1 - lo1) * inv)) + 3
    # lowest cluster point of each cell (ties: lowest index): dense table or sorted cell keys
    keys = np.empty(m, np.int64)
    pidx = np.empty(m, np.int64)
    t = 0
    for i in range(n):
        if lab[i] >= 0 and not gmask[i]:
            cx = int(math.floor((xyz[i, 0] - lo0) * inv)) + 1
            cy = int(math.floor((xyz[i, 1] - lo1) * inv)) + 1
            keys[t] = cx * ny + cy
            pidx[t] = i
            t += 1
    order = np.argsort(keys, kind="mergesort")
    ukey = np.empty(m, np.int64)
    ulow = np.empty(m, np.int64)  # index of the lowest point of each cell
    u = -1
    for t in range(m):
        k = keys[order[t]]
        i = pidx[order[t]]
        if u < 0 or k != ukey[u]:
            u += 1
            ukey[u] = k
            ulow[u] = i
        elif xyz[i, 2] < xyz[ulow[u], 2]:
            ulow[u] = i
    n_cells = u + 1
    dense = nx * ny <= dense_limit
    if dense:
        table = np.full(nx * ny, -1, np.int64)
        for c in range(n_cells):
            table[ukey[c]] = ulow[c]
    for i in range(n):
        if not gmask[i]:
            continue
        x = xyz[i, 0]
        y = xyz[i, 1]
        z = xyz[i, 2]
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
            continue
        fx = (x - lo0) * inv
        fy = (y - lo1) * inv
        if fx < -1.0 or fy < -1.0 or fx > nx - 2.0 or fy > ny - 2.0:
            continue  # no cluster cell around
        cx = int(math.floor(fx)) + 1
        cy = int(math.floor(fy)) + 1
        best = max_gap
        found = -1
        for ox in range(-1, 2):
            for oy in range(-1, 2):
                gx = cx + ox
                gy = cy + oy
                if gx < 0 or gy < 0 or gx >= nx or gy >= ny:
                    continue
                k = gx * ny + gy
                if dense:
                    j = table[k]
                else:
                    c = np.searchsorted(ukey[:n_cells], k)
                    j = ulow[c] if c < n_cells and ukey[c] == k else -1
                if j < 0:
                    continue
                d = xyz[j, 2] - z
                if d <= best and (found < 0 or d < best or (d == best and j < found)):
                    best = d
                    found = j
        if found >= 0:
            out_lab[i] = lab[found]
            out_g[i] = False
    return out_lab, out_g


# ----------------------------------------------------------------------------------------------------------
# Public API


@njit(cache=True)
def _gather(xyz, ndim, sel, use_sel):
    """Rows i of xyz (n, >= ndim) with sel[i] (if use_sel) and finite first ndim columns, as a contiguous
    (m, ndim) float64 array; their indices (m,) int64; per-axis min and max (ndim,)."""
    n = xyz.shape[0]
    idx = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if use_sel and not sel[i]:
            continue
        ok = True
        for k in range(ndim):
            if not np.isfinite(xyz[i, k]):
                ok = False
        if ok:
            idx[m] = i
            m += 1
    pts = np.empty((m, ndim))
    lo = np.full(ndim, np.inf)
    hi = np.full(ndim, -np.inf)
    for t in range(m):
        for k in range(ndim):
            v = xyz[idx[t], k]
            pts[t, k] = v
            lo[k] = min(lo[k], v)
            hi[k] = max(hi[k], v)
    return pts, idx[:m].copy(), lo, hi


def _prepare(xyz: np.ndarray, cfg: ClusterConfig, sel: np.ndarray | None = None):
    """Finite (and selected) points as (m, ndim) float64 and their row indices (m,)."""
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < cfg.ndim:
        raise InputError(f"points must be an (N, {max(3, cfg.ndim)}) array, got shape {xyz.shape}")
    if xyz.dtype not in (np.float32, np.float64):
        xyz = xyz.astype(np.float64)
    use_sel = sel is not None
    pts, idx, lo, hi = _gather(xyz, cfg.ndim, sel if use_sel else np.zeros(0, np.bool_), use_sel)
    if len(pts):
        span = (hi - lo) / (cfg.eps / math.sqrt(cfg.ndim)) + 5
        if float(np.prod(span)) > 2.0 ** 62:
            raise InputError(
                f"point coordinates span {(hi - lo).tolist()} m, too large for a cell grid at "
                f"eps={cfg.eps}: check the units (metres) or remove far outliers"
            )
    return pts, idx


def _labels_of(pts: np.ndarray, cfg: ClusterConfig, backend: str) -> tuple[np.ndarray, np.ndarray]:
    if backend == "gpu":
        return _dbscan_gpu(pts, cfg)
    return _dbscan_kernel(pts, float(cfg.eps), int(cfg.min_samples), max(_DENSE_CELL_LIMIT, 8 * len(pts)))


def banded_labels(pts: np.ndarray, cfg: ClusterConfig, backend: str = "cpu") -> np.ndarray:
    """Range-banded DBSCAN labels (m,) int32 of finite points ``pts`` (m, ndim) float64 (see
    :func:`cluster_nonground`); plain DBSCAN at ``cfg.eps`` when ``cfg`` has no range bands. Each band is one
    exact DBSCAN (CPU kernel or cuML) over its points plus those within the larger eps of the neighbouring band
    across each edge; the joining and numbering (:func:`_merge_bands`) run on the host for both backends."""
    edges = cfg.eps_range_edges
    if not edges:
        return _labels_of(pts, cfg, backend)[0]
    eps = cfg.band_eps
    nb, m = len(eps), len(pts)
    r = np.hypot(pts[:, 0], pts[:, 1])
    lo = (-math.inf,) + edges
    hi = edges + (math.inf,)
    lab = np.full((nb, m), -1, np.int32)
    offset = 0
    for k in range(nb):
        w_lo = max(eps[k - 1], eps[k]) if k > 0 else 0.0
        w_hi = max(eps[k], eps[k + 1]) if k < nb - 1 else 0.0
        sel = np.flatnonzero((r >= lo[k] - w_lo) & (r < hi[k] + w_hi))
        if not len(sel):
            continue
        band = _labels_of(np.ascontiguousarray(pts[sel]), dataclasses.replace(cfg, eps=eps[k]), backend)[0]
        lab[k, sel] = np.where(band >= 0, band + offset, -1)
        offset += int(band.max()) + 1 if band.max() >= 0 else 0
    home = np.searchsorted(np.asarray(edges), r, side="right").astype(np.int64)
    return _merge_bands(lab, home, offset)


def dbscan_core(xyz: np.ndarray, cfg: ClusterConfig = ClusterConfig(), backend: str = "cpu"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Plain DBSCAN labels and core mask at ``cfg.eps`` (the range bands are :func:`cluster_nonground`'s).

    xyz: (N, 3) (or (N, 2) with dims="xy"; extra columns ignored) float32/float64.
    Returns ``labels`` (N,) int32 (-1 noise, clusters 0..K-1) and ``core`` (N,) bool.
    """
    backend = resolve_backend(backend)
    pts, idx = _prepare(xyz, cfg)
    lab, core = _labels_of(pts, cfg, backend)
    n = len(xyz)
    if len(idx) == n:
        return lab, core
    labels = np.full(n, -1, np.int32)
    labels[idx] = lab
    core_full = np.zeros(n, np.bool_)
    core_full[idx] = core
    return labels, core_full


def dbscan(xyz: np.ndarray, cfg: ClusterConfig = ClusterConfig(), backend: str = "cpu") -> np.ndarray:
    """DBSCAN labels (N,) int32 of ``xyz`` (N, 3): -1 noise, clusters 0..K-1. See :func:`dbscan_core`."""
    return dbscan_core(xyz, cfg, backend)[0]


def cluster_nonground(xyz: np.ndarray, ground_mask: np.ndarray, cfg: ClusterConfig = ClusterConfig(),
                      backend: str = "cpu") -> np.ndarray:
    """DBSCAN of the points where ``ground_mask`` (N,) bool is False; labels (N,) int32, ground points -1.

    With range bands (``cfg.eps_range_edges``, [ours]) the neighbourhood radius is ``cfg.band_eps[k]`` for the
    points whose xy range lies in band k: each band is clustered by exact DBSCAN at its eps over its points and
    those up to the larger eps of the two bands beyond each edge, so that every point's neighbourhood is
    complete; clusters sharing a point in such an overlap are joined, and each point keeps its own band's label
    (:func:`banded_labels`). Without bands this is scikit-learn's DBSCAN at ``cfg.eps``."""
    ground_mask = np.asarray(ground_mask, dtype=bool)
    if ground_mask.shape != (len(xyz),):
        raise InputError(f"ground mask has shape {ground_mask.shape}, expected ({len(xyz)},)")
    backend = resolve_backend(backend)
    pts, idx = _prepare(xyz, cfg, ~ground_mask)
    labels = np.full(len(xyz), -1, np.int32)
    lab = banded_labels(pts, cfg, backend)
    if cfg.stack_gap > 0:
        lab = join_stacked(pts, np.asarray(xyz)[idx, 2], lab, cfg)
    labels[idx] = lab
    return labels


def reattach_low_points(xyz: np.ndarray, ground_mask: np.ndarray, labels: np.ndarray, cfg: ClusterConfig
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Give ground points back to the cluster standing on them ([ours], ``cfg.reattach_*``).

    The x-y plane is cut into cells of side ``reattach_radius``; each cell holding clustered points keeps its
    lowest one. A ground point joins the cluster of the lowest point, among those of its own and the 8
    neighbouring cells, whose z exceeds the ground point's by the least, provided it is at most
    ``reattach_max_gap`` above it (ties: lowest point index). xyz (N, >= 3), ground_mask (N,) bool, labels (N,)
    int32 (e.g. :func:`cluster_nonground`). Returns new labels (N,) int32 and ground mask (N,) bool (reattached
    points are no longer ground); cluster numbers are unchanged. Runs on the host for both backends.
    Non-finite points are left as they are; with ``reattach_radius == 0`` the inputs are returned unchanged."""
    labels = np.asarray(labels, np.int32)
    ground_mask = np.asarray(ground_mask, bool)
    if cfg.reattach_radius <= 0:
        return labels, ground_mask
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3 or ground_mask.shape != (len(xyz),) or labels.shape != (len(xyz),):
        raise InputError(f"reattach_low_points needs (N, 3) points with (N,) mask and labels, got {xyz.shape}, "
                         f"{ground_mask.shape}, {labels.shape}")
    return _reattach_kernel(xyz, ground_mask, labels, float(cfg.reattach_radius), float(cfg.reattach_max_gap),
                            max(_DENSE_CELL_LIMIT, 8 * len(xyz)))


def join_stacked(pts: np.ndarray, z: np.ndarray, labels: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """Join clusters stacked one above the other ([ours], ``cfg.stack_*``): clusters a and b are joined when
    their z ranges overlap by at most ``stack_max_overlap`` (or leave a vertical gap of at most
    ``stack_max_vgap``), their lowest points differ in z by more than ``stack_max_overlap`` (pieces of one scan
    line at one height are not stacked), the x-y bounding box of the one with the smaller box lies within the
    other's grown by ``stack_gap`` (pieces of one object, not two that meet at a corner), and a point of a lies within
    ``stack_gap`` (x-y) of a point of b; joins are transitive.

    pts (m, >= 2) float64 (x, y first), z (m,) the points' z, labels (m,) int32 (-1 noise, clusters 0..k-1).
    Returns labels (m,) int32 numbered 0..K-1 in the order of each joined cluster's lowest-index point; runs on
    the host after either backend's clustering, so CPU and GPU agree whenever their DBSCAN labels do."""
    return _join_stacked(np.asarray(pts, np.float64), np.ascontiguousarray(z, np.float64),
                         np.asarray(labels, np.int32), float(cfg.stack_gap), float(cfg.stack_max_overlap),
                         float(cfg.stack_max_vgap))


def _renumber_by_first_core(labels: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Relabel clusters 0..K-1 in the order of their lowest-index core point; labels of clusters without a core
    point become -1. labels (N,) int, core (N,) bool -> (N,) int32."""
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(len(labels), -1, np.int32)
    labs = labels[core]
    labs = labs[labs >= 0]
    if len(labs) == 0:
        return out
    uniq, first = np.unique(labs, return_index=True)
    rank = np.empty(len(uniq), np.int32)
    rank[np.argsort(first)] = np.arange(len(uniq), dtype=np.int32)
    valid = labels >= 0
    idx = np.clip(np.searchsorted(uniq, labels[valid]), 0, len(uniq) - 1)
    out[valid] = np.where(uniq[idx] == labels[valid], rank[idx], -1)
    return out


def _dbscan_gpu(pts: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray]:
    """cuML DBSCAN (min_samples counts the point itself, as in scikit-learn), renumbered like the CPU path."""
    import cupy as cp
    from cuml.cluster import DBSCAN as CuDBSCAN

    n = len(pts)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, bool)
    model = CuDBSCAN(eps=float(cfg.eps), min_samples=int(cfg.min_samples), metric="euclidean",
                     calc_core_sample_indices=True, output_type="numpy")
    lab = np.asarray(model.fit_predict(cp.asarray(pts, dtype=cp.float64)), dtype=np.int64)
    core = np.zeros(n, bool)
    idx = model.core_sample_indices_
    idx = cp.asnumpy(idx) if hasattr(idx, "__cuda_array_interface__") else np.asarray(idx)
    core[idx.astype(np.int64)] = True
    return _renumber_by_first_core(lab, core), core


# ----------------------------------------------------------------------------------------------------------
# References and agreement measures (tests, bench)


def dbscan_reference(xyz: np.ndarray, cfg: ClusterConfig = ClusterConfig()) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn DBSCAN (KD-tree, float64) on the finite points: labels (N,) int32 and core (N,) bool."""
    from sklearn.cluster import DBSCAN

    cols = np.asarray(xyz)[:, : cfg.ndim].astype(np.float64)
    finite = np.isfinite(cols).all(axis=1)
    labels = np.full(len(cols), -1, np.int32)
    core = np.zeros(len(cols), bool)
    if finite.sum() == 0:
        return labels, core
    model = DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, algorithm="kd_tree").fit(cols[finite])
    labels[finite] = model.labels_
    c = np.zeros(int(finite.sum()), bool)
    c[model.core_sample_indices_] = True
    core[finite] = c
    return labels, core


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (N,) (noise -1 counted as one label, as sklearn's
    ``adjusted_rand_score`` sees it)."""
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def core_partition_equal(labels_a, core_a, labels_b, core_b) -> bool:
    """True if both give the same core points and the same partition of them (up to renaming)."""
    core_a = np.asarray(core_a, bool)
    if not np.array_equal(core_a, np.asarray(core_b, bool)):
        return False
    la = np.asarray(labels_a)[core_a]
    lb = np.asarray(labels_b)[core_a]
    if len(la) == 0:
        return True
    pairs = np.unique(np.stack([la, lb], axis=1), axis=0)
    return len(pairs) == len(np.unique(la)) == len(np.unique(lb))
