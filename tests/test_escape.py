"""The escapers of lipcheck.present.escape: each output language renders a hostile name as exactly its
text (with control characters shown as escapes), never as structure."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from hostile import RAW, STRINGS
from markdown_it import MarkdownIt

from lipcheck.present import escape

GFM = MarkdownIt("commonmark").enable("table")


def test_visible_shows_control_and_format_characters_as_escapes() -> None:
    assert escape.visible("a\x1b[31mb") == "a\\x1b[31mb"
    assert escape.visible("n\x00\n\r\t\x7f\x9b") == "n\\x00\\n\\r\\t\\x7f\\x9b"
    assert escape.visible("f\u202eg\u2066\u2069\u200f\u2028") == "f\\u202eg\\u2066\\u2069\\u200f\\u2028"
    assert escape.visible("m\udcffn") == "m\\udcffn"
    assert escape.visible("\U000e0041") == "\\U000e0041"  # a tag character, invisible


def test_visible_leaves_printable_text_alone() -> None:
    for text in ("model.pt2", "données/été.npy", "模型 ✅ 1.5", "a b\\x1b", ""):
        assert escape.visible(text) == text


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_terminal_text_is_one_line_without_control_characters(name: str) -> None:
    shown = escape.terminal(STRINGS[name])
    assert shown.isprintable() and not any(raw in shown for raw in RAW)
    shown.encode("utf-8")  # no lone surrogate left to fail the encoder


def _inline_text(tokens: list) -> str:  # type: ignore[type-arg]
    kinds = {child.type for child in tokens}
    assert kinds <= {"text"}, kinds  # no code span, emphasis, HTML, link, break
    return "".join(child.content for child in tokens)


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_markdown_renders_as_its_text_in_a_paragraph(name: str) -> None:
    tokens = GFM.parse(f"Model {escape.markdown(STRINGS[name])} on data.\n\n**Gate: failed**\n")
    assert [t.type for t in tokens][:3] == ["paragraph_open", "inline", "paragraph_close"]
    assert [t.type for t in tokens].count("heading_open") == 0
    assert _inline_text(tokens[1].children) == f"Model {escape.visible(STRINGS[name])} on data."
    assert "failed" in tokens[4].content  # the real verdict still renders after it


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_markdown_stays_in_its_table_cell(name: str) -> None:
    text = f"| path | sigma |\n| --- | ---: |\n| {escape.markdown(STRINGS[name])} | 2.5 |\n| next | 1 |\n"
    tokens = GFM.parse(text)
    rows = [t for t in tokens if t.type == "tr_open"]
    cells = [t for t in tokens if t.type == "inline"]
    assert len(rows) == 3 and len(cells) == 6
    assert _inline_text(cells[2].children) == escape.visible(STRINGS[name])
    assert cells[3].content == "2.5"


class _Texts(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.attributes: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes += [value for _, value in attrs]

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.tags.append("<!--")


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_html_renders_as_its_text_in_text_and_attributes(name: str) -> None:
    value = escape.html(STRINGS[name])
    parser = _Texts()
    parser.feed(f'<p title="{value}">{value}</p>')
    assert parser.tags == ["p"]
    assert parser.attributes == [escape.visible(STRINGS[name])]
    assert "".join(parser.text) == escape.visible(STRINGS[name])


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_junit_round_trips_through_an_xml_parser(name: str) -> None:
    root = ET.Element("testcase", name=escape.junit(STRINGS[name]))
    ET.SubElement(root, "failure", message=escape.junit(STRINGS[name])).text = escape.junit(STRINGS[name])
    document = escape.xml_document(ET.tostring(root, encoding="unicode"))
    parsed = ET.fromstring(document)
    assert parsed.get("name") == escape.visible(STRINGS[name])
    assert parsed[0].text == escape.visible(STRINGS[name]) and len(parsed) == 1


def test_xml_document_shows_what_xml_cannot_hold() -> None:
    assert escape.xml_document("<a>x\x00\x1b\ufffe</a>") == "<a>x\\x00\\x1b\\ufffe</a>"


def test_consoles_print_markup_and_emoji_codes_as_text() -> None:
    buffer = io.StringIO()
    escape.console(file=buffer, width=200, color_system=None).print(escape.terminal(STRINGS["markup"]))
    assert buffer.getvalue() == STRINGS["markup"] + "\n"
    escape.console(file=io.StringIO()).print("unbalanced [/] closing tag")  # no MarkupError


def test_workflow_command_cannot_start_another_command() -> None:
    message = escape.workflow_command("a\n::notice::passed %0A\x1b")
    assert "\n" not in message and "%250A" in message and "\\x1b" in message
    assert escape.workflow_command("lipcheck a:b,c", property=True) == "lipcheck a%3Ab%2Cc"


@pytest.mark.parametrize(
    "start",
    ["# heading", "###", "> quote", "- item", "+ item", "1. item", "12) item", "===", "---", "-", "- - -"],
)
def test_markdown_opens_no_block_at_the_start_of_a_line(start: str) -> None:
    tokens = GFM.parse(f"some paragraph\n{escape.markdown(start)}\n")
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    tokens = GFM.parse(escape.markdown(start) + "\n")
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    assert _inline_text(tokens[1].children) == start


def test_markdown_leaves_ordinary_punctuation_readable() -> None:
    for text in ("max sigma 3 > 2: samples 1, 2 (of model.pt2)", "1.9375", "-0.5", "#3", "2025-01-01"):
        assert escape.markdown(text) == text


@pytest.mark.parametrize("name", sorted(STRINGS))
def test_markdown_code_is_a_code_span_or_escaped_text(name: str) -> None:
    for text in (f"Model {escape.markdown_code(STRINGS[name])} on data.", "| x |\n| --- |\n| "
                 f"{escape.markdown_code(STRINGS[name])} |"):  # fmt: skip
        inline = [t for t in GFM.parse(text) if t.type == "inline"][-1].children
        kinds = {child.type for child in inline}
        assert kinds <= {"text", "code_inline"}, kinds
        shown = "".join(child.content for child in inline)
        assert escape.visible(STRINGS[name]) in shown
    assert escape.markdown_code("model.pt2") == "`model.pt2`"
