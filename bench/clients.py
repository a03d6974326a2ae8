"""The benchmarks' own clients: keep-alive HTTP/1.1 and a minimal WebSocket, a few microseconds
per request or message, so that the load takes little of the machine from the servers it measures.
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
from base64 import b64encode

KEEP_ALIVE_SECONDS = 3.0  # reopen a connection idle this long (uvicorn closes them after 5 s)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: Content-Length or chunked answers."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = 0.0

    async def request(
        self, method: str, path: str, token: str, body: bytes = b"", extra: str = ""
    ) -> tuple[int, bytes, float, float]:
        """(status, body, when the request was written, when the answer had been read in full;
        time.monotonic()). `extra`: more header lines, each ending in CRLF."""
        if self._writer is not None and time.monotonic() - self._used > KEEP_ALIVE_SECONDS:
            self.close()  # the server may be closing it
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        assert self._reader is not None
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        )
        sent = time.monotonic()
        self._writer.write(head.encode() + body)
        try:
            raw_head = await self._reader.readuntil(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int((await self._reader.readuntil(b"\r\n")).strip(), 16)
                    chunk = await self._reader.readexactly(size + 2)
                    if size == 0:
                        break
                    chunks.append(chunk[:-2])
                data = b"".join(chunks)
            else:
                data = await self._reader.readexactly(int(headers.get("content-length", "0")))
            done = self._used = time.monotonic()
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, data, sent, done
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class HttpPool:
    """`size` connections, a request waiting for an idle one. `lifo` hands out the most recently
    used first, so that under a light load the others idle out instead of all going stale."""

    def __init__(
        self, port: int, size: int, timeout: float | None = None, lifo: bool = False
    ) -> None:
        self._timeout = timeout
        self._idle: asyncio.Queue[HttpConnection] = asyncio.LifoQueue() if lifo else asyncio.Queue()
        self._all = [HttpConnection(port) for _ in range(size)]
        for connection in self._all:
            self._idle.put_nowait(connection)

    async def request(
        self, method: str, path: str, token: str, body: bytes = b"", extra: str = ""
    ) -> tuple[int, bytes, float, float]:
        """As HttpConnection.request, given up after `timeout` seconds."""
        connection = await self._idle.get()
        try:
            return await asyncio.wait_for(
                connection.request(method, path, token, body, extra), self._timeout
            )
        except BaseException:
            connection.close()
            raise
        finally:
            self._idle.put_nowait(connection)

    def close(self) -> None:
        for connection in self._all:
            connection.close()


class RawSocket(asyncio.Protocol, abc.ABC):
    """A minimal RFC 6455 client (no extensions): the handshake, unmasked frames in, pongs and
    the close frame out. It costs a few microseconds per message where websockets' asyncio
    client costs tens, so the clients take less of the machine's two cores from the servers.

    A subclass takes each message in `message` and settles `opened` (`initial` does for the
    initial data); `dropped` hears that a socket once open was closed by the server or broke.
    """

    def __init__(self, host: str, path: str) -> None:
        self._request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.closing = False  # we are closing it
        self.closed: int | None = None  # it was closed otherwise, with this code
        self.start: int | None = None  # the initial data's position
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False
        self._fragments: list[bytes] = []
        self._close_code: int | None = None

    @abc.abstractmethod
    def message(self, text: bytes, arrived: float) -> None:
        """Each text message and its arrival (time.monotonic()); the first goes on to `initial`."""

    def upgraded(self) -> None:
        """The handshake is through."""

    def dropped(self) -> None:
        """`closed` has just been set."""

    def initial(self, kind: str, position: int) -> None:
        """The first message, which must be the initial data: the socket is open from there."""
        if kind != "initial_data":
            self.opened.set_exception(RuntimeError(f"first message {kind}"))
            return
        self.start = position
        self.opened.set_result(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed ({self._close_code})"))
        elif not self.closing and self.closed is None:
            self.closed = self._close_code or 1006
            self.dropped()
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic()
        buffer = self._buffer
        buffer += data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.opened.set_exception(ConnectionError(status.decode("latin-1")))
                self.abort()
                return
            del buffer[: end + 4]
            self._upgraded = True
            self.upgraded()
        while len(buffer) >= 2:
            length = buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                return
            head = buffer[0]
            payload = bytes(buffer[offset : offset + length])
            del buffer[: offset + length]
            self._frame(head & 0x80, head & 0x0F, payload, arrived)

    def _frame(self, fin: int, opcode: int, payload: bytes, arrived: float) -> None:
        if opcode in (0x0, 0x1, 0x2):  # continuation, text, binary
            self._fragments.append(payload)
            if fin:
                text = b"".join(self._fragments) if len(self._fragments) > 1 else payload
                self._fragments = []
                self.message(text, arrived)
        elif opcode == 0x9:  # ping
            self._send(0xA, payload)
        elif opcode == 0x8:  # close
            self._close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closing:
                self._send(0x8, payload[:2])
            if self._transport is not None:
                self._transport.close()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    async def close(self) -> None:
        self.closing = True
        self._send(0x8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), 10)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.abort()
