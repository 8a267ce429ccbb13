"""One checked, resumable HTTPS download: ``download(url, destination, sha256=..., size=...)``.

- The bytes go to ``.NAME.part`` beside the destination; a later call resumes from the bytes
  already there (HTTP Range). A server that ignores Range (200 instead of 206) restarts the
  file cleanly.
- Nothing appears at the destination until the whole file is checked: its size, its sha256
  against the pinned value (or its git blob SHA-1 where that is what is pinned). A file that
  fails the check is moved aside to ``.NAME.rejected`` and the error names both checksums.
- Only ``https://`` addresses, and redirects only to ``https://`` (the hosts' CDNs), unless a
  mirror is given (``mirror=`` or ``$VIRNUCPRO_MODELS_MIRROR``): a test server or a local copy,
  where plain http is accepted. Checksums are enforced all the same.
- Progress: a live bar on a terminal, a log line every few seconds otherwise.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from virnucpro.errors import VirnucproError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("virnucpro")

MIRROR_ENV = "VIRNUCPRO_MODELS_MIRROR"
LOG_EVERY_SECONDS = 10.0
RETRY_DELAY_SECONDS = 5.0
BLOCK = 1 << 20


def mirror_url(url: str, mirror: str | None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (which may carry a path prefix):
    https://host/a/b -> MIRROR/a/b. Without a mirror, ``url`` itself."""
    if not mirror:
        return url
    return mirror.rstrip("/") + urllib.parse.urlsplit(url).path


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # unreachable


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (to the hosts' CDNs) only over https; the Range header is kept."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        if urllib.parse.urlsplit(newurl).scheme != "https":
            raise VirnucproError(f"{req.full_url}: refused a redirect to non-https {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(https_only: bool) -> urllib.request.OpenerDirector:
    if https_only:
        return urllib.request.build_opener(_HttpsOnlyRedirects)
    return urllib.request.build_opener()


def git_blob_sha1(size: int) -> hashlib._Hash:
    """A SHA-1 primed with git's blob header: fed the file's bytes, it gives the blob id that
    ``git ls-tree`` shows for that file."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(b"blob %d\0" % size)
    return digest


class _Progress:
    """Bytes received: a rich bar on a terminal, otherwise a log line every few seconds."""

    def __init__(self, label: str, total: int | None, done: int) -> None:
        self.label, self.total, self.done = label, total, done
        self._start_done, self._started = done, time.monotonic()
        self._last_log = self._started
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            self.log_line()

    def log_line(self) -> None:
        rate = (self.done - self._start_done) / max(time.monotonic() - self._started, 1e-9)
        if self.total:
            share = f" of {human(self.total)} ({100 * self.done / self.total:.0f}%)"
        else:
            share = ""
        log.info("%s: %s%s, %s/s", self.label, human(self.done), share, human(rate))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _hash_existing(handle, sha256: hashlib._Hash, sha1: hashlib._Hash | None) -> int:
    handle.seek(0)
    n = 0
    while block := handle.read(BLOCK):
        sha256.update(block)
        if sha1 is not None:
            sha1.update(block)
        n += len(block)
    return n


def _content_range_start(value: str | None) -> tuple[int | None, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL); None where absent or ``*``."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    start = span.partition("-")[0]
    return (
        int(start) if start.isdigit() else None,
        int(total) if total.isdigit() else None,
    )


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise VirnucproError(
            f"{directory}: {human(needed)} still to download but only {human(free)} free"
        )


def _transfer(
    opener: urllib.request.OpenerDirector,
    url: str,
    handle,
    label: str,
    size: int | None,
    git_sha1: str | None,
) -> tuple[hashlib._Hash, hashlib._Hash | None]:
    """One request: resume ``handle`` (a .part file) from its end, or restart it when the
    server ignores Range. Returns the sha256 of the whole file and, when a git blob id is
    pinned and the size known, its blob SHA-1. Raises OSError / urllib.error.URLError when the
    transfer breaks; the bytes received so far stay."""
    sha256 = hashlib.sha256()
    sha1 = git_blob_sha1(size) if git_sha1 and size is not None else None
    have = _hash_existing(handle, sha256, sha1)
    if size is not None and have == size:
        return sha256, sha1  # a complete .part from an earlier run: only the check is left
    if size is not None and have > size:
        log.warning("%s: partial download is larger than the file; starting again", label)
        handle.truncate(0)
        sha256, have = hashlib.sha256(), 0
        sha1 = git_blob_sha1(size) if sha1 is not None else None
    headers = {"User-Agent": "virnucpro-models-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past our end: the part is as long as the file
            log.warning("%s: server has nothing past %d bytes; checking them", label, have)
            return sha256, sha1
        raise
    with response:
        if have and response.status == 206:
            start, total = _content_range_start(response.headers.get("Content-Range"))
            if start != have:
                raise urllib.error.URLError(f"server resumed at byte {start}, not {have}")
            log.info("%s: resuming after %s", label, human(have))
            total = total or size
        else:
            if have:
                log.info("%s: server ignored the range request; starting again", label)
                handle.truncate(0)
                sha256, have = hashlib.sha256(), 0
                sha1 = git_blob_sha1(size) if sha1 is not None else None
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else size
        if size is not None and total is not None and total != size:
            raise VirnucproError(
                f"{label}: the server has {total} bytes, the pinned size is {size} bytes "
                f"(from {url})"
            )
        if sha1 is None and git_sha1 and total is not None:  # size learnt from the server
            sha1 = git_blob_sha1(total)
            _hash_existing(handle, hashlib.sha256(), sha1)
        _check_space(Path(handle.name).parent, (total or 0) - have)
        progress = _Progress(label, total, have)
        try:
            handle.seek(0, os.SEEK_END)
            while block := response.read(BLOCK):
                handle.write(block)
                sha256.update(block)
                if sha1 is not None:
                    sha1.update(block)
                progress.advance(len(block))
            handle.flush()
        finally:
            handle.flush()
            progress.close()
        if total is not None and progress.done < total:
            raise urllib.error.URLError(f"connection closed after {progress.done} of {total} bytes")
        progress.log_line()
    return sha256, sha1


def download(
    url: str,
    destination: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    git_sha1: str | None = None,
    label: str | None = None,
    attempts: int = 3,
    https_only: bool = True,
) -> str:
    """Download ``url`` to ``destination`` through ``.NAME.part`` (resumed if present), check
    it against ``sha256`` / ``size`` / ``git_sha1`` (git blob id), then rename it into place.
    Returns its sha256. A transfer that breaks is retried ``attempts`` times from where it
    stopped; after that the error says to run again, which resumes."""
    destination = Path(destination)
    label = label or destination.name
    attempts = max(attempts, 1)
    if https_only and urllib.parse.urlsplit(url).scheme != "https":
        raise VirnucproError(f"{url}: only https downloads are allowed (or set ${MIRROR_ENV})")
    part = destination.with_name(f".{destination.name}.part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    opener = _opener(https_only)
    log.info("%s: downloading %s from %s", label, human(size) if size else "(size unknown)", url)
    with open(part, "a+b") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise VirnucproError(
                    f"{part}: another 'models fetch' is downloading this file"
                ) from None
        for attempt in range(1, attempts + 1):
            try:
                digest, blob = _transfer(opener, url, handle, label, size, git_sha1)
                break
            except VirnucproError:
                if os.fstat(handle.fileno()).st_size == 0:
                    part.unlink(missing_ok=True)
                raise
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", None) or e
                if isinstance(e, urllib.error.HTTPError):
                    reason = f"HTTP {e.code} {e.reason}"
                lasting = isinstance(e, urllib.error.HTTPError) and e.code in (401, 403, 404, 410)
                got = os.fstat(handle.fileno()).st_size
                if attempt < attempts and not lasting:
                    log.warning(
                        "%s: transfer failed with %s on disk (%s); retrying (%d of %d)",
                        label, human(got), reason, attempt + 1, attempts,
                    )  # fmt: skip
                    time.sleep(RETRY_DELAY_SECONDS * attempt)
                    continue
                if got == 0:
                    part.unlink(missing_ok=True)
                    raise VirnucproError(
                        f"{url}: download failed ({reason}); without a network, copy the files "
                        f"into {destination.parent} as docs/models.md describes"
                    ) from None
                raise VirnucproError(
                    f"{url}: download failed ({reason}); {human(got)} kept in {part}: run "
                    f"'virnucpro models fetch' again to resume, or copy the files by hand "
                    f"(docs/models.md)"
                ) from None
        actual = digest.hexdigest()
        got = os.fstat(handle.fileno()).st_size
        problem = None
        if size is not None and got != size:
            problem = (
                f"size mismatch: expected {size} bytes (sha256 {sha256}), got {got} bytes "
                f"(sha256 {actual})"
            )
        elif sha256 is not None and actual != sha256:
            problem = f"sha256 mismatch: expected {sha256}, got {actual}"
        elif git_sha1 is not None:
            if blob is None:  # the part was already complete: hash it as a blob now
                blob = git_blob_sha1(got)
                _hash_existing(handle, hashlib.sha256(), blob)
            if blob.hexdigest() != git_sha1:
                problem = (
                    f"git blob sha1 mismatch: expected {git_sha1}, got {blob.hexdigest()} "
                    f"(sha256 {actual})"
                )
        if problem is not None:
            rejected = destination.with_name(f".{destination.name}.rejected")
            os.replace(part, rejected)
            raise VirnucproError(f"{destination}: {problem} (from {url}; kept as {rejected})")
        os.fsync(handle.fileno())
        os.replace(part, destination)
    log.info("%s: %s, sha256 %s", label, "verified" if sha256 or git_sha1 else "recorded", actual)
    return actual
