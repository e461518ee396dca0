"""One escaper per output language, for every string lipcheck did not write itself.

Paths, model and data names, `--arg` values, layer names, fields of a report read back from JSON and
the rules' messages that quote them all come from users or from the files being audited. Each output
language gets them through exactly one function here, so that no name can change what a reader sees
as the verdict:

- `terminal`: the table (`-f table`, `.txt`) and every line on stderr. Characters Python does not
  consider printable (control characters such as ESC, NUL, newlines, C1 controls, bidi overrides and
  other invisible format characters, line separators, lone surrogates of undecodable file names)
  become their visible escapes (`\\x1b`, `\\n`, `\\u202e`), as `repr` spells them. The consoles of
  `console` parse no markup and no emoji codes, so `[bold]` or `:white_check_mark:` in a name is text.
- `markdown`: the same visible escapes (so no newline can start a block such as a heading), then a
  backslash before every character that opens inline Markdown: no HTML or comment (`<!--`), no code
  span, emphasis, strikethrough, link, entity, math (`$`), and no end of a table cell (`|`); and
  before a first character that would open a block at the start of a line (`#`, `>`, `-`, `1.`).
  `markdown_code` shows a name as a code span where one can hold it.
- `junit`: the visible escapes; ElementTree escapes `&`, `<`, `>` and quotes, so `]]>` cannot end
  anything. `xml_document` turns the characters XML 1.0 cannot hold left in a whole document into
  visible escapes too.
- `html`: the visible escapes, then `html.escape` with quotes (text and attribute values alike).
- `workflow_command`: a GitHub Actions `::error::` command's message or property.

A backslash is left as it is: a name that spells `\\x1b` with its four characters shows them, and
cannot do more than show them.
"""

from __future__ import annotations

import html as _html
import re
from typing import Any

from rich.console import Console

# The characters that open or end inline Markdown (CommonMark, GitHub's tables, strikethrough and
# math), and those that open a block at the start of a line; all are backslash-escapable.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<&|~$])")
_MARKDOWN_LINE_START = re.compile(
    r"^(#{1,6}(?=[ \t]|$)|[-+](?=[ \t]|$)|\d{1,9}(?=[.)](?:[ \t]|$))|>|[=-](?=[-= \t]*$))"
)

# Characters XML 1.0 cannot hold, even escaped: control characters but tab and newlines, surrogates,
# U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_character(character: str) -> str:
    named = _NAMED.get(character)
    if named is not None:
        return named
    code = ord(character)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object) -> str:
    """`text` with every character that `str.isprintable` refuses (but the space) as its escape:
    control characters, bidi and other format characters, line and paragraph separators, lone
    surrogates. What is left draws as itself and moves the cursor only forward, on one line."""
    shown = str(text)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else _escape_character(c) for c in shown)


def terminal(text: object) -> str:
    """A string for a terminal (or a plain-text file of the table, or stderr): one line, no control
    sequence, no bidi override."""
    return visible(text)


def console(**options: Any) -> Console:
    """A rich console that prints strings as they are: no console markup (`[red]`, `[/]`, which could
    also raise on a name), no emoji codes, no highlighting of numbers and paths in names."""
    return Console(markup=False, emoji=False, highlight=False, **options)


def markdown(text: object) -> str:
    """Markdown text that renders as `text` (with visible escapes) anywhere on a line or in a table cell:
    it opens no block, span, comment, link or table cell."""
    escaped = _MARKDOWN_INLINE.sub(r"\\\1", visible(text))
    if escaped[:1].isdigit():
        return _MARKDOWN_LINE_START.sub(lambda found: found.group() + "\\", escaped, count=1)
    return _MARKDOWN_LINE_START.sub(r"\\\1", escaped, count=1)


def markdown_code(text: object) -> str:
    """A name (a path, a layer, a rule) in Markdown: a code span of its visible escapes where one can
    hold it (nothing inside a code span is Markdown), else `markdown(text)`: a backtick would end the
    span, and a `|` the table cell around it."""
    shown = visible(text)
    if shown and "`" not in shown and "|" not in shown and shown.strip() == shown:
        return f"`{shown}`"
    return markdown(shown)


def junit(text: object) -> str:
    """Text for a JUnit attribute or element, to be escaped by ElementTree: visible escapes."""
    return visible(text)


def xml_document(document: str) -> str:
    """A whole XML document with the characters XML 1.0 cannot hold as visible escapes (a last line of
    defence: `junit` already removed them from what users wrote)."""
    return _NOT_XML.sub(lambda found: _escape_character(found.group()), document)


def html(text: object) -> str:
    """HTML text or a quoted attribute value that renders as `text` (with visible escapes)."""
    return _html.escape(visible(text), quote=True)


def workflow_command(text: object, property: bool = False) -> str:
    """The message (or, with `property`, a property value) of a GitHub Actions workflow command such as
    `::error title=...::message`: visible escapes but for line breaks, then the runner's own
    percent-encoding (which keeps line breaks in the message)."""
    parts = re.split(r"([\r\n])", str(text))
    shown = "".join(part if part in ("\r", "\n") else visible(part) for part in parts)
    shown = shown.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return shown.replace(":", "%3A").replace(",", "%2C") if property else shown
