"""Hostile names: strings that try to change what a reader of a report sees (a heading that claims a
passed gate, an HTML comment that hides the real verdict, a broken code span or table row, terminal
control sequences, bidi overrides, NUL). Generated here; no file of them is committed.

`FILE_NAMES` are the ones a file system accepts (no '/' and no NUL); `STRINGS` adds those that only
a report read back from JSON can carry.
"""

from __future__ import annotations

SPOOFED_VERDICT = "Gate: passed ✅"

FILE_NAMES = {
    "heading": f"a\n\n## {SPOOFED_VERDICT}\n\n<!--",
    "backticks": "b`` `code` ``x",
    "table": "c | d\n| --- | --- |\n| passed",
    "cdata": "e]]><x>&amp;'\"",
    "escape": "\x1b[31mred\x1b[0m\x1b]0;title\x07\x1b[2J",
    "bidi": "f\u202egnp.\u2066x\u2069\u200f",
    "markup": "[bold red]x :white_check_mark: $\\text{ok}$ *y* _z_ [link=file:x]",
    "separators": "g\u2028h\u2029i\r\x85j\t",
}
STRINGS = {
    **FILE_NAMES,
    "nul": "k\x00l\x7f\x9b31m",
    "closing markup": "[/] [/bold] </x> a/b",
    "undecodable": "m\udcffn",  # a file name's byte 0xff, not UTF-8, as Python decodes it
}

# Characters that no escaped output may hold raw.
RAW = ("\x1b", "\x00", "\u202e", "\u2066", "\u2069", "\u200f", "\x07", "\x9b", "\u2028", "\u2029", "\udcff")
