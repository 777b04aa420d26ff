"""The RPC WebSocket relay (addons/ws_relay.py), driven event by event without sockets, as
mitmproxy tests its own layers: client frames parsed strictly and judged before anything is
relayed, gateway bytes passed raw, and the sidecar's own frames only between gateway messages."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from mitmproxy import http, options
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import websocket
from mitmproxy.test import tflow

from addons import compat, ws_relay
from addons.ws_relay import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, ClientFrames, Judge, RpcRelay
from sidecar.metrics import INTERNAL_ERRORS
from sidecar.reasons import Reason
from sidecar.rpc import FrameVerdict

MASK = b"\x37\xfa\x21\x3d"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A client frame as a browser sends it (masked with a non-zero key)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    return head + (MASK + ws_relay.unmask(payload, MASK) if masked else payload)


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    data = ws_relay.frame(opcode, payload)
    return data if fin else bytes([data[0] & 0x7F]) + data[1:]


def req(verdict: str, **extra: Any) -> bytes:
    return json.dumps({"verdict": verdict, **extra}).encode()


class FakeSession:
    """Answers what each frame asks for; `wait` frames wait for `gate` first."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.gate: asyncio.Future[None] | None = None
        self.answer_pending = False
        self.answers: list[bytes] = []  # gateway messages shown while the connect's answer was awaited

    def server_message(self, content: bytes) -> bytes | None:
        """The connect's answer is the message that says `answer`; it comes back rewritten."""
        self.answers.append(content)
        if content.startswith(b"answer"):
            self.answer_pending = False
            return b"rewritten " + content
        return None

    @property
    def connected(self) -> bool:
        return True

    async def client_frame(self, content: bytes) -> FrameVerdict:
        self.seen.append(content)
        asked = json.loads(content)
        if asked.get("wait"):
            assert self.gate is not None
            await self.gate
        if asked.get("boom"):
            raise RuntimeError("judge broke")
        verdict = asked["verdict"]
        if verdict == "forward":
            payload = asked["rewrite"].encode() if "rewrite" in asked else None
            return FrameVerdict("forward", Reason.ALLOWED, payload)
        if verdict == "reply":
            return FrameVerdict("reply", Reason.METHOD_DENIED, b'{"refused":1}')
        return FrameVerdict("close", Reason.MALFORMED_FRAME, b'{"bye":1}', close_code=1008, close_reason=asked.get("close_reason"))


class Relay:
    """One relay layer and the commands it answers each event with."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.flow = tflow.twebsocketflow()
        self.session = FakeSession()
        self.judged: list[FrameVerdict] = []
        context = Context(self.flow.client_conn, options.Options())
        context.server = self.flow.server_conn
        self.client, self.server = context.client, context.server
        judge = Judge(session=lambda flow: self.session, message_limit=lambda flow: limit,  # type: ignore[arg-type,return-value]
                      judged=lambda flow, session, verdict: self.judged.append(verdict))
        self.layer = RpcRelay(context, self.flow, judge)
        [start] = self.events(events.Start())
        assert isinstance(start, websocket.WebsocketStartHook)
        assert self.events(events.HookCompleted(start)) == []

    def events(self, event: events.Event) -> list[commands.Command]:
        return list(self.layer.handle_event(event))

    def from_client(self, data: bytes) -> list[commands.Command]:
        return self.events(events.DataReceived(self.client, data))

    def from_server(self, data: bytes) -> list[commands.Command]:
        return self.events(events.DataReceived(self.server, data))


def sent(cmds: list[commands.Command], conn: Any) -> bytes:
    return b"".join(c.data for c in cmds if isinstance(c, commands.SendData) and c.connection == conn)


def closed(cmds: list[commands.Command], conn: Any) -> bool:
    return any(isinstance(c, commands.CloseConnection) and c.connection == conn for c in cmds)


def read_server_bound(data: bytes) -> list[tuple[int, bytes]]:
    """What the gateway reads: the relay's own strict reader checks they are masked client frames."""
    return [(m.opcode, m.payload) for m in ClientFrames(lambda: 1 << 30).feed(data)]


def close_of(data: bytes) -> tuple[int, bytes]:
    assert data[0] == 0x88 and data[1] & 0x80 == 0, data
    return int.from_bytes(data[2:4], "big"), data[4:2 + data[1]]


# ---- client → gateway ---------------------------------------------------------------------------


def test_an_allowed_message_goes_on_as_the_frame_the_client_sent() -> None:
    relay = Relay()
    raw = client_frame(TEXT, req("forward"))
    out = relay.from_client(raw)
    assert sent(out, relay.server) == raw and not sent(out, relay.client)
    assert relay.session.seen == [req("forward")]


def test_a_rewritten_message_is_sent_masked_as_one_frame_of_its_type() -> None:
    relay = Relay()
    out = relay.from_client(client_frame(BINARY, req("forward", rewrite="judged")))
    assert read_server_bound(sent(out, relay.server)) == [(BINARY, b"judged")]


def test_several_messages_in_one_read_leave_in_one_write_and_in_order() -> None:
    relay = Relay()
    frames = [client_frame(TEXT, req("forward", n=n)) for n in range(5)]
    out = relay.from_client(b"".join(frames))
    assert [(c.connection, c.data) for c in out if isinstance(c, commands.SendData)] == [(relay.server, b"".join(frames))]


def test_a_fragmented_message_is_judged_whole_and_control_frames_between_pass() -> None:
    relay = Relay()
    message = req("forward")
    first = client_frame(TEXT, message[:5], fin=False)
    ping = client_frame(PING, b"p")
    last = client_frame(CONTINUATION, message[5:])
    assert relay.from_client(first) == []  # nothing unread goes on
    assert sent(relay.from_client(ping), relay.server) == ping
    assert sent(relay.from_client(last[:3]), relay.server) == b""  # a frame split across reads
    assert sent(relay.from_client(last[3:]), relay.server) == first + last
    assert relay.session.seen == [message]


def test_pongs_go_on_and_a_reply_verdict_answers_the_client_in_text_as_the_gateway_does() -> None:
    """The gateway answers every request, a binary one included, with a text frame: a browser
    client would get a Blob, not a string, from a binary reply."""
    relay = Relay()
    pong = client_frame(PONG, b"")
    out = relay.from_client(pong + client_frame(BINARY, req("reply")))
    assert sent(out, relay.server) == pong
    assert sent(out, relay.client) == server_frame(TEXT, b'{"refused":1}')
    assert relay.judged[0].verdict == "reply"


@pytest.mark.parametrize("frame, code", [
    (client_frame(TEXT, req("forward"), masked=False), 1002),
    (client_frame(TEXT, req("forward"), rsv=0x40), 1002),  # no extension was negotiated
    (client_frame(0x3, b"x"), 1002),
    (client_frame(0xB, b"x"), 1002),
    (client_frame(CONTINUATION, b"x"), 1002),
    (client_frame(PING, b"x", fin=False), 1002),
    (client_frame(PING, b"x" * 126), 1002),
    (client_frame(TEXT, b"{\xff}"), 1007),
    (client_frame(TEXT, b"x", fin=False) + client_frame(TEXT, b"y"), 1002),
    (b"\x81\xfe\x00\x05" + MASK + b"hello", 1002),  # a 2-byte length for 5 bytes
    (b"\x81\xfe\x00\x7d" + MASK + b"x" * 125, 1002),  # a 2-byte length for the most a 7-bit one holds
    (b"\x81\xff" + ((1 << 63) | 70_000).to_bytes(8, "big") + MASK, 1002),  # a 64-bit length with its top bit set
    (client_frame(CLOSE, b"\x03"), 1002),
    (client_frame(CLOSE, (1005).to_bytes(2, "big")), 1002),
    (client_frame(CLOSE, (2999).to_bytes(2, "big")), 1002),
    (client_frame(CLOSE, (5000).to_bytes(2, "big")), 1002),
    (client_frame(CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),
])
def test_frames_rfc6455_forbids_close_the_connection_and_nothing_is_relayed(frame: bytes, code: int) -> None:
    relay = Relay()
    out = relay.from_client(frame)
    assert sent(out, relay.server) == b"" and relay.session.seen == []
    assert close_of(sent(out, relay.client))[0] == code
    assert relay.from_client(client_frame(TEXT, req("forward"))) == []  # nothing after that is read


def test_a_forbidden_frame_is_refused_at_its_first_two_bytes() -> None:
    relay = Relay()
    out = relay.from_client(client_frame(TEXT, req("forward"), masked=False)[:2])
    assert close_of(sent(out, relay.client))[0] == 1002


def test_a_message_over_the_limit_is_refused_as_its_header_announces_it() -> None:
    relay = Relay(limit=64)
    head = client_frame(TEXT, b"x" * 100)[:8]  # header and mask only: the payload never comes
    assert close_of(sent(relay.from_client(head), relay.client)) == (1009, b"message too big")


def test_a_fragmented_message_is_refused_as_it_grows_past_the_limit() -> None:
    relay = Relay(limit=64)
    assert relay.from_client(client_frame(TEXT, b"x" * 40, fin=False)) == []
    out = relay.from_client(client_frame(CONTINUATION, b"x" * 40, fin=False))
    assert close_of(sent(out, relay.client))[0] == 1009 and not sent(out, relay.server)


def test_empty_continuation_frames_count_toward_the_limit() -> None:
    """They add nothing to a message's size, yet each is held: uncounted, a client sending them
    forever grew the sidecar by a gigabyte in 20 s (red team)."""
    relay = Relay(limit=ws_relay.FRAGMENT_CHARGE * 100)
    assert relay.from_client(client_frame(TEXT, b"x", fin=False) + client_frame(CONTINUATION, b"", fin=False) * 99) == []
    out = relay.from_client(client_frame(CONTINUATION, b"", fin=False))
    assert close_of(sent(out, relay.client)) == (1009, b"message too big") and not sent(out, relay.server)


def test_a_message_in_fragments_within_the_limit_goes_on_whole() -> None:
    relay = Relay(limit=ws_relay.FRAGMENT_CHARGE * 100)
    message = req("forward")
    raw = client_frame(TEXT, message[:1], fin=False) + b"".join(
        client_frame(CONTINUATION, message[at:at + 1], fin=at == len(message) - 1) for at in range(1, len(message)))
    assert sent(relay.from_client(raw), relay.server) == raw and relay.session.seen == [message]


def test_a_large_frame_arriving_in_pieces_is_read_whole() -> None:
    relay = Relay(limit=1 << 22)
    message = json.dumps({"verdict": "forward", "pad": "x" * 300_000}).encode()
    raw = client_frame(TEXT, message)
    out: list[commands.Command] = []
    for at in range(0, len(raw), 65536):
        out += relay.from_client(raw[at:at + 65536])
    assert sent(out, relay.server) == raw and relay.session.seen == [message]


@pytest.mark.parametrize("cut", range(1, 14))
def test_a_frame_with_a_64_bit_length_is_read_whole_wherever_its_header_is_cut(cut: int) -> None:
    relay = Relay(limit=1 << 22)
    message = json.dumps({"verdict": "forward", "pad": "x" * 70_000}).encode()
    raw = client_frame(TEXT, message)
    out = relay.from_client(raw[:cut]) + relay.from_client(raw[cut:])
    assert sent(out, relay.server) == raw and relay.session.seen == [message]


def test_a_frame_dripped_byte_by_byte_is_read_whole_and_never_rebuffered() -> None:
    """A client dripping a frame gets its payload collected in chunks, joined once: only a
    split header waits in the re-joined buffer, so the copying stays linear."""
    relay = Relay(limit=1 << 16)
    message = json.dumps({"verdict": "forward", "pad": "x" * 3000}).encode()
    raw = client_frame(TEXT, message)
    out: list[commands.Command] = []
    for at in range(len(raw)):
        out += relay.from_client(raw[at:at + 1])
        assert len(relay.layer.client_frames._buf) < 14
    assert sent(out, relay.server) == raw and relay.session.seen == [message]


@pytest.mark.parametrize("length", [0, 125, 126, 127, 65535, 65536])
def test_the_sidecars_own_frames_carry_their_length_in_the_form_it_needs(length: int) -> None:
    """A rewritten message goes to the gateway, a reply to the client, in frames of our making."""
    payload = b"x" * length
    unmasked = ws_relay.frame(TEXT, payload)
    assert ws_relay.whole_server_frame(unmasked) == (TEXT, True, payload, len(unmasked))
    assert read_server_bound(ws_relay.frame(BINARY, payload, masked=True)) == [(BINARY, payload)]


def test_a_close_inside_a_fragmented_message_goes_on_without_the_unjudged_fragments() -> None:
    relay = Relay()
    close = client_frame(CLOSE, (1000).to_bytes(2, "big"))
    out = relay.from_client(client_frame(TEXT, req("forward")[:5], fin=False) + close)
    assert sent(out, relay.server) == close and relay.session.seen == []


def test_a_frame_missing_only_its_last_byte_waits_for_it() -> None:
    relay = Relay()
    raw, after = client_frame(TEXT, req("forward")), client_frame(TEXT, req("forward", n=2))
    assert relay.from_client(raw[:-1]) == []
    assert sent(relay.from_client(raw[-1:] + after), relay.server) == raw + after
    assert relay.session.seen == [req("forward"), req("forward", n=2)]


# ---- gateway → client ---------------------------------------------------------------------------


def test_gateway_bytes_pass_raw_whatever_they_are() -> None:
    relay = Relay()
    data = server_frame(TEXT, b"a", fin=False) + server_frame(PING, b"") + b"\x00\x05hel"
    [out] = relay.from_server(data)
    assert isinstance(out, commands.SendData) and (out.connection, out.data) == (relay.client, data)


def test_the_connects_answer_is_held_whole_and_rewritten_and_the_rest_passes_as_it_came() -> None:
    relay = Relay()
    relay.session.answer_pending = True
    event, answer, later = server_frame(TEXT, b"event"), server_frame(TEXT, b"answer" + b"x" * 70_000), server_frame(TEXT, b"later")
    stream = event + answer + later
    assert sent(relay.from_server(stream[:3]), relay.client) == b""  # not yet a whole message
    assert sent(relay.from_server(stream[3:len(event) + 5]), relay.client) == event  # whole messages as they stand
    rewritten = server_frame(TEXT, b"rewritten answer" + b"x" * 70_000)
    assert sent(relay.from_server(stream[len(event) + 5:-3]), relay.client) == rewritten + later[:-3]
    assert sent(relay.from_server(stream[-3:]), relay.client) == stream[-3:]  # raw again, mid-frame or not
    assert relay.session.answers == [b"event", b"answer" + b"x" * 70_000]


def test_waiting_for_the_connects_answer_starts_at_the_end_of_a_message_in_flight() -> None:
    relay = Relay()
    passing = server_frame(TEXT, b"y" * 300)
    assert sent(relay.from_server(passing[:10]), relay.client) == passing[:10]
    relay.session.answer_pending = True
    out = relay.from_server(passing[10:] + server_frame(TEXT, b"answer"))
    assert sent(out, relay.client) == passing[10:] + server_frame(TEXT, b"rewritten answer")


def test_more_than_a_whole_gateway_message_ends_the_wait_for_the_connects_answer_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_relay, "_MOST_HELD", 100)
    relay = Relay()
    relay.session.answer_pending = True
    big = server_frame(TEXT, b"y" * 200)
    assert sent(relay.from_server(big[:150]), relay.client) == big[:150]
    assert not relay.session.answer_pending


def test_only_a_text_message_can_be_the_connects_answer() -> None:
    relay = Relay()
    relay.session.answer_pending = True
    other = server_frame(BINARY, b"answer") + server_frame(PING, b"answer")
    assert sent(relay.from_server(other), relay.client) == other and relay.session.answers == []


def test_a_fragmented_message_ends_the_wait_for_the_connects_answer_unread() -> None:
    relay = Relay()
    relay.session.answer_pending = True
    data = server_frame(TEXT, b"answer part", fin=False) + server_frame(CONTINUATION, b" two")
    assert sent(relay.from_server(data), relay.client) == data
    assert not relay.session.answer_pending and relay.session.answers == []


def test_a_reply_waits_for_the_end_of_a_fragmented_gateway_message_split_across_reads() -> None:
    relay = Relay()
    first = server_frame(TEXT, b"part one ", fin=False)
    ping = server_frame(PING, b"")
    last = server_frame(CONTINUATION, b"x" * 300)  # a 2-byte length header
    after = server_frame(TEXT, b"next")
    assert sent(relay.from_server(first + ping + last[:1]), relay.client) == first + ping + last[:1]
    # the reply is decided while the gateway is inside a frame header, between fragments
    assert sent(relay.from_client(client_frame(TEXT, req("reply"))), relay.client) == b""
    assert sent(relay.from_server(last[1:3]), relay.client) == last[1:3]
    assert sent(relay.from_server(last[3:100]), relay.client) == last[3:100]
    out = relay.from_server(last[100:] + after)
    assert sent(out, relay.client) == last[100:] + server_frame(TEXT, b'{"refused":1}') + after


def test_a_reply_waits_between_the_fragments_of_a_gateway_message_and_past_control_frames_there() -> None:
    relay = Relay()
    first, ping = server_frame(TEXT, b"part one ", fin=False), server_frame(PING, b"")
    last = server_frame(CONTINUATION, b"part two")
    assert sent(relay.from_server(first + ping), relay.client) == first + ping
    assert sent(relay.from_client(client_frame(TEXT, req("reply"))), relay.client) == b""
    assert sent(relay.from_server(last), relay.client) == last + server_frame(TEXT, b'{"refused":1}')


def test_a_reply_waits_for_a_gateway_frame_header_split_across_reads() -> None:
    relay = Relay()
    message = server_frame(TEXT, b"next")
    assert sent(relay.from_server(message[:1]), relay.client) == message[:1]
    assert sent(relay.from_client(client_frame(TEXT, req("reply"))), relay.client) == b""
    assert sent(relay.from_server(message[1:]), relay.client) == message[1:] + server_frame(TEXT, b'{"refused":1}')


def test_a_masked_gateway_frame_is_read_past_its_key_all_the_same() -> None:
    """The gateway never masks; were it to, its frames' ends must still be where they are."""
    relay = Relay()
    masked = ws_relay.frame(TEXT, b"x" * 40, masked=True)
    assert sent(relay.from_server(masked[:-1]), relay.client) == masked[:-1]
    assert sent(relay.from_client(client_frame(TEXT, req("reply"))), relay.client) == b""
    assert sent(relay.from_server(masked[-1:]), relay.client) == masked[-1:] + server_frame(TEXT, b'{"refused":1}')
    relay = Relay()
    relay.session.answer_pending = True
    out = relay.from_server(ws_relay.frame(TEXT, b"answer", masked=True))
    assert sent(out, relay.client) == server_frame(TEXT, b"rewritten answer")


def test_a_reply_goes_out_at_once_between_whole_gateway_messages() -> None:
    relay = Relay()
    relay.from_server(server_frame(TEXT, b"whole"))
    out = relay.from_client(client_frame(TEXT, req("reply")))
    assert sent(out, relay.client) == server_frame(TEXT, b'{"refused":1}')


# ---- closing --------------------------------------------------------------------------------------


def test_a_close_verdict_answers_closes_and_ends_both_sides_after_a_linger() -> None:
    relay = Relay()
    out = relay.from_client(client_frame(TEXT, req("close")) + client_frame(TEXT, req("forward")))
    assert sent(out, relay.client) == server_frame(TEXT, b'{"bye":1}') + server_frame(CLOSE, (1008).to_bytes(2, "big") + b"malformed_frame")
    assert not sent(out, relay.server) and relay.session.seen == [req("close")]  # the frame after it is never read
    [wakeup] = [c for c in out if isinstance(c, commands.RequestWakeup)]
    assert relay.from_server(server_frame(TEXT, b"late")) == []  # nothing follows our close frame
    relay.layer._deadline = 0  # the linger has passed
    end = relay.events(events.Wakeup(wakeup))
    assert read_server_bound(sent(end, relay.server)) == [(CLOSE, (1000).to_bytes(2, "big"))]
    assert closed(end, relay.server) and closed(end, relay.client)
    assert isinstance(end[-1], websocket.WebsocketEndHook)
    assert relay.events(events.HookCompleted(end[-1])) == [] and not relay.flow.live
    assert relay.from_client(client_frame(TEXT, req("forward"))) == []  # done: nothing more


def test_a_close_verdict_with_the_gateways_words_closes_with_them() -> None:
    relay = Relay()
    out = relay.from_client(client_frame(TEXT, req("close", close_reason="invalid request frame")))
    assert sent(out, relay.client) == server_frame(TEXT, b'{"bye":1}') + server_frame(CLOSE, (1008).to_bytes(2, "big") + b"invalid request frame")


def test_a_wakeup_before_the_deadline_waits_for_what_is_left() -> None:
    """uvloop's timers may fire a little before time.monotonic() reaches the deadline: the relay
    asks again for the rest instead of leaving both sockets open until someone sends a byte."""
    relay = Relay()
    out = relay.from_client(client_frame(TEXT, req("close")))
    [wakeup] = [c for c in out if isinstance(c, commands.RequestWakeup)]
    relay.layer._deadline = time.monotonic() + 0.5  # the timer fired early
    again = relay.events(events.Wakeup(wakeup))
    [rest] = again
    assert isinstance(rest, commands.RequestWakeup) and 0 < rest.delay <= 0.5
    relay.layer._deadline = 0
    end = relay.events(events.Wakeup(rest))
    assert closed(end, relay.server) and closed(end, relay.client)


def test_a_close_request_from_outside_waits_for_a_gateway_frame_to_end_but_not_forever() -> None:
    relay = Relay()
    relay.from_server(server_frame(BINARY, b"y" * 50)[:20])
    out = relay.events(ws_relay.CloseRequest(relay.flow, (1001, "going away", None)))
    assert not sent(out, relay.client)
    [deadline] = [c for c in out if isinstance(c, commands.RequestWakeup)]
    assert deadline.delay == ws_relay.CLOSE_DEADLINE_SECONDS
    out = relay.from_server(server_frame(BINARY, b"y" * 50)[20:])
    assert sent(out, relay.client)[-14:] == server_frame(CLOSE, (1001).to_bytes(2, "big") + b"going away")

    stuck = Relay()
    stuck.from_server(server_frame(BINARY, b"y" * 50)[:20])
    [deadline] = [c for c in stuck.events(ws_relay.CloseRequest(stuck.flow, (1001, "going away", None)))
                  if isinstance(c, commands.RequestWakeup)]
    stuck.layer._deadline = 0
    end = stuck.events(events.Wakeup(deadline))
    assert not sent(end, stuck.client) and closed(end, stuck.client) and closed(end, stuck.server)


def test_the_clients_close_goes_to_the_gateway_and_is_answered() -> None:
    relay = Relay()
    close = client_frame(CLOSE, (1000).to_bytes(2, "big") + b"bye")
    out = relay.from_client(close)
    assert sent(out, relay.server) == close
    assert sent(out, relay.client) == server_frame(CLOSE, (1000).to_bytes(2, "big"))
    assert closed(out, relay.server) and closed(out, relay.client)
    assert isinstance(out[-1], websocket.WebsocketEndHook) and relay.flow.websocket.closed_by_client


def test_the_gateways_close_reaches_the_client_and_is_answered() -> None:
    relay = Relay()
    close = server_frame(CLOSE, (1001).to_bytes(2, "big"))
    out = relay.from_server(close)
    assert sent(out, relay.client) == close
    assert read_server_bound(sent(out, relay.server)) == [(CLOSE, (1000).to_bytes(2, "big"))]
    assert closed(out, relay.server) and closed(out, relay.client) and isinstance(out[-1], websocket.WebsocketEndHook)


def test_a_socket_closing_without_a_close_frame_closes_the_other_side() -> None:
    relay = Relay()
    out = relay.events(events.ConnectionClosed(relay.client))
    assert read_server_bound(sent(out, relay.server)) == [(CLOSE, (1000).to_bytes(2, "big"))]
    assert closed(out, relay.client) and closed(out, relay.server)

    relay = Relay()
    relay.from_server(server_frame(TEXT, b"z" * 30)[:10])
    out = relay.events(events.ConnectionClosed(relay.server))
    assert not sent(out, relay.client)  # never inside the gateway's frame
    assert closed(out, relay.client) and closed(out, relay.server)


# ---- judgements that wait, and failures ------------------------------------------------------------


async def test_a_judgement_that_waits_holds_every_later_frame_behind_it_in_order() -> None:
    relay = Relay()
    relay.session.gate = asyncio.get_running_loop().create_future()
    before, waiting, behind = (client_frame(TEXT, req("forward", n=n, wait=n == 1)) for n in range(3))
    out = relay.from_client(before + waiting + behind)
    assert sent(out, relay.server) == before  # what was decided already goes on
    [hook] = [c for c in out if isinstance(c, ws_relay.RpcVerdictHook)]
    assert hook.args() == [hook.pending]  # mitmproxy's proxy server takes hooks of one argument
    later = client_frame(TEXT, req("forward", n=3))
    assert relay.from_client(later) == []  # queued behind the pending verdict
    relay.session.gate.set_result(None)
    await hook.pending.finish()
    out = relay.events(events.HookCompleted(hook))
    assert sent(out, relay.server) == waiting + behind + later
    assert [json.loads(s)["n"] for s in relay.session.seen] == [0, 1, 2, 3]


async def test_a_close_asked_for_while_a_judgement_waits_relays_nothing_more() -> None:
    """A reload closes the sessions the old rules judge (4001), but its close request queued behind
    the paused verdict, and the old session's verdicts on the waiting frame and on those read with
    it went to the gateway first (red team)."""
    relay = Relay()
    relay.session.gate = asyncio.get_running_loop().create_future()
    waiting, behind = (client_frame(TEXT, req("forward", n=n, wait=n == 0)) for n in range(2))
    [hook] = [c for c in relay.from_client(waiting + behind) if isinstance(c, ws_relay.RpcVerdictHook)]
    relay.flow.metadata[ws_relay.WS_CLOSING] = True  # as close_websocket marks it, before it asks
    assert relay.events(ws_relay.CloseRequest(relay.flow, (4001, "rules changed", None))) == []  # queued
    relay.session.gate.set_result(None)
    await hook.pending.finish()
    out = relay.events(events.HookCompleted(hook))
    assert not sent(out, relay.server)
    assert close_of(sent(out, relay.client)) == (4001, b"rules changed")
    assert [json.loads(s)["n"] for s in relay.session.seen] == [0]


def test_once_a_close_is_asked_for_nothing_the_client_sends_is_judged_or_relayed() -> None:
    """close_websocket marks the flow before its close request reaches the layer (a reload, a drain,
    a connect timeout): frames read meanwhile must not be judged by rules already gone, nor relayed
    (mutation testing: no test read the mark on a plain read, only behind a waiting verdict)."""
    relay = Relay()
    relay.flow.metadata[ws_relay.WS_CLOSING] = True
    out = relay.from_client(client_frame(TEXT, req("forward")))
    assert not sent(out, relay.server) and relay.session.seen == []


def test_once_a_close_is_asked_for_a_forbidden_frame_does_not_close_in_its_place() -> None:
    """The close asked for (its code and words) is the one the client gets."""
    relay = Relay()
    relay.flow.metadata[ws_relay.WS_CLOSING] = True
    assert relay.from_client(client_frame(TEXT, req("forward"), masked=False)) == []


def test_a_close_already_begun_is_not_begun_again() -> None:
    relay = Relay()
    relay.from_client(client_frame(TEXT, req("close")))
    assert not sent(relay.events(ws_relay.CloseRequest(relay.flow, (4000, "later", None))), relay.client)
    assert not sent(relay.events(events.ConnectionClosed(relay.server)), relay.client)


async def test_what_arrives_while_a_judgement_waits_is_bounded_by_a_messages_limit() -> None:
    """mitmproxy queues it unread, without bound, for as long as the verdict takes (review)."""
    relay = Relay(limit=1000)
    relay.session.gate = asyncio.get_running_loop().create_future()
    waiting = client_frame(TEXT, req("forward", wait=True))
    [hook] = [c for c in relay.from_client(waiting) if isinstance(c, ws_relay.RpcVerdictHook)]
    within = client_frame(TEXT, req("forward", pad="x" * 500))
    assert relay.from_client(within) == [] and relay.from_client(within) == []  # 1,100 bytes: the second is dropped
    assert len(relay.layer._paused_event_queue) == 1
    relay.session.gate.set_result(None)
    await hook.pending.finish()
    out = relay.events(events.HookCompleted(hook))
    assert sent(out, relay.server) == waiting  # the verdict decided before goes on; nothing queued after it
    assert close_of(sent(out, relay.client)) == (1009, b"message too big")


async def test_what_arrives_while_one_judgement_waits_is_not_counted_against_the_next() -> None:
    relay = Relay(limit=1000)
    within = client_frame(TEXT, req("forward", pad="x" * 600))  # twice that is over the limit
    waiting = client_frame(TEXT, req("forward", wait=True))
    for _ in range(2):
        relay.session.gate = asyncio.get_running_loop().create_future()
        [hook] = [c for c in relay.from_client(waiting) if isinstance(c, ws_relay.RpcVerdictHook)]
        assert relay.from_client(within) == []  # queued behind the verdict
        relay.session.gate.set_result(None)
        await hook.pending.finish()
        out = relay.events(events.HookCompleted(hook))
        assert sent(out, relay.server) == waiting + within and not sent(out, relay.client)


async def test_a_failed_judgement_closes_with_1011_and_relays_nothing_unread() -> None:
    relay = Relay()
    errors = INTERNAL_ERRORS._value.get()
    out = relay.from_client(client_frame(TEXT, req("forward", boom=True)) + client_frame(TEXT, req("forward")))
    assert not sent(out, relay.server)
    assert close_of(sent(out, relay.client)) == (1011, b"internal error")
    assert INTERNAL_ERRORS._value.get() == errors + 1

    waits = Relay()
    waits.session.gate = asyncio.get_running_loop().create_future()
    [hook] = [c for c in waits.from_client(client_frame(TEXT, req("forward", wait=True, boom=True)))
              if isinstance(c, ws_relay.RpcVerdictHook)]
    waits.session.gate.set_result(None)
    await hook.pending.finish()
    out = waits.events(events.HookCompleted(hook))
    assert not sent(out, waits.server) and close_of(sent(out, waits.client))[0] == 1011


def test_without_a_session_nothing_is_relayed() -> None:
    relay = Relay()
    relay.session = None  # type: ignore[assignment]
    relay.layer.session = None
    assert relay.from_client(client_frame(TEXT, req("forward"))) == []


# ---- choosing the layer ---------------------------------------------------------------------------


def test_upgraded_flows_get_the_layer_the_factory_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    """HttpStream.flow_done builds `websocket.WebsocketLayer(self.context, self.flow)`."""
    monkeypatch.setattr(websocket.WebsocketLayer, "__new__", websocket.WebsocketLayer.__new__)
    chosen: list[http.HTTPFlow] = []

    def factory(context: Context, flow: http.HTTPFlow) -> layer.Layer | None:
        chosen.append(flow)
        return ws_relay.RpcRelay(context, flow, None) if flow.metadata.get("relay") else None  # type: ignore[arg-type]

    compat.choose_websocket_layer(factory)
    context = Context(tflow.tclient_conn(), options.Options())
    relayed, other = tflow.twebsocketflow(), tflow.twebsocketflow()
    relayed.metadata["relay"] = True
    assert type(websocket.WebsocketLayer(context, relayed)) is ws_relay.RpcRelay
    theirs = websocket.WebsocketLayer(context, other)
    assert type(theirs) is websocket.WebsocketLayer and theirs.flow is other
    assert chosen == [relayed, other]


def test_a_negotiated_extension_keeps_mitmproxys_layer() -> None:
    flow = tflow.twebsocketflow()
    assert ws_relay.extensions(flow) == ""
    flow.response.headers["Sec-WebSocket-Extensions"] = "permessage-deflate"
    assert ws_relay.extensions(flow) == "permessage-deflate"


@pytest.mark.parametrize("reason", ["a" * 58 + "é" * 40, "x" * 200, "short", "€" * 41])
def test_a_close_reason_is_cut_at_a_character_boundary(reason: str) -> None:
    """RFC 6455 wants UTF-8 in a close reason, and the schema's words carry the client's own
    property names: cut mid-character, browsers failed the connection (review)."""
    payload = ws_relay.close_payload(1008, reason)
    assert payload[:2] == (1008).to_bytes(2, "big") and len(payload) <= 122
    text = payload[2:].decode("utf-8")  # raises if cut mid-character
    assert reason.startswith(text) and (text == reason or len(payload[2:]) > 116)
