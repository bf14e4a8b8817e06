"""The relay socket over the real ASGI application: delivery contract, limits, access, events."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from keys.models import Device as DeviceRow
from messaging import services
from messaging.models import Call, Delivery
from tests.messaging.helpers import NOWHERE, fanout, send
from tests.messaging.ws import closed_with, connect, frames_until, next_of, silent
from tests.support import unb64

pytestmark = pytest.mark.django_db(transaction=True)

asend = sync_to_async(send)


@sync_to_async
def bulk_send(conversation_id: str, count: int, text: str = "m") -> None:
    """Many envelopes from alice to bob's first device through the service (no rate limit)."""
    alice_device = DeviceRow.objects.get(user__username="alice", device_id=1)
    for i in range(count):
        services.message_send(
            sender_device=alice_device,
            conversation_id=conversation_id,
            client_message_id=uuid.uuid4(),
            recipients=[services.RecipientInput("bob", 1, f"{text}{i}".encode())],
        )


@sync_to_async
def browser_login(api, account) -> str:
    """A browser's login: the session cookie it gets, as a Cookie header value."""
    client = Client()
    response = client.post("/api/v1/auth/login", account.login_payload(account.challenge(api)), content_type="application/json")
    assert response.status_code == 200
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.fixture(autouse=True)
async def _close_thread_connections():
    """Consumers' ORM calls run in a worker thread; close its connection so the test database can be dropped."""
    yield
    from django.db import connections

    from messaging.consumers import reset_db_executor

    await sync_to_async(reset_db_executor, thread_sensitive=False)()
    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def _fast(settings):
    settings.RATE_LIMITS_ENABLED = False
    settings.RELAY_TICK_SECONDS = 0.5


async def test_live_envelope_ack_and_no_redelivery(api, alice, bob, eve, chat):
    """bob gets alice's envelope live with his ciphertext; once acked it never comes back; eve sees nothing."""
    bob_ws, eve_ws = await connect(bob), await connect(eve)
    assert (await next_of(bob_ws, "backlog")) == {"type": "backlog", "has_more": False}
    await next_of(eve_ws, "backlog")
    status, sent = await asend(api, alice, chat, "hello")
    env = await next_of(bob_ws, "envelope")
    assert env["id"] == sent["id"] and env["seq"] == 1 and env["conversation_id"] == chat
    assert env["sender"] == {"user_id": "alice", "device_id": 1} and unb64(env["ciphertext"]) == b"hello|bob.1"
    await bob_ws.send_json_to({"type": "ack", "ids": [sent["id"]], "ref": "a1"})
    assert await next_of(bob_ws, "ok") == {"type": "ok", "ref": "a1"}
    assert await silent(eve_ws, 0.5)
    await bob_ws.disconnect()
    bob_ws = await connect(bob)
    assert "envelope" not in [f["type"] for f in await frames_until(bob_ws, "backlog")]
    row = await sync_to_async(Delivery.objects.get)()
    assert row.delivered_at is not None and row.ciphertext is None
    await bob_ws.disconnect()
    await eve_ws.disconnect()


async def test_a_reconnecting_device_gets_replies_and_reactions_with_their_targets(api, alice, bob, eve, chat):
    """The drain (not only the history API) names each envelope's sender device and the
    message it replies or reacts to, and leaves both empty for a plain message."""
    _, first = await asend(api, alice, chat, "question")
    _, reply = await asend(api, alice, chat, "answer", reply_to=first["id"])
    _, reaction = await asend(api, alice, chat, "<e2ee emoji>", kind="reaction", reaction_to=first["id"])
    bob_ws = await connect(bob)
    envelopes = {f["id"]: f for f in await frames_until(bob_ws, "backlog") if f["type"] == "envelope"}
    assert list(envelopes) == [first["id"], reply["id"], reaction["id"]]
    assert all(f["sender"] == {"user_id": "alice", "device_id": 1} for f in envelopes.values())
    assert (envelopes[first["id"]]["reply_to"], envelopes[first["id"]]["reaction_to"]) == (None, None)
    assert (envelopes[reply["id"]]["reply_to"], envelopes[reply["id"]]["reaction_to"]) == (first["id"], None)
    assert envelopes[reaction["id"]]["kind"] == "reaction"
    assert (envelopes[reaction["id"]]["reply_to"], envelopes[reaction["id"]]["reaction_to"]) == (None, first["id"])
    await bob_ws.disconnect()


async def test_backlog_drains_in_pages_and_unacked_comes_back(api, alice, bob, eve, chat, monkeypatch):
    """The first page is FIRST_PAGE envelopes, later ones up to PAGE_SIZE; a reconnect without
    acks gets everything again, in order; acked envelopes never come back."""
    from messaging import consumers

    monkeypatch.setattr(consumers, "FIRST_PAGE", 200)
    monkeypatch.setattr(consumers, "PAGE_SIZE", 200)
    await bulk_send(chat, 450)
    bob_ws = await connect(bob)
    pages = []
    seqs = []
    while True:
        frame = await bob_ws.receive_json_from(timeout=5)
        if frame["type"] == "envelope":
            seqs.append(frame["seq"])
        elif frame["type"] == "backlog":
            pages.append((len(seqs), frame["has_more"]))
            if not frame["has_more"]:
                break
    assert seqs == list(range(1, 451))
    assert pages == [(200, True), (400, True), (450, False)]
    await bob_ws.disconnect()
    # nothing was acked: everything is sent again, in order; then ack half and reconnect
    bob_ws = await connect(bob)
    frames = await frames_until(bob_ws, "backlog")
    envs = [f for f in frames if f["type"] == "envelope"]
    assert [f["seq"] for f in envs] == list(range(1, 201))
    await bob_ws.send_json_to({"type": "ack", "ids": [f["id"] for f in envs], "ref": 1})
    await next_of(bob_ws, "ok")
    await bob_ws.disconnect()
    bob_ws = await connect(bob)
    first = await next_of(bob_ws, "envelope")
    assert first["seq"] == 201
    await bob_ws.disconnect()


async def test_pages_shrink_to_their_byte_budget(api, alice, bob, eve, chat, monkeypatch):
    """After the first page, a page holds about PAGE_BYTES of frames: big envelopes come in
    small pages, so one drain never holds hundreds of large ciphertexts at once."""
    from messaging import consumers

    monkeypatch.setattr(consumers, "FIRST_PAGE", 10)
    monkeypatch.setattr(consumers, "PAGE_BYTES", 30_000)
    await bulk_send(chat, 60, text="x" * 2000)  # ~2.9 KB per frame → ~10 a page
    bob_ws = await connect(bob)
    pages, count = [], 0
    while True:
        frame = await bob_ws.receive_json_from(timeout=5)
        if frame["type"] == "envelope":
            count += 1
        elif frame["type"] == "backlog":
            pages.append(count - sum(pages))
            if not frame["has_more"]:
                break
    assert sum(pages) == 60
    assert pages[0] == 10 and max(pages) <= 11, pages
    await bob_ws.disconnect()


async def test_batch_sockets_get_a_page_in_one_frame_in_order(api, alice, bob, eve, chat, monkeypatch):
    """With ?batch=1, the frames of one tick arrive as one {"type": "batch", "frames": [...]}
    frame: a backlog page and its backlog marker together, in order; one ack frame acks them;
    a live envelope afterwards arrives as well (alone, or in a batch)."""
    from messaging import consumers

    monkeypatch.setattr(consumers, "FIRST_PAGE", 50)
    await bulk_send(chat, 120)
    bob_ws = await connect(bob, query="batch=1")
    first = await bob_ws.receive_json_from(timeout=5)
    assert first["type"] == "batch"
    kinds = [f["type"] for f in first["frames"]]
    assert kinds == ["envelope"] * 50 + ["backlog"] and first["frames"][-1]["has_more"] is True
    second = await bob_ws.receive_json_from(timeout=5)
    assert [f["type"] for f in second["frames"]] == ["envelope"] * 70 + ["backlog"]
    assert second["frames"][-1]["has_more"] is False
    envelopes = first["frames"][:-1] + second["frames"][:-1]
    assert [f["seq"] for f in envelopes] == list(range(1, 121))
    assert unb64(envelopes[0]["ciphertext"]) == b"m0"
    await bob_ws.send_json_to({"type": "ack", "ids": [f["id"] for f in envelopes], "ref": "all"})
    assert await next_of(bob_ws, "ok") == {"type": "ok", "ref": "all"}
    await asend(api, alice, chat, "live")
    frame = await bob_ws.receive_json_from(timeout=5)
    live = [f for f in (frame["frames"] if frame["type"] == "batch" else [frame]) if f["type"] == "envelope"]
    assert len(live) == 1 and unb64(live[0]["ciphertext"]).startswith(b"live") and live[0]["seq"] == 121
    await bob_ws.disconnect()
    undelivered = await sync_to_async(Delivery.objects.filter(delivered_at__isnull=True, device__user__username="bob").count)()
    assert undelivered == 1  # only the live one, not yet acked


async def test_send_over_the_socket_ignores_forged_sender(api, alice, bob, eve, chat):
    alice_ws, bob_ws = await connect(alice), await connect(bob)
    await next_of(alice_ws, "backlog")
    await next_of(bob_ws, "backlog")
    recipients = await sync_to_async(fanout)(api, alice, chat, "ws")
    frame = {"type": "send", "ref": "s1", "conversation_id": chat, "client_message_id": str(uuid.uuid4()), "recipients": recipients, "sender": {"user_id": "bob", "device_id": 1}}
    await alice_ws.send_json_to(frame)
    sent = await next_of(alice_ws, "sent")
    assert sent["ref"] == "s1" and sent["seq"] == 1
    await alice_ws.send_json_to(frame)
    assert (await next_of(alice_ws, "sent"))["id"] == sent["id"]  # idempotent
    env = await next_of(bob_ws, "envelope")
    assert env["sender"] == {"user_id": "alice", "device_id": 1}
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_second_socket_closes_the_first_with_4409(api, alice, bob, eve, chat):
    first = await connect(bob)
    await next_of(first, "backlog")
    second = await connect(bob)
    await next_of(second, "backlog")
    assert await closed_with(first) == 4409
    await second.send_json_to({"type": "ping", "ref": 7})
    assert await next_of(second, "pong") == {"type": "pong", "ref": 7}
    await second.disconnect()


async def test_logout_closes_the_socket(api, alice, bob, eve, chat):
    ws = await connect(bob)
    await next_of(ws, "backlog")
    status, _ = await sync_to_async(api.post)("/api/v1/auth/logout", token=bob.token)
    assert status == 204
    assert await closed_with(ws, timeout=1) == 4401


async def test_revoking_a_device_closes_its_socket(api, alice, bob, eve, chat):
    second = await sync_to_async(bob.link_device)(api)
    ws = await connect(bob, second)
    await next_of(ws, "backlog")
    assert (await sync_to_async(api.delete)(f"/api/v1/devices/{second.device_id}", token=bob.token))[0] == 204
    assert await closed_with(ws, timeout=1) == 4401


async def test_the_periodic_sweep_closes_sockets_whose_close_event_was_lost(api, alice, bob, eve, chat):
    """No event reaches these sockets (as if the channel layer lost it): the process-wide
    re-check still closes a revoked device's socket (4401) and a socket whose device another
    socket has claimed (4409), and leaves a valid socket open."""
    from django.core.cache import cache
    from django.utils import timezone

    from messaging.consumers import _current_key

    second = await sync_to_async(bob.link_device)(api)
    revoked, taken, fine = await connect(bob, second), await connect(alice), await connect(eve)
    for ws in (revoked, taken, fine):
        await next_of(ws, "backlog")
    bob_second = await sync_to_async(DeviceRow.objects.get)(user__username="bob", device_id=second.device_id)
    alice_first = await sync_to_async(DeviceRow.objects.get)(user__username="alice", device_id=1)
    await sync_to_async(DeviceRow.objects.filter(pk=bob_second.pk).update)(revoked_at=timezone.now())
    await sync_to_async(cache.set)(_current_key(alice_first.pk), "specific.elsewhere!1", 60)
    assert await closed_with(revoked, timeout=5) == 4401
    assert await closed_with(taken, timeout=5) == 4409
    await fine.send_json_to({"type": "ping", "ref": 1})
    assert await next_of(fine, "pong") == {"type": "pong", "ref": 1}
    await fine.disconnect()


def _plain_sends(chat: str, recipients: list[dict], count: int) -> list[dict]:
    return [
        {"type": "send", "ref": f"s{i}", "conversation_id": chat, "client_message_id": str(uuid.uuid4()), "recipients": recipients}
        for i in range(count)
    ]


async def test_sends_waiting_on_a_socket_are_stored_together_in_order(api, alice, bob, eve, chat, monkeypatch):
    """Sends a socket has already received go into one group commit, not one each after the
    previous is stored; they keep their order (seqs, answers), and a frame of another kind
    between them is answered in its place."""
    from messaging import relay

    batches: list[list[str]] = []
    store = relay.SENDS.run

    async def recorded(items):
        batches.append([str(item.client_message_id) for item in items])
        return await store(items)

    monkeypatch.setattr(relay.SENDS, "run", recorded)
    alice_ws, bob_ws = await connect(alice), await connect(bob)
    await next_of(alice_ws, "backlog")
    await next_of(bob_ws, "backlog")
    frames = _plain_sends(chat, await sync_to_async(fanout)(api, alice, chat, "g"), 5)
    for frame in frames[:3]:  # all queued before the socket reads any of them
        await alice_ws.send_json_to(frame)
    await alice_ws.send_json_to({"type": "ping", "ref": "p"})
    for frame in frames[3:]:
        await alice_ws.send_json_to(frame)
    answers = []
    while len(answers) < 6:
        frame = await alice_ws.receive_json_from(timeout=5)
        if frame["type"] in ("sent", "pong"):
            answers.append(frame)
    assert [a["ref"] for a in answers] == ["s0", "s1", "s2", "p", "s3", "s4"]
    assert [a["seq"] for a in answers if a["type"] == "sent"] == [1, 2, 3, 4, 5]
    ids = [f["client_message_id"] for f in frames]
    assert batches == [ids[:3], ids[3:]]
    envelopes = [(await next_of(bob_ws, "envelope"))["seq"] for _ in range(5)]
    assert envelopes == [1, 2, 3, 4, 5]
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_the_flood_guard_counts_every_frame_of_a_group(api, alice, bob, eve, chat, settings):
    """A socket allowed three frames a minute that sends five sends at once: three are stored
    and answered, the fourth closes it (1008) and nothing after it is stored."""
    settings.WS_FRAME_RATE = "3/60"
    alice_ws = await connect(alice)
    frames = _plain_sends(chat, await sync_to_async(fanout)(api, alice, chat, "f"), 5)
    for frame in frames:
        await alice_ws.send_json_to(frame)
    seen = []
    while True:
        frame = await alice_ws.receive_json_from(timeout=5)
        if frame["type"] in ("sent", "error"):
            seen.append(frame)
        if frame["type"] == "error":
            break
    assert [f["ref"] for f in seen[:3]] == ["s0", "s1", "s2"] and seen[3]["error"]["code"] == "rate_limited"
    assert await closed_with(alice_ws) == 1008
    stored = await sync_to_async(lambda: sorted(Delivery.objects.values_list("message__client_message_id", flat=True)))()
    assert [str(m) for m in stored] == sorted(f["client_message_id"] for f in frames[:3])


async def _answer(ws, frame: dict) -> dict:
    """Send one frame and wait for its answer (each send its own group commit)."""
    await ws.send_json_to(frame)
    while (answer := await ws.receive_json_from(timeout=5)).get("ref") != frame["ref"]:
        pass
    return answer


async def test_the_message_rate_limit_and_membership_hold_for_a_conversation_the_relay_knows(api, alice, bob, eve, chat, settings):
    """Once the relay has stored a send to a conversation it stores the next ones without
    reading members and devices again (on PostgreSQL on its event loop's own connection): the
    "message" limit (3 a minute here) still counts each send, the fourth is refused with
    rate_limited and Retry-After and not stored, and eve, in no conversation, posting the
    recipients of a real send is refused as not found; bob gets exactly the three."""
    settings.RATE_LIMITS_ENABLED = True
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "message": "3/60"}
    alice_ws, bob_ws, eve_ws = await connect(alice), await connect(bob), await connect(eve)
    for ws in (alice_ws, bob_ws, eve_ws):
        await next_of(ws, "backlog")
    frames = _plain_sends(chat, await sync_to_async(fanout)(api, alice, chat, "k"), 4)
    answers = [await _answer(alice_ws, frame) for frame in frames]
    assert [a["type"] for a in answers] == ["sent", "sent", "sent", "error"]
    assert [a["seq"] for a in answers[:3]] == [1, 2, 3]
    assert answers[3]["error"]["code"] == "rate_limited" and answers[3]["error"]["retry_after"] >= 1
    forged = {**_plain_sends(chat, frames[0]["recipients"], 1)[0], "ref": "eve"}
    refused = await _answer(eve_ws, forged)
    assert refused["type"] == "error" and refused["error"]["code"] == "not_found"
    assert [(await next_of(bob_ws, "envelope"))["seq"] for _ in range(3)] == [1, 2, 3]
    assert await silent(bob_ws, 0.5)
    stored = await sync_to_async(lambda: sorted(str(m) for m in Delivery.objects.values_list("message__client_message_id", flat=True)))()
    assert stored == sorted(f["client_message_id"] for f in frames[:3])
    for ws in (alice_ws, bob_ws, eve_ws):
        await ws.disconnect()


LOOP_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE application_name = 'enigmo-relay-loop' AND datname = current_database()"


@sync_to_async
def _loop_backends(terminate: bool = False) -> list[int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(LOOP_BACKENDS)
        pids = [row[0] for row in cursor.fetchall()]
        for pid in pids if terminate else []:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    return pids


@pytest.mark.skipif(services.connection.vendor != "postgresql", reason="the event loop's own connections are PostgreSQL's")
async def test_sends_and_acks_survive_the_database_dropping_the_event_loops_connections(api, alice, bob, eve, chat):
    """The relay's hot path (sends to a known conversation, acknowledgements) runs on
    connections of its event loop, shown as enigmo-relay-loop in pg_stat_activity. When the
    database drops them, the send and the acknowledgement in flight are stored through the
    database threads instead and the next ones open a new connection: every send is answered
    and delivered once, every acknowledged copy is marked delivered."""
    alice_ws, bob_ws = await connect(alice), await connect(bob)
    await next_of(alice_ws, "backlog")
    await next_of(bob_ws, "backlog")
    frames = _plain_sends(chat, await sync_to_async(fanout)(api, alice, chat, "d"), 4)
    got = []

    async def send_and_ack(frame: dict) -> None:
        answer = await _answer(alice_ws, frame)
        assert answer["type"] == "sent", answer
        envelope = await next_of(bob_ws, "envelope")
        assert envelope["id"] == answer["id"]
        got.append(envelope["seq"])
        assert await _answer(bob_ws, {"type": "ack", "ids": [envelope["id"]], "ref": "a" + frame["ref"]}) == {"type": "ok", "ref": "a" + frame["ref"]}

    await send_and_ack(frames[0])  # looks the conversation up
    await send_and_ack(frames[1])  # known: stored on the event loop
    assert await _loop_backends(terminate=True)
    await send_and_ack(frames[2])
    await send_and_ack(frames[3])
    assert await _loop_backends()  # reconnected
    assert got == [1, 2, 3, 4]
    rows = await sync_to_async(lambda: list(Delivery.objects.values_list("message__seq", "delivered_at", "ciphertext")))()
    assert sorted(seq for seq, _, _ in rows) == [1, 2, 3, 4]
    assert all(delivered is not None and ciphertext is None for _, delivered, ciphertext in rows)
    await alice_ws.disconnect()
    await bob_ws.disconnect()


async def test_frame_over_the_cap_closes_1009_others_carry_on(api, alice, bob, eve, chat, settings):
    settings.MAX_WS_FRAME_BYTES = 2048
    big, other = await connect(alice), await connect(bob)
    await next_of(big, "backlog")
    await next_of(other, "backlog")
    await big.send_to(text_data='{"type":"ping","pad":"' + "x" * 3000 + '"}')
    assert await closed_with(big) == 1009
    await other.send_json_to({"type": "ping"})
    assert (await next_of(other, "pong"))["type"] == "pong"
    await other.disconnect()


async def test_unauthenticated_and_origin_rules(api, alice, bob, eve, chat):
    ws = await connect()
    assert ws.connected_ok and await closed_with(ws) == 4401
    ws = await connect(token="not-a-token")
    assert await closed_with(ws) == 4401
    ws = await connect(alice, origin="https://evil.example")
    assert ws.connected_ok is False  # refused at the handshake
    # a browser session: cookie + allowed Origin works; the cookie without an Origin does not
    cookie = await browser_login(api, alice)
    ws = await connect(cookie=cookie, origin="http://127.0.0.1:8000")
    assert (await next_of(ws, "backlog"))["has_more"] is False
    await ws.disconnect()
    ws = await connect(cookie=cookie)
    assert await closed_with(ws) == 4401


async def test_a_browser_socket_dies_with_its_login(api, alice, bob, eve, chat):
    """A session socket is bound to the login that made the session: when the device logs in
    again (a new token replaces the old), the periodic re-check closes the old session's
    socket (4401), and that cookie cannot open a new one."""
    cookie = await browser_login(api, alice)
    ws = await connect(cookie=cookie, origin="http://127.0.0.1:8000")
    assert (await next_of(ws, "backlog"))["has_more"] is False
    await sync_to_async(alice.login)(api)  # the same device, a new login elsewhere
    assert await closed_with(ws, timeout=5) == 4401
    again = await connect(cookie=cookie, origin="http://127.0.0.1:8000")
    assert await closed_with(again) == 4401


async def test_malformed_and_unknown_frames_get_errors(api, alice, bob, eve, chat):
    ws = await connect(alice)
    await next_of(ws, "backlog")
    await ws.send_to(text_data="{not json")
    assert (await next_of(ws, "error"))["error"]["code"] == "invalid"
    await ws.send_json_to([1, 2])
    assert (await next_of(ws, "error"))["error"]["code"] == "invalid"
    await ws.send_json_to({"type": "launch", "ref": "x"})
    err = await next_of(ws, "error")
    assert err["ref"] == "x" and err["error"]["code"] == "unknown_type"
    await ws.send_json_to({"type": "send", "ref": "y", "conversation_id": chat})
    assert (await next_of(ws, "error"))["error"]["code"] == "invalid"
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await next_of(ws, "error"))["error"]["code"] == "invalid"
    # not JSON values: NaN, Infinity, an unpaired surrogate escape (it could not be stored as UTF-8)
    for text in ('{"type": "ping", "ref": NaN}', '{"type": "ping", "ref": 1e999}', '{"type": "ping", "ref": "\\ud800"}'):
        await ws.send_to(text_data=text)
        err = await next_of(ws, "error")
        assert err["error"] == {"code": "invalid", "message": "Malformed JSON."}, text
    await ws.send_json_to({"type": "ping"})
    await next_of(ws, "pong")
    await ws.disconnect()


async def test_eve_gets_the_same_404_for_every_socket_action(api, alice, bob, eve, chat):
    _, sent = await asend(api, alice, chat, "secret")
    ws = await connect(eve)
    await next_of(ws, "backlog")
    results = []
    for cid in (chat, NOWHERE):
        for frame in (
            {"type": "send", "conversation_id": cid, "client_message_id": str(uuid.uuid4()), "recipients": []},
            {"type": "typing", "conversation_id": cid, "state": "started"},
            {"type": "mark_read", "conversation_id": cid, "seq": 1},
            {"type": "call", "conversation_id": cid, "action": "offer", "media": "audio", "to": [{"user_id": "bob", "device_id": 1}], "payload": "sdp"},
        ):
            await ws.send_json_to({**frame, "ref": frame["type"]})
            results.append(await next_of(ws, "error"))
    for mid in (sent["id"], str(uuid.uuid4())):
        await ws.send_json_to({"type": "read", "message_id": mid, "ref": "read"})
        results.append(await next_of(ws, "error"))
        await ws.send_json_to({"type": "ack", "ids": [mid], "ref": "ack"})
        results.append(await next_of(ws, "error"))
    assert all(r["error"]["code"] == "not_found" and r["error"]["message"] == "Not found." for r in results)
    assert len(results) == 12
    await ws.disconnect()


async def test_typing_is_live_only_and_never_queued(api, alice, bob, eve, chat):
    assert (await sync_to_async(api.post)(f"/api/v1/conversations/{chat}/typing", {"state": "started"}, token=alice.token))[0] == 202
    bob_ws, alice_ws = await connect(bob), await connect(alice)
    assert "typing" not in [f["type"] for f in await frames_until(bob_ws, "backlog")]  # the earlier typing is gone
    await next_of(alice_ws, "backlog")
    await alice_ws.send_json_to({"type": "typing", "conversation_id": chat, "state": "started"})
    typing = await next_of(bob_ws, "typing")
    assert typing == {"type": "typing", "conversation_id": chat, "user_id": "alice", "device_id": 1, "state": "started", "expires_in": 6}
    await bob_ws.disconnect()
    await alice_ws.disconnect()


async def test_presence_goes_only_to_co_participants(api, alice, bob, eve, chat):
    alice_ws, eve_ws = await connect(alice), await connect(eve)
    await next_of(alice_ws, "backlog")
    await next_of(eve_ws, "backlog")
    bob_ws = await connect(bob)
    presence = await next_of(alice_ws, "presence")
    assert presence["user_id"] == "bob" and presence["online"] is True and presence["last_seen"]
    status, detail = await sync_to_async(api.get)(f"/api/v1/conversations/{chat}", token=alice.token)
    assert {p["user_id"]: p["online"] for p in detail["participants"]} == {"alice": True, "bob": True}
    await bob_ws.disconnect()
    offline = await next_of(alice_ws, "presence")
    assert offline["user_id"] == "bob" and offline["online"] is False
    assert await silent(eve_ws, 0.3)
    # presence off: nobody is told, and the detail hides it
    await sync_to_async(api.post)("/api/v1/me/privacy", {"presence": False}, token=bob.token)
    bob_ws = await connect(bob)
    await next_of(bob_ws, "backlog")
    assert await silent(alice_ws, 0.3)
    status, detail = await sync_to_async(api.get)(f"/api/v1/conversations/{chat}", token=alice.token)
    assert {p["user_id"]: p["online"] for p in detail["participants"]}["bob"] is None
    for ws in (alice_ws, eve_ws, bob_ws):
        await ws.disconnect()


async def test_receipts_reach_the_senders_devices(api, alice, bob, eve, chat):
    alice2 = await sync_to_async(alice.link_device)(api)
    a1, a2, b = await connect(alice), await connect(alice, alice2), await connect(bob)
    for ws in (a1, a2, b):
        await next_of(ws, "backlog")
    _, sent = await asend(api, alice, chat, "hi")
    await next_of(a2, "envelope")  # the sender's other device gets its copy
    env = await next_of(b, "envelope")
    await b.send_json_to({"type": "ack", "ids": [env["id"]]})
    for ws in (a1, a2):
        receipt = await next_of(ws, "receipt")
        assert receipt == {"type": "receipt", "message_id": sent["id"], "conversation_id": chat, "user_id": "bob", "device_id": 1, "status": "delivered"}
    await b.send_json_to({"type": "read", "message_id": env["id"], "ref": "r"})
    assert (await next_of(b, "ok"))["ref"] == "r"
    read = await next_of(a1, "receipt")
    assert read["status"] == "read" and read["message_id"] == sent["id"]
    # read receipts off: the next read sends nothing
    await sync_to_async(api.post)("/api/v1/me/privacy", {"read_receipts": False}, token=bob.token)
    _, second = await asend(api, alice, chat, "again")
    await b.send_json_to({"type": "mark_read", "conversation_id": chat, "seq": 2, "ref": "m"})
    assert (await next_of(b, "ok"))["seq"] == 2
    frames = []
    while not await a1.receive_nothing(timeout=0.3):
        frames.append(await a1.receive_json_from())
    assert not [f for f in frames if f["type"] == "receipt" and f["status"] == "read"]
    for ws in (a1, a2, b):
        await ws.disconnect()


async def test_delete_for_everyone_notifies_participants(api, alice, bob, eve, chat):
    _, sent = await asend(api, alice, chat, "oops")
    bob_ws = await connect(bob)
    await next_of(bob_ws, "backlog")
    assert (await sync_to_async(api.delete)(f"/api/v1/messages/{sent['id']}", token=alice.token))[0] == 204
    assert await next_of(bob_ws, "deleted") == {"type": "deleted", "message_id": sent["id"], "conversation_id": chat}
    await bob_ws.disconnect()
    bob_ws = await connect(bob)
    assert "envelope" not in [f["type"] for f in await frames_until(bob_ws, "backlog")]  # the undelivered copy went too
    await bob_ws.disconnect()


async def test_call_signalling_and_history(api, alice, bob, eve, chat):
    a, b, e = await connect(alice), await connect(bob), await connect(eve)
    for ws in (a, b, e):
        await next_of(ws, "backlog")
    to_bob_and_eve = [{"user_id": "bob", "device_id": 1}, {"user_id": "eve", "device_id": 1}]
    await a.send_json_to({"type": "call", "ref": "c", "conversation_id": chat, "action": "offer", "media": "video", "to": to_bob_and_eve, "payload": "opaque-offer"})
    ok = await next_of(a, "ok")
    call = await next_of(b, "call")
    assert call["call_id"] == ok["call_id"] and call["action"] == "offer" and call["media"] == "video" and call["payload"] == "opaque-offer"
    assert call["from"] == {"user_id": "alice", "device_id": 1}
    assert await silent(e, 0.3)  # not a participant: dropped
    await b.send_json_to({"type": "call", "conversation_id": chat, "call_id": ok["call_id"], "action": "answer", "to": [{"user_id": "alice", "device_id": 1}], "payload": "opaque-answer"})
    assert (await next_of(a, "call"))["action"] == "answer"
    await a.send_json_to({"type": "call", "conversation_id": chat, "call_id": ok["call_id"], "action": "end", "to": [{"user_id": "bob", "device_id": 1}], "payload": ""})
    assert (await next_of(b, "call"))["action"] == "end"
    row = await sync_to_async(Call.objects.get)()
    assert row.status == "ended" and row.answered_at and row.ended_at and row.kind == "video"
    status, history = await sync_to_async(api.get)("/api/v1/calls", token=bob.token)
    assert history[0]["status"] == "ended" and history[0]["type"] == "video"
    await b.send_json_to({"type": "call", "conversation_id": chat, "call_id": str(uuid.uuid4()), "action": "ice", "to": [], "payload": "x"})
    assert (await next_of(b, "error"))["error"]["code"] == "not_found"
    for ws in (a, b, e):
        await ws.disconnect()


async def test_queue_cap_tells_the_device_what_it_lost(api, alice, bob, eve, chat, settings):
    settings.DEVICE_QUEUE_CAP = 3
    await bulk_send(chat, 5)
    ws = await connect(bob)
    frames = await frames_until(ws, "backlog")
    assert frames[0] == {"type": "trimmed", "count": 2}
    assert [f["seq"] for f in frames if f["type"] == "envelope"] == [3, 4, 5]
    await ws.disconnect()


async def test_a_lost_nudge_is_recovered_from_the_database(api, alice, bob, eve, chat):
    ws = await connect(bob)
    await next_of(ws, "backlog")
    with mock.patch("messaging.services.publish"):  # the layer "loses" the nudge
        await bulk_send(chat, 1, "lost")
    env = await next_of(ws, "envelope", timeout=3)
    assert unb64(env["ciphertext"]) == b"lost0"
    await ws.disconnect()


async def test_a_lost_nudge_is_recovered_while_an_earlier_envelope_waits_for_its_ack(api, alice, bob, eve, chat):
    """The periodic re-check leaves alone a socket whose undelivered envelopes are all in flight
    to it, but not one with more waiting than that."""
    ws = await connect(bob)
    await next_of(ws, "backlog")
    await bulk_send(chat, 1, "first")
    first = await next_of(ws, "envelope", timeout=3)  # never acknowledged: still in flight
    with mock.patch("messaging.services.publish"):  # the layer "loses" the next nudge
        await bulk_send(chat, 1, "lost")
    env = await next_of(ws, "envelope", timeout=3)
    assert (unb64(first["ciphertext"]), unb64(env["ciphertext"])) == (b"first0", b"lost0")
    await ws.disconnect()


@sync_to_async
def bulk_backlog(conversation_id: str, count: int) -> None:
    """`count` stored envelopes from alice to bob's device, inserted in bulk (as if bob had been offline)."""
    from messaging.models import Conversation, Message

    conversation = Conversation.objects.get(public_id=conversation_id)
    alice_device = DeviceRow.objects.get(user__username="alice", device_id=1)
    bob_device = DeviceRow.objects.get(user__username="bob", device_id=1)
    messages = Message.objects.bulk_create(
        [Message(conversation=conversation, seq=i, sender_user=alice_device.user, sender_device=alice_device, client_message_id=uuid.uuid4()) for i in range(1, count + 1)],
        batch_size=2000,
    )
    Delivery.objects.bulk_create([Delivery(message=m, device=bob_device, ciphertext=b"c%d" % m.seq) for m in messages], batch_size=2000)
    Conversation.objects.filter(pk=conversation.pk).update(last_seq=count)


async def test_a_device_offline_across_ten_thousand_envelopes_misses_none(api, alice, bob, eve, chat):
    await bulk_backlog(chat, 10_000)
    ws = await connect(bob)
    seqs: list[int] = []
    pending: list[str] = []
    while True:
        frame = await ws.receive_json_from(timeout=10)
        if frame["type"] == "envelope":
            seqs.append(frame["seq"])
            pending.append(frame["id"])
        elif frame["type"] == "backlog":
            await ws.send_json_to({"type": "ack", "ids": pending, "ref": len(seqs)})
            pending = []
            if not frame["has_more"]:
                break
    while (await next_of(ws, "ok"))["ref"] != 10_000:
        pass
    assert seqs == list(range(1, 10_001))
    assert await sync_to_async(Delivery.objects.filter(delivered_at__isnull=True).count)() == 0
    await ws.disconnect()


@sync_to_async
def expired_backlog(conversation_id: str, expired: int) -> str:
    """`expired` envelopes to bob's device whose lifetime is over (not yet purged), then one live
    one; returns the live one's id."""
    from datetime import timedelta

    from django.utils import timezone

    from messaging.models import Conversation, Message

    conversation = Conversation.objects.get(public_id=conversation_id)
    alice_device = DeviceRow.objects.get(user__username="alice", device_id=1)
    bob_device = DeviceRow.objects.get(user__username="bob", device_id=1)
    past = timezone.now() - timedelta(minutes=1)
    messages = Message.objects.bulk_create(
        [
            Message(conversation=conversation, seq=i, sender_user=alice_device.user, sender_device=alice_device, client_message_id=uuid.uuid4(), expires_at=past if i <= expired else None)
            for i in range(1, expired + 2)
        ]
    )
    Delivery.objects.bulk_create([Delivery(message=m, device=bob_device, ciphertext=b"c%d" % m.seq) for m in messages])
    Conversation.objects.filter(pk=conversation.pk).update(last_seq=expired + 1)
    return str(messages[-1].public_id)


async def test_a_page_of_expired_envelopes_does_not_stall_the_backlog(api, alice, bob, eve, chat):
    """More than a page of expired-but-unpurged envelopes ahead of a live one: bob gets exactly
    the live one and one backlog frame saying nothing more is waiting."""
    from messaging.consumers import PAGE_SIZE

    live_id = await expired_backlog(chat, PAGE_SIZE + 50)
    ws = await connect(bob)
    frames = await frames_until(ws, "backlog")
    assert [(f["type"], f.get("id")) for f in frames] == [("envelope", live_id), ("backlog", None)]
    assert frames[-1]["has_more"] is False
    assert await silent(ws, 0.5)
    await ws.disconnect()


def test_a_socket_buffer_past_capacity_keeps_control_messages_and_turns_pushes_into_nudges():
    """The channel layer's messages share the socket's queue of client frames. Past the layer's
    capacity a cross-process push becomes a nudge (the envelope is stored; the drain fetches it,
    as the test above shows), while a close or replace is never dropped and order is kept."""
    import asyncio

    from messaging.consumers import _LayerInbox

    queue: asyncio.Queue = asyncio.Queue()
    inbox = _LayerInbox(queue, capacity=2)
    pushes = [{"type": "relay.push", "d": i, "m": ["m", "c", 1], "s": i, "t": "{}"} for i in range(3)]
    for push in pushes:
        inbox.put_nowait(push)
    inbox.put_nowait({"type": "device.closed"})
    got = [queue.get_nowait() for _ in range(queue.qsize())]
    assert got == [pushes[0], pushes[1], {"type": "relay.nudge"}, {"type": "device.closed"}]
