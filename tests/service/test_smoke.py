from tests.conftest import Keys
from tests.service.helpers import submission


async def test_submit_and_decide(client, api_keys: Keys) -> None:
    """A review can be submitted, read and approved."""
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    assert resp.status == 201, await resp.text()
    review = await resp.json()
    resp = await client.get(resp.headers["Location"], headers=api_keys.auth("viewer"))
    assert resp.status == 200
    resp = await client.post(
        f"/api/reviews/{review['id']}/decision", json={"decision": "approve"},
        headers=api_keys.auth("reviewer"),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "approved"
    assert body["decisions"][0]["reviewer"] == "reviewer-bot"
