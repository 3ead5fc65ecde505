"""A loopback TCP proxy for fault injection between the service and PostgreSQL or Redis.

It runs its own event loop in a thread, so it keeps forwarding while a test blocks (starting a
process, waiting for it). Faults, switchable at any time:

- `latency(seconds)`: every chunk, each way, is held this long before it is forwarded;
- `silence()` / `restore()`: nothing is forwarded and no new connection reaches the service,
  but nothing is closed either: a dependency that stops answering (a hung server, a network
  partition). What was held is delivered on `restore()`;
- `cut()`: every open connection is reset (a crashed proxy, a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.processes import free_port


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections_made = 0
        self._delay = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None

    # --- control, from the test's thread ---------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._run(self._serve())
        return self

    def latency(self, seconds: float) -> None:
        self._delay = seconds

    def silence(self) -> None:
        self._run(self._set_flowing(False))

    def restore(self) -> None:
        self._run(self._set_flowing(True))

    def cut(self) -> None:
        self._run(self._abort_all())

    def close(self) -> None:
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coroutine) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # --- in the proxy's loop ---------------------------------------------------------------

    async def _serve(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._set_flowing(True)
        await self._abort_all()

    async def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        assert self._flowing is not None
        self._writers.add(client_out)
        await self._flowing.wait()  # a silent service accepts no new session either
        try:
            service_in, service_out = await asyncio.open_connection(*self.target)
        except OSError:
            client_out.transport.abort()
            self._writers.discard(client_out)
            return
        self.connections_made += 1
        self._writers.add(service_out)
        await asyncio.gather(
            self._pipe(client_in, service_out),
            self._pipe(service_in, client_out),
            return_exceptions=True,
        )
        for writer in (client_out, service_out):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)  # the injected latency
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()  # one side gone: so is the other
