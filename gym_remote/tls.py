"""TLS for links that leave the host: contexts from certificate files, a client's TLS stream
with the same deadlines as a plain socket, and the server's terminator, which ends TLS in the
server and relays plain bytes to and from the session's worker.

Why the server ends TLS, not the worker: a TLS session's state lives in the process that made
the handshake, so it cannot travel to a worker with the socket's file descriptor. The worker
could end TLS itself after a plain start, but then the start (hello, token, make) would travel
in clear, or need a second handshake and a ticket tying the two together; and every worker (a
simulator's interpreter, running a simulator's code) would hold the server's private key. With
the relay, the key stays in the server, the worker speaks the same plain protocol on a socket
pair as it does everywhere, and the cost is a copy through the server per message, small beside
a network's round trip and TLS's own work (``benchmarks/scale.py`` measures it). Unix sockets and
the local socket a server offers clients on its own host stay plain.
"""

from __future__ import annotations

import select
import selectors
import socket
import ssl
import threading
from typing import Any, Iterable

from gym_remote.errors import TlsError
from gym_remote.protocol import byte_view, timeval, timeval_seconds

__all__ = [
    "server_context",
    "client_context",
    "wrap_client",
    "failure_reason",
    "TlsSocket",
    "TlsTerminator",
    "TLS_HANDSHAKE_BYTE",
]

# The first byte of every TLS connection (a handshake record): what tells TLS from gym-remote's frames.
TLS_HANDSHAKE_BYTE = 0x16


def server_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """A server's TLS context: its certificate chain and key, and with ``client_ca`` mutual TLS
    (clients must show a certificate that CA signed).

    Raises:
        ValueError: a file is missing or not a certificate or key; names which.
    """
    if not cert or not key:
        raise ValueError("TLS needs both --tls-cert and --tls-key (PEM files)")
    context = _context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(context, cert, key, "--tls-cert", "--tls-key")
    if client_ca:
        _load_ca(context, client_ca, "--tls-client-ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext | None:
    """A client's TLS context trusting the CA certificates in ``ca`` (and showing ``cert`` and
    ``key`` to servers that ask for one), or None where ``ca`` is empty: no TLS.

    Raises:
        ValueError: a certificate without its key, or one without ``ca``; a file that is missing
            or not what it should be.
    """
    if not ca:
        if cert or key:
            raise ValueError("tls_cert and tls_key need tls_ca: the CA that signed the server's certificate")
        return None
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs both tls_cert and tls_key (PEM files)")
    context = _context(ssl.PROTOCOL_TLS_CLIENT)  # checks the certificate and the host name
    _load_ca(context, ca, "tls_ca")
    if cert:
        _load_chain(context, cert, key, "tls_cert", "tls_key")
    return context


def _context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # As Python 3.13's default contexts do: certificates must be well formed (key usage, AKI).
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str, cert_option: str, key_option: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as error:
        raise ValueError(f"{cert_option} / {key_option}: no such file {error.filename or cert}") from None
    except ssl.SSLError as error:
        raise ValueError(
            f"{cert_option} {cert} / {key_option} {key}: not a PEM certificate and its key ({error.reason})"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: str, option: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise ValueError(f"{option}: no such file {ca}") from None
    except ssl.SSLError as error:
        raise ValueError(f"{option} {ca}: not a PEM CA certificate ({error.reason})") from None


def wrap_client(
    context: ssl.SSLContext, sock: socket.socket, host: str, timeout: float, name: str
) -> TlsSocket:
    """The TLS stream over a client's connected ``sock``, its handshake done within ``timeout``.

    Raises:
        TlsError: the handshake failed: the server's certificate is not trusted or not for
            ``host``, or the server does not speak TLS.
    """
    sock.settimeout(timeout)
    try:
        stream = context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as error:
        sock.close()
        raise TlsError(
            f"the certificate of {name} is not trusted ({error.verify_message}): tls_ca must be the CA "
            "that signed it, and the certificate must name the host the address gives"
        ) from None
    except ssl.SSLError as error:
        sock.close()
        if "ALERT" in _reason(error).upper():  # a TLS server that refused this client
            raise TlsError(f"{name}: {failure_reason(error)}") from None
        raise _not_tls(name, error) from None
    except (ConnectionResetError, socket.timeout) as error:
        sock.close()
        raise _not_tls(name, error) from None
    return TlsSocket(stream)


def _not_tls(name: str, error: BaseException) -> TlsError:
    return TlsError(
        f"no TLS handshake with {name} ({_reason(error)}): a server started without --tls-cert "
        "speaks plain gym-remote; drop tls_ca (GYM_REMOTE_TLS_CA) for it"
    )


def failure_reason(error: ssl.SSLError) -> str:
    """What a TLS error after the handshake means, in words: most often the server refusing a
    client that showed no certificate, or one its CA did not sign (TLS 1.3 says so only then)."""
    reason = _reason(error)
    if "CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason.upper():
        return (
            f"the server refused this client's certificate ({reason}): it asks for one its CA signed; "
            "pass tls_cert and tls_key (GYM_REMOTE_TLS_CERT, GYM_REMOTE_TLS_KEY)"
        )
    return f"TLS failed ({reason})"


def _reason(error: BaseException) -> str:
    return getattr(error, "reason", None) or str(error) or type(error).__name__


class TlsSocket:
    """An ``ssl.SSLSocket`` that takes the socket calls gym-remote's framing makes.

    The framing sets deadlines with the kernel's ``SO_RCVTIMEO`` / ``SO_SNDTIMEO``, which an
    SSL socket in blocking mode never reports (OpenSSL retries the read); here they become the
    socket's own timeout, set before each read or write. ``sendmsg`` sends the buffers joined:
    TLS copies every byte into records anyway. Other attributes are the SSL socket's.

    Selecting on :meth:`fileno` stays right because replies pair with requests: bytes TLS has
    decrypted but not handed on are the rest of the reply being read, never the next one.
    """

    def __init__(self, stream: ssl.SSLSocket) -> None:
        self._stream = stream
        self._receive_timeout: float | None = None
        self._send_timeout: float | None = None
        self._timeout_set: float | None = stream.gettimeout()

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        """As ``socket.setsockopt``; the receive and send timeouts are kept here."""
        if level == socket.SOL_SOCKET and option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            seconds = timeval_seconds(value)
            if option == socket.SO_RCVTIMEO:
                self._receive_timeout = seconds
            else:
                self._send_timeout = seconds
        else:
            self._stream.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, size: int = 0) -> Any:
        """As ``socket.getsockopt``; the send timeout is the one kept here."""
        if level == socket.SOL_SOCKET and option == socket.SO_SNDTIMEO:
            return timeval(self._send_timeout)
        return (
            self._stream.getsockopt(level, option, size) if size else self._stream.getsockopt(level, option)
        )

    def recv_into(self, buffer: Any) -> int:
        """As ``socket.recv_into``, within the receive timeout."""
        self._use_timeout(self._receive_timeout)
        return self._stream.recv_into(buffer)

    def sendmsg(self, buffers: Iterable[Any]) -> int:
        """Sends every byte of ``buffers`` within the send timeout; returns how many."""
        data = b"".join(byte_view(buffer) for buffer in buffers)
        self.sendall(data)
        return len(data)

    def sendall(self, data: Any) -> None:
        """As ``socket.sendall``, within the send timeout."""
        self._use_timeout(self._send_timeout)
        self._stream.sendall(data)

    def _use_timeout(self, seconds: float | None) -> None:
        if seconds != self._timeout_set:
            self._stream.settimeout(seconds)
            self._timeout_set = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class TlsTerminator:
    """Ends TLS for a server: each TLS connection gets its handshake in the caller's thread, then
    a relay thread that moves its plain bytes through a socket pair; the server serves the pair's
    other end as it serves a plain connection, and hands it to the session's worker.

    Args:
        context: The server's TLS context (:func:`server_context`).
        send_timeout: Seconds a client may leave a reply unread before its relay ends.
    """

    def __init__(self, context: ssl.SSLContext, send_timeout: float) -> None:
        self.context = context
        self.send_timeout = send_timeout

    def open(self, connection: socket.socket, timeout: float) -> socket.socket:
        """Makes the TLS handshake on an accepted ``connection`` within ``timeout`` seconds (the
        connection is the relay's from then on, whatever happens); returns the plain end of its
        relay, which the caller owns.

        Raises:
            TlsError: the peer did not start with a TLS handshake (a plain gym-remote client:
                the caller tells it so in plain on ``connection``), or the handshake failed.
        """
        connection.settimeout(timeout)
        try:
            first = connection.recv(1, socket.MSG_PEEK)
        except OSError as error:
            raise TlsError(f"no TLS handshake began within {timeout:g} s ({_reason(error)})") from None
        if first and first[0] != TLS_HANDSHAKE_BYTE:
            raise TlsError(
                "this server speaks TLS only: give the client the CA that signed the server's "
                "certificate (tls_ca=..., or GYM_REMOTE_TLS_CA)"
            )
        stream = self.context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        try:
            # One deadline for the whole handshake (the socket's timeout counts from the call, not
            # per read): a peer dribbling it cannot hold the connection past it. On failure,
            # OpenSSL has told the client why (an alert).
            stream.do_handshake()
        except (ssl.SSLError, OSError) as error:
            stream.close()
            raise TlsError(f"the TLS handshake failed ({_reason(error)})") from None
        plain_end, relay_end = socket.socketpair()
        threading.Thread(
            target=_relay, args=(stream, relay_end, self.send_timeout), name="gym-remote-tls", daemon=True
        ).start()
        return plain_end


_RELAY_CHUNK = 256 << 10


def _relay(stream: ssl.SSLSocket, plain: socket.socket, send_timeout: float) -> None:
    """Moves bytes between a TLS connection and the plain socket its session is served on, until
    either side ends (or the TLS peer leaves a reply unread past ``send_timeout``); closes both.

    One thread drives the SSL object (OpenSSL's is not safe to read and write from two): a reply
    is written whole before the next request is read, which a client pairing requests with
    replies never waits on."""
    stream.setblocking(False)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            selector.register(plain, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if stream in ready and not _decrypt_into(stream, plain):
                    return
                if plain in ready:
                    data = plain.recv(_RELAY_CHUNK)
                    if not data or not _encrypt_onto(stream, data, send_timeout):
                        return
    except OSError:  # a reset, or a record that does not decrypt: the session ends
        return
    finally:
        stream.close()
        plain.close()


def _decrypt_into(stream: ssl.SSLSocket, plain: socket.socket) -> bool:
    """Passes on what the TLS peer sent; False once it closed."""
    while True:
        try:
            data = stream.recv(_RELAY_CHUNK)
        except ssl.SSLWantReadError:  # the rest of a record is still on its way
            return True
        if not data:
            return False
        plain.sendall(data)
        if not stream.pending():
            return True


def _encrypt_onto(stream: ssl.SSLSocket, data: bytes, timeout: float) -> bool:
    """Sends ``data`` to the TLS peer; False where it took none of it for ``timeout`` seconds."""
    view = memoryview(data)
    while view:
        try:
            view = view[stream.send(view) :]
        except ssl.SSLWantWriteError:
            if not select.select([], [stream], [], timeout)[1]:
                return False
        except ssl.SSLWantReadError:
            if not select.select([stream], [], [], timeout)[0]:
                return False
    return True
