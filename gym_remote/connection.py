"""A client connection: connect, say hello, then request/reply with typed errors."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import weakref
from typing import Any, Callable

from gym_remote import __version__, peers
from gym_remote.addresses import Address, connect
from gym_remote.config import ClientConfig
from gym_remote.error_envelope import error_from_wire
from gym_remote.errors import (
    InvalidCall,
    MessageTooLarge,
    ProtocolError,
    RemoteEnvError,
    RemoteTimeout,
    ServerUnavailable,
    SessionClosed,
    SessionExpired,
    TlsError,
    VersionMismatch,
    WorkerCrashed,
    shown,
)
from gym_remote.protocol import (
    PROTOCOL_VERSION,
    MessageReader,
    PeerClosed,
    decode_frame,
    encode_frame,
    send_buffers,
    set_send_timeout,
)
from gym_remote.sharedmem import SharedSegment

__all__ = ["Connection", "tls_context"]

logger = logging.getLogger("gym_remote.client")

# Errors after which the peer has closed (or will close) the connection.
_FATAL_ERRORS = (SessionExpired, ProtocolError, VersionMismatch, WorkerCrashed)
# Every open connection of this process, so that a forked child can let go of them.
_open_connections: weakref.WeakSet[Connection] = weakref.WeakSet()


def tls_context(config: ClientConfig) -> ssl.SSLContext | None:
    """The TLS context ``config``'s ``tls_ca``, ``tls_cert`` and ``tls_key`` make, or None (no TLS).

    Raises:
        ValueError: as ``gym_remote.tls.client_context``.
    """
    if not (config.tls_ca or config.tls_cert or config.tls_key):
        return None
    from gym_remote.tls import client_context

    return client_context(config.tls_ca, config.tls_cert, config.tls_key)


# How long a client waits for a server's reply to its hello (or less: its timeout).
HELLO_REPLY_SECONDS = 10.0


class Connection:
    """One connection to a gym-remote server, and later to the worker of its session.

    Raises from every method: :class:`ServerUnavailable`, :class:`RemoteTimeout`,
    :class:`WorkerCrashed`, :class:`SessionClosed` (once a call was cut off mid-message, or in a
    forked child) or the typed error the peer replied with.
    """

    def __init__(
        self,
        address: Address,
        *,
        timeout: float,
        token: str = "",
        allow_pickle: bool = False,
        max_message_size: int,
        name: str | None = None,
        same_server_as: Connection | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Connects and says hello.

        Args:
            tls: The client's TLS context (``gym_remote.tls.client_context``): a TCP connection
                makes its TLS handshake first (a Unix socket stays plain).
            same_server_as: A connection to the server that named ``address`` as its local
                socket: this one must reach that very server (checked before the token is sent).
        """
        self.address = address
        self.name = name or str(address)  # how messages name the server
        self.timeout = timeout
        self.allow_pickle = allow_pickle
        self.in_session = False
        self.closed = False
        # Why the connection was closed under its user (say, a call interrupted mid-reply).
        self._closed_because = ""
        # Requests whose caller was interrupted (KeyboardInterrupt, say) before their reply began:
        # the replies are read and dropped before the next request, so every reply meets its call.
        self._unanswered = 0
        # Held from a request's send until its reply is read (or left to be dropped), so that a
        # call from another thread meanwhile is refused instead of taking that reply.
        self._in_flight = threading.Lock()
        self._sock: Any = connect(address, timeout)
        self.uses_tls = False
        if tls is not None and address.scheme == "tcp":
            from gym_remote.tls import wrap_client

            self._sock = wrap_client(tls, self._sock, address.host, timeout, self.name)
            self.uses_tls = True
        if same_server_as is not None and not same_server_as.is_served_by(peers.listener_pid(self._sock)):
            self._sock.close()
            raise ServerUnavailable(
                f"{address} does not belong to the server at {same_server_as.name}, which named it"
            )
        set_send_timeout(self._sock, timeout)
        self._reader = MessageReader(self._sock, max_message_size)
        _open_connections.add(self)
        try:
            reply = self._hello(token)
            if not isinstance(reply, dict):
                raise ProtocolError(f"{self.name} answered hello with {shown(reply)}, not a map")
        except BaseException:
            self.close()
            raise
        # Pickle needs this client's own opt-in: a server saying it allows pickle is not enough.
        self.allow_pickle = allow_pickle and reply.get("allow_pickle") is True
        self.server_version = reply.get("server")
        # Where a server reached over loopback TCP also listens, on a Unix socket (or None).
        local_address = reply.get("local_address")
        self.local_address: str | None = local_address if isinstance(local_address, str) else None

    def _hello(self, token: str) -> Any:
        """The server's answer to this client's hello. A server that refuses connections (too
        many pending) writes its error and closes at once, maybe before the hello arrives: the
        error is read all the same."""
        hello = {
            "op": "hello",
            "version": PROTOCOL_VERSION,
            "token": token,
            "allow_pickle": self.allow_pickle,
            "client": f"gym-remote {__version__}",
        }
        cut_short: OSError | None = None
        try:
            send_buffers(self._sock, encode_frame(hello))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError) as error:
            cut_short = error  # what the server said before it closed may still be read
        except (RemoteTimeout, OSError) as error:
            raise self._failure("hello", error) from None
        # A gym-remote server answers a hello at once; another service (an HTTP server waiting
        # for the end of a request line, say) may never answer it.
        wait = min(self.timeout, HELLO_REPLY_SECONDS)
        try:
            frame = self._reader.receive_frame(wait)
        except (RemoteTimeout, ProtocolError, OSError) as error:
            if isinstance(error, RemoteTimeout) and wait < self.timeout:
                self.close()
                raise ProtocolError(
                    f"{self.name} does not answer as a gym-remote server: no reply to the hello "
                    f"within {wait:g} s (another service at that address, or a server too busy to answer)"
                ) from None
            said = isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError)
            failure = self._failure("hello", error if said else cut_short or error)
            if type(failure) is ProtocolError:  # bytes of another protocol (SSH, HTTP, ...)
                failure = ProtocolError(f"{self.name} does not answer as a gym-remote server: {failure}")
            raise failure from None
        return self.result_of("hello", frame)

    def request(self, op: str, **fields: Any) -> Any:
        """Sends ``{"op": op, **fields}`` and returns the reply's result, or raises its error."""
        self.send(op, **fields)
        return self.receive(op)

    def send(self, op: str, **fields: Any) -> None:
        """Sends a request without waiting; :meth:`receive` gets its reply.

        Several connections can be sent to first and received from after, so that their
        workers run at the same time.
        """
        fields["op"] = op
        self._transmit(op, encode_frame(fields, self.allow_pickle), whole=False)

    def receive(self, op: str) -> Any:
        """Receives the reply to the request ``op`` sent last: its result, or its error raised.

        A caller interrupted (by KeyboardInterrupt, say) before the reply began leaves it to be
        dropped before the next request; one interrupted in the middle of it closes the
        connection (its session ends: the next call says so).
        """
        return self.result_of(op, self.receive_frame(op)[1])

    def send_bytes(self, op: str, request: bytes) -> None:
        """Sends a whole request already encoded (a fixed-layout frame) without waiting;
        :meth:`receive_frame` gets its reply. Interruptions as in :meth:`receive`."""
        self._transmit(op, request, whole=True)

    def receive_frame(self, op: str, whole: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
        """Receives the reply frame to the request ``op`` sent last, undecoded: ``(taken, None)``
        where ``whole``, given the first bytes that arrived, took the reply whole (returned
        other than None); else ``(None, (header, data, fixed))``. Interruptions as in
        :meth:`receive`."""
        waiting = True
        try:
            chunk = self._reader.receive_chunk(self.timeout)
            waiting = False
            taken = None if whole is None else whole(chunk)
            if taken is not None:
                return taken, None
            return None, self._reader.receive_frame(self.timeout, chunk=chunk)
        except (RemoteTimeout, ProtocolError, OSError) as error:
            raise self._failure(op, error) from None
        except BaseException:
            self._interrupted(op, waiting)
            raise
        finally:
            self._in_flight.release()

    def _transmit(self, op: str, payload: Any, whole: bool) -> None:
        """Sends the request ``op``: ``payload`` is its bytes (``whole``) or a frame's buffers."""
        if self.closed or self._unanswered or not self._in_flight.acquire(False):
            self._claim(op)
        try:
            if whole:
                self._sock.sendall(payload)
            else:
                send_buffers(self._sock, payload)
        except (RemoteTimeout, ProtocolError, OSError) as error:
            self._in_flight.release()
            raise self._farewell(op, error) or self._failure(op, error) from None
        except BaseException:
            self._in_flight.release()
            self._interrupted(op, waiting=False)
            raise

    def _farewell(self, op: str, error: BaseException) -> RemoteEnvError | None:
        """After a send refused because the peer closed: the error it said before closing (a
        worker ending an idle session says SessionExpired), or None. A Unix socket refuses the
        send at once, where TCP takes it and the reply is read as usual; the farewell is in the
        receive buffer either way, so reading it does not wait."""
        if not isinstance(error, (BrokenPipeError, ConnectionResetError)) or self.closed:
            return None
        try:
            frame = self._reader.receive_frame(0.0)
            self.result_of(op, frame)
        except RemoteEnvError as farewell:
            if isinstance(farewell, (ProtocolError, RemoteTimeout)):
                return None  # nothing (whole) was there: the usual failure says what happened
            self.close()
            return farewell
        except OSError:
            return None
        return None

    @property
    def settled(self) -> bool:
        """Whether every request sent has had its reply (none was left by an interrupted call)."""
        return not self._unanswered

    def abandon_reply(self) -> None:
        """Leaves the reply to the request in flight unread: it is dropped before the next request."""
        self._unanswered += 1
        self._in_flight.release()

    def _interrupted(self, op: str, waiting: bool) -> None:
        """Keeps requests and replies paired after ``op`` was interrupted by an exception of the
        caller's (KeyboardInterrupt, say) while ``waiting`` for its reply or not: a reply not yet
        begun is dropped later; a request or reply cut in the middle leaves the stream
        unreadable, so the connection closes."""
        if waiting and self._reader.nothing_taken():
            self._unanswered += 1  # the receive that was interrupted lets go of _in_flight
            return
        self.close()
        self._closed_because = f"a {op} call was interrupted in the middle of its request or reply"

    def _disown(self, owner_pid: int) -> None:
        """In a child forked from ``owner_pid``: lets go of this copy of the connection, saying
        nothing to the worker, so that the parent's session goes on undisturbed (a request
        from here would take a reply meant for the parent, and ``close`` would end its session)."""
        if not self.closed:
            self.close()  # this process's copies only: the socket stays open in the parent
            self._closed_because = (
                f"it belongs to process {owner_pid}, which this process was forked from; "
                "make a new env in this process"
            )

    def _claim(self, op: str) -> None:
        """Before ``op`` is sent, where the usual case (open, nothing left unanswered, nothing in
        flight: the caller took ``_in_flight``) does not hold: raises if the connection is closed
        or another call (from another thread) is in flight; else takes ``_in_flight`` and reads
        and drops the replies left by interrupted calls."""
        if self.closed:
            if self._closed_because:
                raise SessionClosed(f"the connection to {self.name} is closed: {self._closed_because}")
            raise ServerUnavailable(f"the connection to {self.name} is closed")
        if not self._in_flight.acquire(False):
            raise InvalidCall(
                f"{op} while another call on the same env (at {self.name}) waits for its reply: "
                "an env serves one thread at a time"
            )
        if not self._unanswered:
            return
        try:
            while self._unanswered:
                self._reader.receive_frame(self.timeout)
                self._unanswered -= 1
        except (RemoteTimeout, ProtocolError, OSError) as error:
            self._in_flight.release()
            raise self._failure(f"{op} (reading the reply of an interrupted call)", error) from None
        except BaseException:
            self._in_flight.release()
            self._interrupted(op, waiting=False)
            raise

    def result_of(self, op: str, frame: tuple[Any, Any, bool]) -> Any:
        """The result a MessagePack reply frame to ``op`` carries, or its error raised (a
        fixed-layout frame, or one that does not decode, closes the connection)."""
        if frame[2]:
            self.close()
            raise ProtocolError(f"a fixed-layout frame in reply to {op}")
        try:
            reply = decode_frame(frame[0], frame[1], self.allow_pickle)
        except ProtocolError:
            self.close()
            raise
        if not isinstance(reply, dict):
            self.close()
            raise ProtocolError(f"reply to {op} is not a map")
        if "error" in reply:
            error = error_from_wire(reply["error"])
            if isinstance(error, WorkerCrashed):  # the server's word on a worker that died
                error = error.renamed(f"{error.message} [{op} at {self.name}]")
            if isinstance(error, _FATAL_ERRORS):
                self.close()
            raise error
        return reply.get("ok")

    def use_shared_memory(self, offer: Any) -> bool:
        """Takes large replies through the segment the worker offered from now on, unless it
        cannot be opened from here or is not a segment of that very worker; says which."""
        try:
            segment = SharedSegment.attach(offer, self._sock)
        except (OSError, ValueError) as error:
            logger.debug(
                "shared memory offered by %s not usable here (%s): using the socket", self.name, error
            )
            return False
        try:
            self.request("use_shared_memory")
        except BaseException:
            segment.close()
            raise
        self._reader.segment = segment
        return True

    @property
    def uses_shared_memory(self) -> bool:
        """Whether large replies come through a shared memory segment."""
        return self._reader.segment is not None

    def is_served_by(self, pid: int | None) -> bool:
        """Whether process ``pid`` on this host holds the server's end of this connection."""
        return pid is not None and peers.holds_far_end(self._sock, pid)

    def fileno(self) -> int:
        """The socket's file descriptor, for waiting on several connections with ``selectors``."""
        return self._sock.fileno()

    def _failure(self, op: str, error: BaseException) -> BaseException:
        """Closes the connection and says what a socket failure during ``op`` means, as a typed error."""
        self.close()
        # The kernel's send timeout (SO_SNDTIMEO) shows as EAGAIN.
        if isinstance(error, (RemoteTimeout, BlockingIOError, socket.timeout)):
            return RemoteTimeout(
                f"{op} got no reply from {self.name} within {self.timeout:g} s; the session is "
                "closed (raise timeout=... for slow envs)"
            )
        if isinstance(error, MessageTooLarge):
            return MessageTooLarge(f"reply to {op}: {error.message}")
        if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError):
            from gym_remote.tls import failure_reason

            return TlsError(f"{op} at {self.name}: {failure_reason(error)}")
        if isinstance(error, ProtocolError) and not isinstance(error, PeerClosed):
            return error
        return self._gone(op, error)

    def _gone(self, op: str, error: BaseException) -> RemoteEnvError:
        if self.in_session:
            return WorkerCrashed(
                f"the worker serving this session at {self.name} ended during {op} (it crashed, "
                f"was killed or ran out of memory, or its server stopped: see the server's log) [{error}]"
            )
        return ServerUnavailable(f"the server at {self.name} closed the connection during {op} [{error}]")

    def close(self) -> None:
        """Closes the socket; the worker sees end-of-file and ends the session."""
        if not self.closed:
            self.closed = True
            _open_connections.discard(self)
            self._sock.close()
            if self._reader.segment is not None:
                self._reader.segment.close()
                self._reader.segment = None


def _disown_inherited_connections() -> None:
    """Runs in every forked child (``os.register_at_fork``)."""
    parent = os.getppid()
    for connection in list(_open_connections):
        connection._disown(parent)


os.register_at_fork(after_in_child=_disown_inherited_connections)
