"""The agent's HTTP client (router_agent/http.py, http_wire.py) against a raw server on
127.0.0.1 that writes exactly the bytes each test gives it: keep-alive and the pool, every
body framing, compression, interim answers, broken and hostile answers, cancellation, TLS.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from router_agent import http_wire
from router_agent.http import HttpClient, InvalidURL
from router_agent.http_wire import ResponseError

Responder = Callable[["Request", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Request:
    connection: int  # which connection it came on (1, 2, ...)
    head: bytes
    body: bytes


@dataclass
class RawServer:
    """Reads each request (head and Content-Length body) and lets ``respond`` write the answer."""

    respond: Responder
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections the client closed (EOF seen by the server)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = Request(number, head, await reader.readexactly(length))
                self.requests.append(request)
                self.received.set()
                await self.respond(request, writer)
                if writer.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed += 1
        finally:
            writer.close()

    def url(self, path: str = "/v1/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Responder], Awaitable[RawServer]]]:
    servers: list[asyncio.Server] = []

    async def start(respond: Responder) -> RawServer:
        raw = RawServer(respond)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        raw.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return raw

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient()
    yield http
    await http.close()


def answer(body: bytes = b'{"ok":true}', status: str = "200 OK", headers: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode() + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def writes(data: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(data)
    await writer.drain()


def replying(data: bytes) -> Responder:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(data, writer)

    return respond


async def until(condition: Callable[[], bool], turns: int = 10_000) -> None:
    """Let the loop run until ``condition`` holds (each turn handles whatever I/O is ready)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


# ------------------------------------------------------------------ requests and the pool


async def test_a_post_sends_one_well_formed_request(serve, client: HttpClient) -> None:
    server = await serve(replying(answer()))
    result = await client.post(server.url("/v1/chat/completions?x=1"), b'{"a":1}',
                               {"content-type": "application/json", "authorization": "Bearer k"})
    assert (result.status, result.body) == (200, b'{"ok":true}')
    [request] = server.requests
    lines = request.head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "Content-Length: 7" in lines and "content-type: application/json" in lines
    assert "authorization: Bearer k" in lines
    assert request.body == b'{"a":1}'


async def test_a_head_built_once_still_carries_each_calls_length_and_headers(serve, client: HttpClient) -> None:
    """Heads are built once per (method, URL, headers): the body's length is each call's own,
    and a changed header (a rotated key) is a new head."""
    server = await serve(replying(answer()))
    for body, key in ((b"{}", "k1"), (b'{"a":12}', "k1"), (b'{"b":1}', "k2")):
        assert (await client.post(server.url(), body, {"authorization": f"Bearer {key}"})).status == 200
    heads = [r.head.decode().split("\r\n") for r in server.requests]
    assert [r.body for r in server.requests] == [b"{}", b'{"a":12}', b'{"b":1}']
    assert ["Content-Length: 2" in h for h in heads] == [True, False, False]
    assert "Content-Length: 8" in heads[1] and "Content-Length: 7" in heads[2]
    assert ["authorization: Bearer k2" in h for h in heads] == [False, False, True]
    for _ in range(2):  # a refused header is refused every time, never remembered as sendable
        with pytest.raises(ValueError, match="cannot be sent"):
            await client.post(server.url(), b"{}", {"x-bad": "a\r\nb"})
    assert len(server.requests) == 3


async def test_keep_alive_reuses_one_connection(serve, client: HttpClient) -> None:
    server = await serve(replying(answer()))
    for _ in range(5):
        assert (await client.post(server.url(), b"{}", {})).status == 200
    assert (await client.get(server.url(), {})).status == 200
    assert server.connections == 1 and len(server.requests) == 6
    assert server.requests[-1].head.startswith(b"GET /v1/x HTTP/1.1\r\n")


async def test_calls_in_flight_together_each_get_a_connection_then_share_them(serve, client: HttpClient) -> None:
    release = asyncio.Event()

    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        if len(server.requests) == 2:
            release.set()
        await release.wait()  # both calls are in flight before either is answered
        await writes(answer(), writer)

    server = await serve(respond)
    results = await asyncio.gather(*(client.post(server.url(), b"{}", {}) for _ in range(2)))
    assert [r.status for r in results] == [200, 200] and server.connections == 2
    results = await asyncio.gather(*(client.post(server.url(), b"{}", {}) for _ in range(2)))
    assert [r.status for r in results] == [200, 200] and server.connections == 2


async def test_an_answer_with_connection_close_is_not_reused(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(answer(headers="Connection: close\r\n"), writer)
        writer.close()

    server = await serve(respond)
    for _ in range(3):
        assert (await client.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 3


async def test_an_idle_connection_the_server_closed_is_replaced(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(answer(), writer)
        if request.connection == 1:
            writer.close()  # a keep-alive timeout on the server's side, after the answer

    server = await serve(respond)
    assert (await client.post(server.url(), b"{}", {})).status == 200
    await until(lambda: client.connections == 0)  # the client saw the close while idle
    assert (await client.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


# ------------------------------------------------------------------ body framing and encodings


async def test_a_chunked_answer_is_read_whole(serve, client: HttpClient) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = await serve(replying(head + chunked(b'{"a":', b'"b"}')))
    assert (await client.post(server.url(), b"{}", {})).body == b'{"a":"b"}'
    assert (await client.post(server.url(), b"{}", {})).body == b'{"a":"b"}'
    assert server.connections == 1  # chunked framing ends the answer, not the connection


async def test_a_stream_hands_over_each_chunk_as_it_arrives(serve, client: HttpClient) -> None:
    first_read = asyncio.Event()

    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"5\r\nhello\r\n", writer)
        await first_read.wait()  # the second chunk is sent only once the first was handed over
        await writes(b"6\r\n world\r\n0\r\n\r\n", writer)

    server = await serve(respond)
    chunks = []
    async with client.posting(server.url(), b"{}", {}) as response:
        assert response.status == 200
        async for chunk in response:
            chunks.append(chunk)
            first_read.set()
    assert chunks == [b"hello", b" world"]


async def test_an_answer_framed_by_the_end_of_the_connection_is_read_whole(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + b'{"til":"eof"}', writer)
        writer.close()

    server = await serve(respond)
    assert (await client.post(server.url(), b"{}", {})).body == b'{"til":"eof"}'
    assert (await client.post(server.url(), b"{}", {})).body == b'{"til":"eof"}'
    assert server.connections == 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_decompressed_whole_and_streamed(serve, client: HttpClient, encoding) -> None:
    body = b'{"content":"' + b"compressible " * 500 + b'"}'
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    server = await serve(replying(head + chunked(packed[:40], packed[40:])))
    assert (await client.post(server.url(), b"{}", {})).body == body
    async with client.posting(server.url(), b"{}", {}) as response:
        assert b"".join([chunk async for chunk in response]) == body
    assert b"Accept-Encoding: gzip, deflate" in server.requests[0].head


async def test_an_encoding_that_was_not_asked_for_is_refused(serve, client: HttpClient) -> None:
    server = await serve(replying(answer(b"\x00\x01", headers="Content-Encoding: br\r\n")))
    with pytest.raises(ResponseError, match="encoding that was not asked for"):
        await client.post(server.url(), b"{}", {})


async def test_interim_answers_are_skipped(serve, client: HttpClient) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    server = await serve(replying(interim + answer(b"final", headers="X-Mine: 1\r\n")))
    result = await client.post(server.url(), b"{}", {})
    assert (result.status, result.body) == (200, b"final")
    assert "link" not in result.headers and result.headers["x-mine"] == "1"


async def test_header_names_are_lower_case_and_repeats_are_joined(serve, client: HttpClient) -> None:
    server = await serve(replying(answer(headers="Retry-After: 3\r\nX-Tag: a\r\nx-tag: b\r\n")))
    result = await client.post(server.url(), b"{}", {})
    assert result.headers["retry-after"] == "3" and result.headers["x-tag"] == "a, b"


# ------------------------------------------------------------------ broken and hostile answers


async def test_a_malformed_answer_is_a_response_error_and_the_connection_is_dropped(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(b"NOT HTTP AT ALL\r\n\r\n" if len(server.requests) == 1 else answer(), writer)

    server = await serve(respond)
    with pytest.raises(ResponseError, match="not valid HTTP"):
        await client.post(server.url(), b"{}", {})
    assert (await client.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2


async def test_an_answer_cut_short_is_a_response_error(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"only part", writer)
        writer.close()

    server = await serve(respond)
    with pytest.raises(ResponseError, match="before its answer was whole"):
        await client.post(server.url(), b"{}", {})
    async with client.posting(server.url(), b"{}", {}) as response:
        with pytest.raises(ResponseError, match="before its answer was whole"):
            assert await anext(response) == b"only part"  # what arrived comes first
            await anext(response)


async def test_a_connection_closed_before_any_answer_is_a_response_error(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await serve(respond)
    with pytest.raises(ResponseError):
        await client.post(server.url(), b"{}", {})


async def test_an_answer_larger_than_the_limit_is_refused(serve, client: HttpClient, monkeypatch) -> None:
    monkeypatch.setattr(http_wire, "MAX_BODY_BYTES", 1000)
    server = await serve(replying(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*[b"x" * 300] * 5)))
    with pytest.raises(ResponseError, match="larger than"):
        await client.post(server.url(), b"{}", {})


async def test_a_stream_larger_than_the_buffer_pauses_and_arrives_whole(serve, client: HttpClient, monkeypatch) -> None:
    monkeypatch.setattr(http_wire, "STREAM_HIGH_WATER", 1000)
    parts = [bytes([65 + i % 26]) * 700 for i in range(200)]
    server = await serve(replying(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(*parts)))
    async with client.posting(server.url(), b"{}", {}) as response:
        received = []
        async for chunk in response:
            received.append(chunk)
            await asyncio.sleep(0)  # a slow reader: the socket fills the buffer meanwhile
    assert b"".join(received) == b"".join(parts)
    assert (await client.post(server.url(), b"{}", {})).status == 200  # reading resumed cleanly


async def test_bytes_sent_to_an_idle_connection_drop_it(serve, client: HttpClient) -> None:
    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        await writes(answer() + (answer(b"unasked") if request.connection == 1 else b""), writer)

    server = await serve(respond)
    assert (await client.post(server.url(), b"{}", {})).body == b'{"ok":true}'
    await until(lambda: client.connections == 0)
    assert (await client.post(server.url(), b"{}", {})).body == b'{"ok":true}'
    assert server.connections == 2


async def test_an_answer_left_unread_closes_its_connection(serve, client: HttpClient) -> None:
    server = await serve(replying(answer(b"x" * 10)))
    async with client.posting(server.url(), b"{}", {}) as response:
        assert response.status == 200
    assert (await client.post(server.url(), b"{}", {})).status == 200
    assert server.connections in (1, 2)  # reused only if the whole answer had already arrived


@pytest.mark.parametrize("headers", [
    {"x-bad": "a\r\nX-Injected: 1"}, {"x-bad": "a\nb"}, {"x-bad\r\nX-Injected": "1"}, {"x-bad": "a\0"},
    {"x:bad": "1"},
])
async def test_a_header_that_would_split_the_request_is_refused(serve, client: HttpClient, headers) -> None:
    server = await serve(replying(answer()))
    with pytest.raises(ValueError, match="cannot be sent"):
        await client.post(server.url(), b"{}", headers)
    assert server.requests == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "http://user:pw@127.0.0.1/x", "http:///x", "http://[::1/x"])
async def test_a_url_the_client_cannot_call_is_refused(client: HttpClient, url) -> None:
    with pytest.raises(InvalidURL):
        await client.post(url, b"{}", {})


# ------------------------------------------------------------------ cancellation and close


async def test_a_cancelled_call_closes_its_connection_and_the_next_one_works(serve, client: HttpClient) -> None:
    hold = asyncio.Event()

    async def respond(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.connection == 1:
            await hold.wait()  # never answers the first connection's request
        await writes(answer(), writer)

    server = await serve(respond)
    call = asyncio.ensure_future(client.post(server.url(), b"{}", {}))
    await server.received.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert client.connections == 0
    assert (await client.post(server.url(), b"{}", {})).status == 200
    assert server.connections == 2
    hold.set()


async def test_close_ends_calls_in_flight(serve) -> None:
    http = HttpClient()
    server = await serve(lambda request, writer: asyncio.Event().wait())
    call = asyncio.ensure_future(http.post(server.url(), b"{}", {}))
    await server.received.wait()
    await http.close()
    with pytest.raises(ResponseError):
        await call


async def test_the_read_timeout_fails_a_silent_upstream(serve) -> None:
    http = HttpClient(read_timeout_s=0.05)
    server = await serve(lambda request, writer: asyncio.Event().wait())
    try:
        with pytest.raises(TimeoutError):
            await http.post(server.url(), b"{}", {})
    finally:
        await http.close()


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


async def tls_server(authority: trustme.CA, name: str) -> tuple[asyncio.Server, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(context)
    raw = RawServer(replying(answer(b"secure")))
    server = await asyncio.start_server(raw.handle, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def resolve_to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


async def test_https_checks_the_certificate_against_the_name_in_the_url(authority) -> None:
    server, port = await tls_server(authority, "api.example.test")
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    good = HttpClient(resolver=resolve_to_loopback, tls=trusting)
    untrusting = HttpClient(resolver=resolve_to_loopback)
    try:
        result = await good.post(f"https://api.example.test:{port}/v1", b"{}", {})
        assert (result.status, result.body) == (200, b"secure")
        with pytest.raises(ssl.SSLCertVerificationError):  # the name is not the certificate's
            await good.post(f"https://other.example.test:{port}/v1", b"{}", {})
        with pytest.raises(ssl.SSLCertVerificationError):  # an authority the system does not trust
            await untrusting.post(f"https://api.example.test:{port}/v1", b"{}", {})
    finally:
        await good.close()
        await untrusting.close()
        server.close()
