"""The service on a real Redis Cluster (3 primaries, 3 replicas, on loopback): sessions spread over the
shards, and killing a primary while clients run loses no acknowledged session once its replica takes
over; that shard's sessions answer 503 meanwhile, the others keep answering, and nothing answers 500."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import RedisClusterProcesses
from redis.cluster import RedisCluster

from service.redis_store import RedisClusterStore

pytestmark = pytest.mark.integration
PREFIX = "ebmm-cluster:"


def bits(rng: random.Random) -> str:
    return "".join(rng.choice("01") for _ in range(128))


def write_body(rng: random.Random) -> dict:
    return {"model": "binary128", "patterns": {"bits": [bits(rng) for _ in range(4)]}}


def test_sessions_survive_a_primary_failover(server_factory: Callable, checkpoint_dir: Path,
                                             tmp_path: Path) -> None:
    cluster = RedisClusterProcesses(tmp_path).start()
    try:
        server = server_factory(store_url=cluster.url, store_prefix=PREFIX, store_min_replicas=1,
                                store_timeout_seconds=0.5, checkpoint_dir=checkpoint_dir)
        layout = RedisClusterStore(cluster.url, PREFIX, timeout=0.5)          # only for key names
        mapper = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
        shard_of: dict[str, int] = {}

        def shard(sid: str) -> int:
            if sid not in shard_of:
                shard_of[sid] = mapper.get_node_from_key(layout.key(sid)).port
            return shard_of[sid]

        rng = random.Random(0)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first = []
            for _ in range(30):
                r = c.post("/v1/sessions", json=write_body(rng))
                assert r.status_code == 201, r.text
                first.append(r.json()["session_id"])
            by_shard = Counter(shard(sid) for sid in first)
            assert set(by_shard) == set(cluster.primary_ports()), by_shard     # spread over all three
            victim = by_shard.most_common(1)[0][0]
            others = [sid for sid in first if shard(sid) != victim]
            on_victim = [sid for sid in first if shard(sid) == victim]

            acknowledged, statuses, errors = list(first), Counter(), []
            expected: dict[str, int | None] = {}        # a client's own sessions: patterns, None once unsure
            stop = threading.Event()

            def client(seed: int) -> None:
                crng = random.Random(seed)
                with httpx.Client(base_url=server.url, timeout=30) as hc:
                    while not stop.is_set():
                        try:
                            w = hc.post("/v1/sessions", json=write_body(crng))
                            statuses[f"write {w.status_code}"] += 1
                            if w.status_code == 201:
                                acknowledged.append(w.json()["session_id"])
                                expected[w.json()["session_id"]] = 4
                                a = hc.post(f"/v1/sessions/{w.json()['session_id']}/patterns",
                                            json={"patterns": write_body(crng)["patterns"]})
                                statuses[f"append {a.status_code}"] += 1
                                sid = w.json()["session_id"]
                                expected[sid] = 8 if a.status_code == 200 else None   # a 503 may or may not
                            sid = crng.choice(acknowledged)
                            q = {"queries": {"bits": [bits(crng)]}}
                            r = hc.post(f"/v1/sessions/{sid}/retrieve", json=q)
                            statuses[f"retrieve {r.status_code}"] += 1
                        except httpx.HTTPError as e:
                            errors.append(repr(e))

            threads = [threading.Thread(target=client, args=(s,)) for s in range(3)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            cluster.kill(victim)
            # before the replica takes over: the other shards' sessions answer, the victim's get 503
            outage = Counter()
            t_kill = time.monotonic()
            while time.monotonic() - t_kill < 1.5:
                for sid in others[:5] + on_victim[:2]:
                    r = c.get(f"/v1/sessions/{sid}")
                    outage[("victim" if sid in on_victim else "other", r.status_code)] += 1
            assert c.get("/readyz").status_code == 200                    # the other shards still serve
            cluster.wait_healthy(replicas=0)                              # the replica is now a primary
            deadline = time.monotonic() + 20
            while c.get(f"/v1/sessions/{on_victim[0]}").status_code != 200:
                assert time.monotonic() < deadline, "the promoted replica's sessions did not come back"
                time.sleep(0.1)
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(60)

            assert not errors, errors[:3]
            assert outage[("other", 200)] > 0 and not [k for k in outage if k[0] == "other" and k[1] != 200], outage
            assert outage[("victim", 503)] > 0, outage
            assert all(k.endswith((" 200", " 201", " 503")) for k in statuses), statuses
            assert statuses["write 201"] > len(threads) and statuses["retrieve 200"] > len(threads), statuses
            lost = [sid for sid in acknowledged if c.get(f"/v1/sessions/{sid}").status_code != 200]
            assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged sessions lost"
            sure = {sid: n for sid, n in expected.items() if n is not None}
            counts = {sid: c.get(f"/v1/sessions/{sid}").json()["patterns"] for sid in sure}
            assert counts == sure, "an acknowledged append was lost or applied twice"
            assert statuses["append 200"] > 0, statuses
            r = c.post(f"/v1/sessions/{on_victim[0]}/retrieve", json={"queries": {"bits": [bits(rng)]}})
            assert r.status_code == 200, r.text
        mapper.close()
    finally:
        cluster.stop()
