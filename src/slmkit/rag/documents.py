"""Documents to sections: Markdown, plain text, HTML and PDF text, each section with the path of
headings above it ("Returns > Refund window"). Directories are walked."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from slmkit.errors import DataError

MARKDOWN = (".md", ".markdown")
TEXT = (".txt",)
HTML = (".html", ".htm")
PDF = (".pdf",)
SUPPORTED = (*MARKDOWN, *TEXT, *HTML, *PDF)
HEADING_SEPARATOR = " > "

ATX_HEADING = re.compile(r"^(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^\s*(```|~~~)")
SETEXT = re.compile(r"^(=+|-+)[ \t]*$")


@dataclass(frozen=True)
class Section:
    """Text under one heading path ("" for text before the first heading)."""

    heading: str
    text: str


@dataclass(frozen=True)
class Document:
    """One file: its name in the index (`source`), where it was read from, its hash and sections."""

    source: str
    path: Path
    sha256: str
    sections: list[Section]


def find_documents(paths: list[Path]) -> list[tuple[str, Path]]:
    """(source name, file) for every document under `paths`; a directory's files are named
    relative to it, a file by its name. Unsupported files given by name are errors; in a walked
    directory they are skipped (hidden files and folders too)."""
    if not paths:
        raise DataError("no documents given: name files or folders to index")
    found: dict[str, Path] = {}
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if path.is_dir():
            pairs = [(f.relative_to(path).as_posix(), f) for f in _walk(path)]
        else:
            _check_type(path)
            pairs = [(path.name, path)]
        for source, file in pairs:
            if source in found and found[source].resolve() != file.resolve():
                raise DataError(
                    f"{file}: the name {source!r} is already taken by {found[source]} (index them separately)"
                )
            found[source] = file
    return sorted(found.items())


def _walk(folder: Path) -> list[Path]:
    files = []
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not file.is_file():
            continue
        if file.suffix.lower() in SUPPORTED:
            files.append(file)
    return files


def _check_type(path: Path) -> None:
    if path.suffix.lower() not in SUPPORTED:
        raise DataError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r} (supported: {' '.join(SUPPORTED)})"
        )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_document(source: str, path: Path) -> Document:
    """A file's sections; undecodable text and PDFs without an extractor are one-line errors."""
    suffix = path.suffix.lower()
    if suffix in PDF:
        sections = [Section("", pdf_text(path))]
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        if suffix in MARKDOWN:
            sections = markdown_sections(text)
        elif suffix in HTML:
            sections = html_sections(text)
        else:
            sections = [Section("", text.strip())]
    kept = [s for s in sections if s.text.strip()]
    return Document(source, path, file_sha256(path), kept)


def pdf_text(path: Path) -> str:
    if importlib.util.find_spec("pypdf") is None:
        raise DataError(
            f"{path}: reading PDF text needs a text extractor: pip install pypdf (or convert it to .txt)"
        )
    import pypdf

    try:
        reader = pypdf.PdfReader(str(path))
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    except Exception as exc:  # pypdf raises many types for a broken file
        raise DataError(f"{path}: cannot read the PDF ({type(exc).__name__}: {exc})") from exc


class _HeadingPath:
    """The stack of headings above the current line; a heading of level n replaces levels >= n."""

    def __init__(self) -> None:
        self.levels: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> None:
        self.levels = [(lv, t) for lv, t in self.levels if lv < level] + [(level, title)]

    def __str__(self) -> str:
        return HEADING_SEPARATOR.join(t for _, t in self.levels if t)


def markdown_sections(text: str) -> list[Section]:
    """ATX (`## Title`) and setext (`Title` over `===`/`---`) headings; fenced code is body text;
    a YAML front matter block is left out."""
    lines = _strip_front_matter(text.splitlines())
    sections: list[Section] = []
    path = _HeadingPath()
    body: list[str] = []
    in_fence = False

    def close() -> None:
        sections.append(Section(str(path), "\n".join(body).strip()))
        body.clear()

    for line in lines:
        if FENCE.match(line):
            in_fence = not in_fence
        heading = None if in_fence else ATX_HEADING.match(line)
        setext = None if in_fence or not body or not body[-1].strip() else SETEXT.match(line)
        if heading:
            close()
            path.enter(len(heading.group(1)), heading.group(2).strip())
        elif setext:
            title = body.pop().strip()
            close()
            path.enter(1 if setext.group(1)[0] == "=" else 2, title)
        else:
            body.append(line)
    close()
    return sections


def _strip_front_matter(lines: list[str]) -> list[str]:
    if lines and lines[0].strip() == "---":
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() in ("---", "..."):
                return lines[i + 1 :]
    return lines


class _HtmlSections(HTMLParser):
    BLOCKS = frozenset(
        [
            "p",
            "div",
            "li",
            "ul",
            "ol",
            "tr",
            "table",
            "section",
            "article",
            "br",
            "dt",
            "dd",
            "blockquote",
            "pre",
            "header",
            "footer",
            "main",
        ]
    )
    SKIPPED = frozenset(("script", "style", "head", "title", "nav", "template", "noscript"))

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self.path = _HeadingPath()
        self.body: list[str] = []
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIPPED:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.heading, self.heading_level = [], int(tag[1])
        elif tag in self.BLOCKS:
            self.body.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            self.end_section()
            self.path.enter(self.heading_level, " ".join("".join(self.heading).split()))
            self.heading = None
        elif tag in self.BLOCKS:
            self.body.append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        (self.heading if self.heading is not None else self.body).append(data)

    def end_section(self) -> None:
        lines = (" ".join(line.split()) for line in "".join(self.body).splitlines())
        self.sections.append(Section(str(self.path), "\n".join(line for line in lines if line)))
        self.body = []


def html_sections(text: str) -> list[Section]:
    parser = _HtmlSections()
    parser.feed(text)
    parser.close()
    parser.end_section()
    return parser.sections
