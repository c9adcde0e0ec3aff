"""Static-shape chunking: rows cut into the profile's buckets. (The routing rule itself: m3edge/routing/.)"""

from __future__ import annotations


def plan_chunks(n: int, buckets: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """Split n rows into (rows, bucket) chunks, padding the last with zero rows.

    The smallest bucket that holds the rest is used when at least half of it is real rows; otherwise
    the largest bucket that the rows fill goes first. Padding never costs more than the real work.
    """
    buckets = sorted(buckets)
    chunks = []
    while n > 0:
        fit = next((b for b in buckets if b >= n), None)
        if fit is not None and (fit <= 2 * n or fit == buckets[0]):
            chunks.append((n, fit))
            break
        full = max(b for b in buckets if b <= n)
        chunks.append((full, full))
        n -= full
    return chunks
