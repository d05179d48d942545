"""The OpenAPI description: it covers every route and nothing else, it is served on both mounts, and schemathesis,
fuzzing each operation from it, finds no 500 and no refusal outside its API's error shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_modelrunner.api import routes
from jupyter_modelrunner.api.openapi import OPERATIONS, canonical, describe, operations

TABLE = tuple(routes(""))

ROOT = Path(__file__).resolve().parents[2]
#: Examples per operation and per mount: bounded so CI stays short; raise it to fuzz harder locally.
EXAMPLES = os.environ.get("MODEL_RUNNER_FUZZ_EXAMPLES", "10")


def test_every_route_is_described_and_every_description_has_a_route():
    routed = {(method, canonical(path)) for method, path, _, _ in operations(TABLE)}
    assert sorted(routed - set(OPERATIONS)) == [], "routes without a description"
    assert sorted(set(OPERATIONS) - routed) == [], "descriptions of routes that do not exist"
    document = describe(TABLE)
    assert document["openapi"] == "3.1.0"
    described = {(m, p.lstrip("/")) for p, ops in document["paths"].items() for m in ops}
    assert described == {(m, p) for m, p, _, _ in operations(TABLE)}


@pytest.fixture(scope="module", params=["jupyter", "standalone"])
def server(request):
    return request.getfixturevalue(request.param)


def test_the_description_is_served_where_the_routes_are(server):
    with server.client() as http:
        document = http.get("openapi.json").json()
    assert document["servers"] == [{"url": "/" + server.prefix}]
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["x-inference-key"] and "model" in chat["requestBody"]["content"]["application/json"]["schema"][
        "required"]
    assert "x-inference-key" not in document["paths"]["/models/create"]["post"]


def schemathesis(server, workdir: Path, *options: str) -> subprocess.CompletedProcess:
    """`st run` against the live server; its cache (.schemathesis/) goes to `workdir`, not the checkout. Run with one
    worker: with several, schemathesis 4.32's coverage phase can crash inside Python 3.11's ast module ("AST
    constructor recursion depth mismatch", hypothesis describing a filter from threads at once)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("st")), "run", server.url + "openapi.json",
         "-H", f"Authorization: token {server.token}", "--checks", "no_internal_error,error_shape_of_its_api",
         "--max-examples", EXAMPLES, "--seed", "1", "--request-timeout", "120", "--no-color",
         *options],
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, cwd=workdir, timeout=1100)


@pytest.mark.timeout(1200)
def test_schemathesis_finds_no_500_and_every_refusal_in_its_api_shape(server, tmp_path):
    with server.client() as http:
        before = sorted(m["id"] for m in http.get("models").json())
    # Everything but deleting, in every phase (the stateful one learns real model names from the lists)...
    everything = schemathesis(server, tmp_path, "--exclude-method", "DELETE", "--workers", "1")
    assert everything.returncode == 0, everything.stdout[-8000:] + everything.stderr[-2000:]
    # ...and the deleting routes with made-up names only: deleting what exists is what they are for. Purging the
    # store is excluded for the same reason.
    deleting = schemathesis(server, tmp_path, "--include-method", "DELETE", "--exclude-path", "/models/purge",
                            "--phases", "examples,coverage,fuzzing", "--workers", "1")
    assert deleting.returncode == 0, deleting.stdout[-8000:] + deleting.stderr[-2000:]
    with server.client() as http:  # still up, nothing lost
        assert http.get(server.origin + "api/status").status_code == 200
        assert sorted(m["id"] for m in http.get("models").json()) == before
        report = http.post("models/fsck", json={}).json()
    assert report["problems"] == [], report
