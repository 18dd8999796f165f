"""The agent API hands query parameters to the routes that ask for them."""

from __future__ import annotations

import json

import pytest

from cni_cilium import api

pytestmark = pytest.mark.unit


class Flows:
    def answer(self, query):
        return api.json_response({"query": dict(query)})


def test_routes_get_their_query_or_nothing(tmp_path):
    sock = str(tmp_path / "agent.sock")
    server = api.serve(sock, {"/flows": api.with_query(Flows().answer),
                              "/plain": lambda: api.json_response({"ok": True})})
    try:
        status, body = api.get("/flows?since=4&verdict=DROPPED", sock)
        assert status == 200 and json.loads(body) == {"query": {"since": "4",
                                                                "verdict": "DROPPED"}}
        assert api.get_json("/plain?ignored=1", sock) == {"ok": True}
    finally:
        server.shutdown()
        server.server_close()
