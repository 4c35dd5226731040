"""Text of a WeasyPrint PDF with the standard library only (no pypdf or poppler here):
inflate the streams, read each font's ToUnicode map, decode the Tj/TJ strings of the pages'
content streams in drawing order. Enough for our own invoices, not for PDFs in general."""

from __future__ import annotations

import re
import zlib

OBJ = re.compile(rb"(\d+) 0 obj\s*(.*?)endobj", re.S)
STREAM = re.compile(rb"^(.*?)stream\r?\n(.*?)\r?\nendstream", re.S)


def _objects(pdf: bytes) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Object number -> dictionary text, and -> inflated stream data (object streams unpacked)."""
    bodies: dict[int, bytes] = {}
    streams: dict[int, bytes] = {}
    for match in OBJ.finditer(pdf):
        number, body = int(match.group(1)), match.group(2)
        found = STREAM.match(body)
        if not found:
            bodies[number] = body
            continue
        head, data = found.group(1), found.group(2)
        if b"/FlateDecode" in head:
            data = zlib.decompress(data)
        bodies[number], streams[number] = head, data
        if b"/ObjStm" in head:
            first = int(re.search(rb"/First (\d+)", head).group(1))  # type: ignore[union-attr]
            header = [int(x) for x in data[:first].split()]
            pairs = list(zip(header[::2], header[1::2], strict=True))
            for i, (num, offset) in enumerate(pairs):
                end = first + pairs[i + 1][1] if i + 1 < len(pairs) else len(data)
                bodies[num] = data[first + offset : end]
    return bodies, streams


def _cmap(data: bytes) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", data, re.S):
        for src, dst in re.findall(rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
            mapping[src.decode().lower()] = bytes.fromhex(dst.decode()).decode("utf-16-be")
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", data, re.S):
        for lo, hi, dst in re.findall(rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
            width, start = len(lo), int(dst, 16)
            for offset, code in enumerate(range(int(lo, 16), int(hi, 16) + 1)):
                mapping[f"{code:0{width}x}"] = chr(start + offset)
    return mapping


def _fonts(bodies: dict[int, bytes], streams: dict[int, bytes]) -> dict[str, dict[str, str]]:
    """Font resource name (as used by Tf) -> its code -> text map."""
    cmaps = {
        num: _cmap(streams[int(m.group(1))])
        for num, body in bodies.items()
        if (m := re.search(rb"/ToUnicode (\d+) 0 R", body)) and int(m.group(1)) in streams
    }
    fonts: dict[str, dict[str, str]] = {}
    for body in bodies.values():
        for name, ref in re.findall(rb"/([A-Za-z0-9+_-]+) (\d+) 0 R", body):
            if int(ref) in cmaps:
                fonts[name.decode()] = cmaps[int(ref)]
    return fonts


def pdf_text(pdf: bytes) -> str:
    bodies, streams = _objects(pdf)
    fonts = _fonts(bodies, streams)
    contents = [int(n) for body in bodies.values() for n in re.findall(rb"/Contents (\d+) 0 R", body)]
    words: list[str] = []
    token = re.compile(rb"/([A-Za-z0-9+_-]+)\s+[\d.]+\s+Tf|\[(.*?)\]\s*TJ|<([0-9a-fA-F]*)>\s*Tj", re.S)
    for number in contents:
        font: dict[str, str] = {}
        for match in token.finditer(streams.get(number, b"")):
            if match.group(1):
                font = fonts.get(match.group(1).decode(), {})
                continue
            strings = re.findall(rb"<([0-9a-fA-F]*)>", match.group(2)) if match.group(2) else [match.group(3)]
            text = ""
            for hexed in strings:
                codes = hexed.decode().lower()
                text += "".join(font.get(codes[i : i + 4], "?") for i in range(0, len(codes), 4))
            words.append(text)
    return " ".join(" ".join(words).split())
