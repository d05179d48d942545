"""A fault injector: a real TCP proxy that can cut connections after N bytes.

Dropping a connection in the middle of a blob cannot be provoked with the registry alone; this proxy
forwards to it unchanged until armed, counts the bytes it delivers, and then cuts every connection
after `cut_after` downstream bytes, exactly like a network that drops mid-download. It can also make
the network slow (`rate`), to catch a transfer in the middle. It works at the TCP level (no HTTP
parsing), so the client sees a genuine short read on a keep-alive connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

_CHUNK = 64 * 1024


class _Connection:
    """One proxied client connection: two pump threads, one per direction."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.downstream_sent = 0  # bytes delivered since `cut_after` was last set (this connection)
        self._arming = proxy._arming
        self._open_directions = 2
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True,
                             name="faultproxy-up"),
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True,
                             name="faultproxy-down"),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        """Copy bytes until EOF (propagated as a half-close), an error, or the cut (which kills both ways)."""
        cut = False
        try:
            while True:
                data = source.recv(self.proxy._recv_size() if downstream else _CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    break
                if downstream:
                    limit, arming = self.proxy._armed()
                    if arming != self._arming:  # re-armed: the budget starts again for open connections too
                        self._arming, self.downstream_sent = arming, 0
                    if limit is not None and self.downstream_sent + len(data) >= limit:
                        data = data[: max(0, limit - self.downstream_sent)]
                        cut = True
                    self.downstream_sent += len(data)
                    self.proxy._count(len(data))
                if data:
                    sink.sendall(data)
                    if downstream:
                        self.proxy._pace(len(data))
                if cut:
                    break
        except OSError:
            cut = True  # a reset on one side is passed on as an abrupt close of the other
        finally:
            self._finish(abort=cut)

    def _finish(self, abort: bool) -> None:
        with self._lock:
            self._open_directions -= 1
            done = self._open_directions == 0
        if abort:
            self.shutdown()
        if abort or done:
            self.close()

    def shutdown(self) -> None:
        """Wake both pump threads: shutdown() interrupts a blocked recv(), close() alone does not."""
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.close()
        self.proxy._forget(self)


class FaultProxy:
    """Fault injector: a TCP proxy on 127.0.0.1 in front of `target` ("host:port").

    `bytes_downstream` counts the bytes delivered from upstream to clients (over all connections; set
    it to 0 or call `reset_counters()` between phases of a test). Set `cut_after` to N (at any time) and
    every connection — new ones and open keep-alive ones alike — is closed once it has delivered N more
    bytes downstream (counted from that assignment; response headers count too); set it back to None to
    let transfers through again. Set `rate` to N and each connection delivers about N bytes a second
    downstream, in pieces of N/64 bytes (None, the default: full speed). stop() closes the listener and
    all connections and joins every thread.
    """

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self._cut_after: int | None = None
        self._arming = 0
        self.bytes_downstream = 0
        self.connections_accepted = 0
        self.rate: int | None = None
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._server.settimeout(0.1)
        self.port: int = self._server.getsockname()[1]
        self._stopping = threading.Event()
        self._connections: set[_Connection] = set()
        self._finished_threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="faultproxy-accept")

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, to use in place of the target's host in a model reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def cut_after(self) -> int | None:
        """Downstream bytes each connection may still deliver before it is cut; None: never cut."""
        return self._cut_after

    @cut_after.setter
    def cut_after(self, value: int | None) -> None:
        if value is not None and value < 0:
            raise ValueError("cut_after must be >= 0 or None")
        with self._lock:
            self._cut_after = value
            self._arming += 1

    def _armed(self) -> tuple[int | None, int]:
        """The current limit and its arming generation, read together."""
        with self._lock:
            return self._cut_after, self._arming

    def reset_counters(self) -> None:
        """Start counting downstream bytes from zero again."""
        with self._lock:
            self.bytes_downstream = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection and wait for all threads to end."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            connections = list(self._connections)
            threads = self._finished_threads + [t for c in connections for t in c.threads]
            self._finished_threads = []
        for conn in connections:
            conn.shutdown()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=5)
        for conn in connections:
            conn.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # target down: the client sees a closed connection, as it would
                continue
            upstream.settimeout(None)
            conn = _Connection(self, client, upstream)
            with self._lock:
                self.connections_accepted += 1
                self._connections.add(conn)
            conn.start()

    def _recv_size(self) -> int:
        """How much one downstream step forwards: small pieces when throttled, so the pace is smooth."""
        rate = self.rate
        return max(1024, min(_CHUNK, rate // 64)) if rate else _CHUNK

    def _pace(self, n: int) -> None:
        """Wait as long as `n` bytes take at `rate`."""
        rate = self.rate
        if rate:
            time.sleep(n / rate)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_downstream += n

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.discard(conn)
                # Keep the threads of finished connections only while they may still be running.
                self._finished_threads = [t for t in self._finished_threads if t.is_alive()]
                self._finished_threads.extend(t for t in conn.threads if t.is_alive())
