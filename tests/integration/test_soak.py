"""The soak test's short form: clients against a real service and Redis while Redis is killed and
restarted and then the service is: no 5xx but 503, no acknowledged session lost (scripts/soak.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_a_short_soak_with_faults_loses_nothing(checkpoint_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("soak", REPO / "scripts" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    r = soak.soak(clients=2, minutes=0.3, faults=["redis", "service"], checkpoint_dir=checkpoint_dir)
    assert len(r["faults"]) == 2, r
    assert r["other_5xx"] == 0, r["statuses"]
    assert r["lost"] == 0 and r["acknowledged"] > 10, r
    assert r["statuses"].get("retrieve 200", 0) > 10, r["statuses"]
    assert not r["client_errors"], r["client_errors"]
