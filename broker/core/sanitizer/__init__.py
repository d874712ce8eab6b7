"""Sanitizer for content an MCP server hands to a model. Pure functions: no I/O, no network.

An MCP server is a trust boundary: what a tool returns is read by the model and steers the agent.
:func:`sanitize` removes what a person reviewing the content would not see but the model would,
and flags what looks written to steer the model or to move data out::

    result = sanitize(tool_output, allowed_hosts=("github.com",))
    forward(result.text)                            # cleaned text for the model
    report_outcome(findings=result.findings)        # ReportOutcome; suspect findings taint the task

API: :func:`sanitize` -> :class:`SanitizeResult` (``text``, ``findings``, ``omitted``,
``suspicious``); :class:`Finding` (``kind``, ``detail``, ``severity``, ``offset``);
:func:`findings_taint`; :data:`SEVERITY` (kind -> severity) and :data:`BLOCKED_IMAGE`.

Removed from the returned text (severity "info" unless marked *suspect*):

* ``control_chars``: C0 and C1 controls other than tab, newline and carriage return.
* ``invisible_chars``: zero-width and format characters (U+200B, U+2060..U+2064, U+FEFF except
  as the first character, U+00AD, U+180E, U+034F, Hangul fillers, other Cf), private-use and
  lone surrogate code points, and variation selectors that follow no base that takes one.
  ZWJ/ZWNJ stay between two visible non-ASCII characters (emoji sequences, Persian, Indic).
* ``bidi_control``: embeddings, isolates and marks (U+202A..U+202C, U+2066..U+2069, U+200E/F,
  U+061C). ``bidi_override`` (*suspect*): U+202D/U+202E, which reorder what a reader sees
  (Trojan Source, spoofed file names).
* ``tag_chars`` (*suspect*): Unicode tag characters, an invisible copy of ASCII; the detail
  spells out what they said. The three RGI subdivision flags are kept.
* ``variation_smuggling`` (*suspect*): four or more variation selectors in a row, one byte each.
* ``ansi_style``: terminal escape sequences (CSI colours and cursor movement, OSC titles and
  hyperlinks, DCS/APC strings, charset selection), as coloured CI logs have.
  ``terminal_control`` (*suspect*): SGR 8 (concealed text the model still reads), OSC 52
  (clipboard write) and the OSC file-transfer extensions.
* ``html_comment`` and ``hidden_html``: HTML comments and elements hidden by ``hidden``,
  ``type="hidden"``, ``display:none``, ``visibility:hidden``, zero font size, zero opacity,
  and ``aria-hidden="true"`` holding 20 or more characters.

Neutralised: ``remote_image`` (*suspect*): an image (markdown, ``<img>``, any HTML attribute a
renderer fetches unasked) from a host not on the allow list; its URL becomes
:data:`BLOCKED_IMAGE`, its alt text stays.

Flagged, text kept:

* ``exfil_link`` (*suspect*) / ``external_link``: a link or bare URL to a host not on the allow
  list, suspect when it looks like it carries data (a query over 64 characters, a long
  base64/hex token, a slot naming private data such as ``{chat_history}``, a ``javascript:``
  URL).
* ``role_marker`` (*suspect*): chat-template tokens (``<|im_start|>``, ``[INST]``, ``<<SYS>>``),
  pseudo-system blocks (``<system>...</system>``, ``<IMPORTANT>...</IMPORTANT>``), and markers
  at the start of a line (``Human:``, ``Assistant:``, ``### Instruction:``, ``SYSTEM MESSAGE:``,
  ``System:`` followed by an address to the model).
* ``instruction`` (*suspect*): "ignore/disregard/forget ... previous instructions" and kin, "new
  instructions:", "you are now ...", "act as" addressed to the model, "do not tell the user",
  requests for the system prompt, and text addressed to an AI reader.
* ``exfiltration`` (*suspect*): asks to read a credential file (``~/.ssh/id_rsa``, ``mcp.json``)
  or to send conversation, secrets or file contents to a URL, address or tool parameter.

Hidden content is removed from the text but still scanned: an instruction or exfiltration image
inside an HTML comment is reported. Phrases are matched after invisible characters are gone, on
a folded copy (NFKD compatibility forms, accents, Cyrillic/Greek look-alikes, case), so
``ig<U+200B>nore`` and fullwidth letters match; the returned text is never normalised.

Limits: this is a defence-in-depth filter, not a guarantee. Phrase rules are English and literal;
paraphrase, translation, encodings (base64, HTML entities) and letter-spaced words get through.
HTML is scanned with regexes, not parsed: CSS classes, stylesheets and white-on-white text are not
evaluated. Text about prompt injection (security write-ups, LLM tokenizer code) is flagged by
design. A server that returns files for the agent to edit verbatim should still report the
findings but may forward the original text. Every call is linear in the input and never raises
on a ``str``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from broker.core.sanitizer.chars import strip_chars
from broker.core.sanitizer.common import (
    INFO,
    SEVERITY,
    SUSPECT,
    Collector,
    Edit,
    Finding,
    Severity,
    Sink,
    apply_edits,
)
from broker.core.sanitizer.links import BLOCKED_IMAGE, LinkScanner
from broker.core.sanitizer.markup import hidden_spans, removal_edits
from broker.core.sanitizer.phrases import find_phrases

__all__ = [
    "BLOCKED_IMAGE",
    "INFO",
    "SEVERITY",
    "SUSPECT",
    "Finding",
    "HasKind",
    "SanitizeResult",
    "Severity",
    "findings_taint",
    "sanitize",
]


@dataclass(frozen=True, slots=True)
class SanitizeResult:
    """The cleaned text and what was found. ``omitted`` counts findings beyond ``max_findings``
    (suspect findings are kept before info ones, so ``suspicious`` is never lost to the cap)."""

    text: str
    findings: tuple[Finding, ...] = ()
    omitted: int = 0

    @property
    def suspicious(self) -> bool:
        return any(f.severity == SUSPECT for f in self.findings)


class HasKind(Protocol):
    """A :class:`Finding`, or the wire message ``broker.v1.Finding`` (kind and detail only)."""

    @property
    def kind(self) -> str: ...


def findings_taint(findings: Iterable[HasKind]) -> Literal["clean", "suspect"]:
    """The taint that findings imply: "suspect" if any has a suspect kind, else "clean".

    Works on wire findings too, which carry no severity: the kind decides, through SEVERITY, and
    a kind this version does not know counts as suspect.
    """
    for finding in findings:
        if SEVERITY.get(finding.kind, SUSPECT) == SUSPECT:
            return "suspect"
    return "clean"


def _joined(text: str, spans: list[tuple[int, int]]) -> tuple[str, Callable[[int], int]]:
    """The hidden spans of ``text`` joined by newlines, and a map back to ``text``."""
    starts: list[int] = []
    at = 0
    for start, end in spans:
        starts.append(at)
        at += end - start + 1

    def back(pos: int) -> int:
        i = bisect_right(starts, pos) - 1
        return spans[i][0] + pos - starts[i]

    return "\n".join(text[start:end] for start, end in spans), back


def _disjoint(edits: list[Edit]) -> list[Edit]:
    out: list[Edit] = []
    for edit in sorted(edits):
        if not out or edit[0] >= out[-1][1]:
            out.append(edit)
    return out


def sanitize(
    text: str, *, allowed_hosts: Collection[str] = (), max_findings: int = 50
) -> SanitizeResult:
    """Cleans ``text`` for a model and reports what was removed or looks like an attack.

    ``allowed_hosts``: hosts (and their subdomains) that links and images may point at.
    ``max_findings``: the most findings returned (at least 1); the rest are counted in ``omitted``.
    Offsets in findings are positions in ``text``. Idempotent on the returned text.
    """
    if max_findings < 1:
        raise ValueError("max_findings must be at least 1")
    hosts = (allowed_hosts,) if isinstance(allowed_hosts, str) else allowed_hosts
    found = Collector(max_findings)
    sink = Sink(found)

    # 1. Invisible characters and terminal escapes; everything after works on what is left.
    clean1, map1 = strip_chars(text, sink)
    sink1 = sink.through(map1)
    # 2. HTML a reader does not see.
    spans = hidden_spans(clean1, sink1)
    clean2, map2 = apply_edits(clean1, removal_edits(clean1, spans))
    # 3. Links and images: in the visible text (images rewritten) and in what was hidden.
    links = LinkScanner(hosts)
    images = links.scan(clean2, sink1.through(map2))
    if spans:
        hidden, to_clean1 = _joined(clean1, spans)
        links.scan(hidden, sink1.through(to_clean1), removed=True)
    # 4. Phrases, over hidden content too: an instruction in a comment is still an attempt.
    find_phrases(clean1, sink1)

    final, _ = apply_edits(clean2, _disjoint(images))
    findings, omitted = found.result()
    return SanitizeResult(final, findings, omitted)
