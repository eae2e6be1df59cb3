"""A real TCP proxy between clients and a MariaDB server that can lose the reply to a COMMIT.

It forwards the MySQL protocol byte for byte, reading the client's side packet by packet
(3-byte length, 1-byte sequence id, payload; a command is a packet of sequence id 0, its first
byte the command: 0x03 COM_QUERY). mysqlclient's `conn.commit()` is `mysql_commit()`, which sends
COM_QUERY "COMMIT" (checked by `log_queries`, which records every query the proxy sees); on MariaDB the
workers also end transactions with a multi-statement whose last statement is COMMIT (storage's
`_execute_together`): both are a COMMIT here.

Armed with a pattern (`lose_commit_reply`), the proxy waits for a connection whose transaction ran a
query matching it; when that connection sends COMMIT, the COMMIT goes to the server, the server's
answer (it committed) is swallowed, and both sides of the connection are closed: the client sees
error 2013 (lost connection) without knowing whether its transaction committed. That is the
ambiguous COMMIT of a network cut at the worst moment. Each arming fires once. With `hold` (an
Event) the cut waits for it: the client waits for its answer meanwhile, while `swallowed` counts
the answers swallowed, so that a test can act between the commit and the client's retry.

`cut()` is a network partition between its clients and the server: every connection through the
proxy is cut and new ones are closed at once, until `mend()`; other clients of the server go on.
"""
import re
import socket
import threading
from typing import List, Optional

COM_QUERY = 0x03
ENDS_TRANSACTION = re.compile(rb"(?:^|;)\s*(COMMIT|ROLLBACK)\s*;?\s*$", re.I)   # alone, or last


def _read_exactly(sock: socket.socket, n: int) -> Optional[bytes]:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class MySQLProxy:
    """Listens on 127.0.0.1:port (a free one), forwards each connection to backend (host, port)."""

    def __init__(self, backend_host: str, backend_port: int):
        self.backend = (backend_host, backend_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.armed: List[re.Pattern] = []   # patterns still to fire, first first
        self.fired: List[bytes] = []        # the query each firing matched
        self.queries: List[bytes] = []      # every query seen, with log_queries
        self.log_queries = False
        self.hold: Optional[threading.Event] = None
        self.swallowed = 0                  # answers to COMMITs swallowed so far (the commits happened)
        self.sockets: List[socket.socket] = []
        self.closed = False
        self.down = False                   # cut(): a partition until mend()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def lose_commit_reply(self, pattern: str) -> None:
        """Lose the reply to the COMMIT of the next transaction that runs a query matching pattern."""
        with self.lock:
            self.armed.append(re.compile(pattern.encode(), re.S))

    def cut(self) -> None:
        """A network partition: every connection through the proxy cut, and new ones closed at once
        (the client's connect fails), until mend()."""
        self.down = True
        with self.lock:
            cut, self.sockets = self.sockets, []
        _shut(*cut)

    def mend(self) -> None:
        self.down = False

    def close(self) -> None:
        self.closed = True
        for s in [self.listener, *self.sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            try:
                server = socket.create_connection(self.backend)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            swallow = threading.Event()
            threading.Thread(target=self._from_server, args=(server, client, swallow), daemon=True).start()
            threading.Thread(target=self._from_client, args=(client, server, swallow), daemon=True).start()

    def _from_server(self, server: socket.socket, client: socket.socket, swallow: threading.Event) -> None:
        """Server to client, raw. Once swallowing, the server's next bytes (its answer to the COMMIT,
        sent after it committed) are dropped and the connection is cut on both sides."""
        try:
            while True:
                data = server.recv(65536)
                if not data:
                    break
                if swallow.is_set():
                    with self.lock:
                        self.swallowed += 1
                    if self.hold is not None:
                        self.hold.wait(60)
                    break
                client.sendall(data)
        except OSError:
            pass
        _shut(client, server)

    def _from_client(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        """Client to server, packet by packet, watching the commands of each transaction."""
        matched: Optional[re.Pattern] = None
        try:
            while True:
                header = _read_exactly(client, 4)
                if header is None:
                    break
                payload = _read_exactly(client, int.from_bytes(header[:3], "little"))
                if payload is None:
                    break
                if header[3] == 0 and payload[:1] == bytes([COM_QUERY]):
                    query = payload[1:]
                    matched = self._watch(query, matched)
                    ends = ENDS_TRANSACTION.search(query)
                    if matched is not None and ends:
                        if ends.group(1).upper() == b"COMMIT" and self._fire(matched):
                            swallow.set()   # before the COMMIT goes: the very answer to it is swallowed
                        matched = None
                server.sendall(header + payload)
        except OSError:
            pass
        if not swallow.is_set():
            _shut(client, server)

    def _watch(self, query: bytes, matched: Optional[re.Pattern]) -> Optional[re.Pattern]:
        with self.lock:
            if self.log_queries:
                self.queries.append(query)
            if matched is None:
                return next((p for p in self.armed if p.search(query)), None)
            return matched

    def _fire(self, pattern: re.Pattern) -> bool:
        with self.lock:
            if pattern not in self.armed:
                return False   # another connection's transaction fired it already
            self.armed.remove(pattern)
            self.fired.append(pattern.pattern)
            return True


def _shut(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass
