"""Sticky routing for ``m3edge serve --ray``: a caller's user id always picks the same replica.

Memory is per replica (runtime/ray_serve.py), so a caller that wants its memories back must reach the replica
that stored them. Ray Serve's proxy reads the id from the ``serve_multiplexed_model_id`` header into the
request's metadata; this router ranks the replicas by rendezvous hashing on (user id, replica id): every proxy
agrees on the first choice without shared state, and when a replica is added or removed only the users whose
first choice it was move. A full first choice falls through to the next rank (Ray probes ranks in order), so a
busy replica sheds load instead of queueing forever. Requests without an id keep Ray's default policy
(replicas on the proxy's node first, then the shorter queue of two).

Imports ray at module level: Ray Serve loads it by its import path in the proxy; nothing imports it with
``import m3edge.runtime``.
"""

from __future__ import annotations

import hashlib

# Ray's default router (power of two choices, locality first) is what requests without an id keep; it lives in
# a private module, so the ray extra pins the version this was tested on (ray[serve]>=2.60, tests/runtime/test_ray.py).
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter


def rendezvous(user: str, replica_ids: list[str]) -> list[str]:
    """Replica ids, most preferred first, for ``user`` (highest sha256(user, id) first)."""
    return sorted(replica_ids, key=lambda r: hashlib.sha256(f"{user}\0{r}".encode()).digest(), reverse=True)


class StickyRouter(PowerOfTwoChoicesRequestRouter):
    async def choose_replicas(self, candidate_replicas, pending_request=None):
        user = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if not user or not candidate_replicas:
            return await super().choose_replicas(candidate_replicas, pending_request)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[i]] for i in rendezvous(user, list(by_id))]
