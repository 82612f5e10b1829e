"""Download an image over http(s) for ``flower-exp predict``, bounded in time, size and scheme.

:func:`fetch_image` refuses other schemes and redirects to them, stops a body past its size
limit, checks the content is an image of at most :data:`MAX_PIXELS` pixels before anything
decodes it, and holds the whole download to one deadline: a server dripping bytes into the
headers or the body is cut off there (a socket timeout alone restarts with every byte).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from http.client import HTTPException
from typing import Any

from .errors import FlowerExpError

URL_SCHEMES = ("http", "https")
# Limits on one input image, downloaded or read from a file (predictor.read_source).
MAX_PIXELS = 40_000_000
MAX_BYTES = 20 * 2**20
_READ_CHUNK = 16384  # bytes per read of a download: the deadline is checked between reads


def fetch_image(url: str, *, timeout: float = 10.0, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> bytes:
    """Download an image over http(s) and check it is one; returns its bytes.

    Refused (one-line :class:`FlowerExpError`): other schemes (``file://``, ``ftp://``, ...) and
    redirects to them; a ``Content-Length`` above ``max_bytes`` (before reading the body); a
    body that grows past ``max_bytes`` (the read stops there); no answer within ``timeout``
    seconds (connect, each read, and the whole download); content that is not an image or has
    more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    from PIL import Image

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in URL_SCHEMES:
        raise FlowerExpError(f"{url}: only http(s) URLs are fetched (got {scheme + '://' if scheme else 'no scheme'})")
    data = _download(url, timeout, max_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # header only
            width, height = img.size
            if width * height > max_pixels:
                raise FlowerExpError(
                    f"{url}: image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}"
                )
            img.verify()  # structure and checksums, without decoding the pixels
        except FlowerExpError:
            raise
        except Image.DecompressionBombError as exc:
            raise FlowerExpError(f"{url}: refused as a decompression bomb ({exc})") from None
        except Exception as exc:  # Pillow raises many types for non-images and corrupt files
            detail = "unrecognised format" if type(exc).__name__ == "UnidentifiedImageError" else f"{type(exc).__name__}: {exc}"
            raise FlowerExpError(f"{url}: not an image ({str(detail).splitlines()[0][:200]})") from None
    return data


def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    from . import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"flower-exp/{__version__}", "Accept": "image/*"})
    deadline = _Deadline(timeout)
    try:
        with deadline, _opener(deadline).open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise FlowerExpError(f"{url}: {int(length)} bytes is above the limit of {max_bytes} bytes; not downloaded")
            data = _read_body(response, deadline, url, max_bytes)
    except (OSError, HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        if (
            deadline.expired()
            or isinstance(exc, (TimeoutError, socket.timeout))
            or (isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (TimeoutError, socket.timeout)))
        ):
            raise FlowerExpError(f"{url}: timed out after {timeout:g} s") from None
        raise _fetch_error(url, exc) from None
    return data


def _read_body(response: Any, deadline: _Deadline, url: str, max_bytes: int) -> bytes:
    """The body in small reads (``read1``: whatever one recv brings), each allowed only the time
    left, the size cap checked as it grows. A plain ``read(64 KiB)`` waits for 64 KiB: a server
    dripping a byte a second would hold it for 18 hours, deadline unchecked."""
    chunks, total = [], 0
    while True:
        deadline.before_read()
        chunk = response.read1(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise FlowerExpError(f"{url}: body exceeds the limit of {max_bytes} bytes; download stopped")
        chunks.append(chunk)
    if deadline.expired():  # the watchdog's shutdown reads as an early end of the body
        raise TimeoutError
    return b"".join(chunks)


def _fetch_error(url: str, exc: OSError | HTTPException | ValueError) -> FlowerExpError:
    """One line for a failed download that is not a timeout."""
    if isinstance(exc, urllib.error.HTTPError):
        return FlowerExpError(f"{url}: HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        return FlowerExpError(f"{url}: cannot fetch ({exc.reason})")
    detail = str(exc).splitlines()[0][:200] if str(exc) else ""
    return FlowerExpError(f"{url}: cannot fetch ({type(exc).__name__}: {detail})")


class _Deadline:
    """A download's total time limit, enforced on its socket. Each read may block only for the
    time left, and a watchdog shuts the socket down when the time is up, so a server that drips
    bytes (into the headers, which http.client reads in its own loop, or the body) cannot hold
    the download past the limit: a socket timeout alone restarts with every byte."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._timer.cancel()

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def attach(self, sock: socket.socket) -> socket.socket:
        """Watch ``sock`` (the raw one, then its TLS wrapper); returns it."""
        self._sock = sock
        if self.expired():
            self._expire()
        return sock

    def before_read(self) -> None:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError
        if self._sock is not None:
            self._sock.settimeout(left)

    def _expire(self) -> None:
        if self._sock is not None:
            # socket.socket's own shutdown: it wakes a blocked read, TLS or not.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)


class _Watched:
    """Mixin for http.client connections: hands every socket they open to the download's deadline."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        create = self._create_connection
        self._create_connection = lambda *a, **k: deadline.attach(create(*a, **k))

    def connect(self) -> None:
        super().connect()
        self._deadline.attach(self.sock)  # after TLS wrapping, the socket reads go through


class _WatchedHTTP(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


class _DeadlineHandler:
    """Mixin for urllib's HTTP(S) handlers: their connections are :class:`_Watched`."""

    def __init__(self, deadline: _Deadline, **kwargs: Any):
        super().__init__(**kwargs)
        self._deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        watched = _WatchedHTTPS if issubclass(http_class, http.client.HTTPSConnection) else _WatchedHTTP
        return super().do_open(functools.partial(watched, deadline=self._deadline), req, **kwargs)


class _DeadlineHTTPHandler(_DeadlineHandler, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_DeadlineHandler, urllib.request.HTTPSHandler):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only; anything else (``file:``, ``ftp:``) is refused."""

    max_redirections = 5

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: D102 - urllib hook
        target = headers.get("location") or headers.get("uri")
        if target:
            new = urllib.parse.urljoin(req.full_url, target)
            scheme = urllib.parse.urlsplit(new).scheme.lower()
            if scheme not in URL_SCHEMES:
                fp.close()
                raise FlowerExpError(f"{req.full_url}: redirect to {new} refused (http/https only)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    # Built by hand: build_opener() would also add file://, ftp:// and data: handlers.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _DeadlineHTTPHandler(deadline),
        _DeadlineHTTPSHandler(deadline),
        urllib.request.HTTPDefaultErrorHandler(),
        _HttpOnlyRedirects(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
