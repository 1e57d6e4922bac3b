"""Text as Chinese offices' files hold it: encodings decided, mojibake refused, widths normalised.

A file's text is decoded by, in order: a byte-order mark, the encoding the caller declared,
the encoding the file declares (a shapefile's .cpg or DBF language byte), and otherwise
detection — UTF-8 if the bytes are valid UTF-8, else GB18030 (a superset of GBK and GB2312)
if the result reads as Chinese. Whatever was chosen, the decoded text is checked for the
marks of a wrong guess upstream (``ÕÅÈý`` is 张三's GBK bytes read as Latin-1; ``寮犱笁`` its
UTF-8 bytes read as GBK), and refused with a message that names the encoding to declare.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable

from gridmap.errors import InvalidFeatureError

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
ENCODINGS = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8-sig",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "gb18030": "gb18030",
    "cp936": "gb18030",
    "936": "gb18030",
    "big5": "big5",
    "cp950": "big5",
    "utf-16": "utf-16",
    "utf16": "utf-16",
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "iso-8859-1": "latin-1",
    "cp1252": "cp1252",
}
"""Encodings a caller may declare (GBK and GB2312 are read as their superset GB18030)."""

# DBF language driver ids (byte 29 of a .dbf) that name a Chinese or a Unicode code page.
LDID = {0x4D: "gb18030", 0x4F: "big5", 0x7A: "gb18030", 0x78: "big5", 0x03: "cp1252"}

_LATIN_HIGH = re.compile(r"[\u00a0-\u00ff]")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_WIDE = {
    i: i - 0xFEE0 for i in (*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B))
}
_WIDE[0x3000] = 0x20  # ideographic space


class EncodingError(InvalidFeatureError):
    """The file's text cannot be decoded with confidence; the message says what to declare."""


def encoding_name(value: str) -> str:
    """The Python codec for a declared encoding name, or EncodingError listing the accepted."""
    key = value.strip().lower().replace("_", "-")
    if key in ENCODINGS:
        return ENCODINGS[key]
    msg = f"unknown encoding {value[:40]!r}; use one of: utf-8, gbk, gb18030, big5, utf-16"
    raise EncodingError(msg)


def _common_chinese(text: str) -> float:
    """Share of the CJK characters in ``text`` that GB2312 (everyday Chinese) holds."""
    cjk = _CJK.findall(text)
    if not cjk:
        return 1.0
    common = sum(1 for c in cjk if _encodable(c, "gb2312"))
    return common / len(cjk)


def _encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def detect(data: bytes) -> tuple[str, str]:
    """(codec, how it was decided) for raw bytes with no declared encoding."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, "byte-order mark"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return "utf-8", "valid UTF-8"
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        text = ""
    if text and _common_chinese(text) >= 0.9:
        return "gb18030", "not UTF-8; reads as GBK/GB18030 Chinese"
    msg = (
        "the file's encoding could not be recognised (neither UTF-8 nor GBK Chinese); "
        "declare it with --encoding (e.g. gbk, big5, utf-16)"
    )
    raise EncodingError(msg)


def decode(data: bytes, declared: str | None = None, *, what: str = "the file") -> tuple[str, str]:
    """Text of ``data`` and the codec used: a BOM first, then ``declared``, then detection."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            if declared and encoding_name(declared) not in (codec, "utf-8"):
                msg = f"{what} starts with a {codec} byte-order mark but {declared} was declared"
                raise EncodingError(msg)
            return data.decode(codec), codec
    codec = encoding_name(declared) if declared else detect(data)[0]
    try:
        return data.decode(codec), codec
    except UnicodeDecodeError as exc:
        msg = (
            f"{what} is not valid {declared or codec} (byte {exc.start}); "
            "declare the encoding it was saved in with --encoding (gbk, utf-8, …)"
        )
        raise EncodingError(msg) from None


def mojibake(text: str) -> str | None:
    """The encoding ``text`` was really in if it is Chinese decoded with the wrong codec,
    else None. Recognises GBK or UTF-8 read as Latin-1/cp1252 and UTF-8 read as GBK."""
    if _LATIN_HIGH.search(text) and not _CJK.search(text):
        for wrong in ("latin-1", "cp1252"):
            try:
                raw = text.encode(wrong)
            except UnicodeEncodeError:
                continue
            for right, name in (("utf-8", "utf-8"), ("gb18030", "gbk")):
                try:
                    fixed = raw.decode(right)
                except UnicodeDecodeError:
                    continue
                if _CJK.search(fixed) and _common_chinese(fixed) >= 0.9:
                    return name
    if _CJK.search(text) and _common_chinese(text) < 0.5:
        try:
            fixed = text.encode("gb18030").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return None
        if _CJK.search(fixed) and _common_chinese(fixed) >= 0.9:
            return "utf-8"
    return None


def refuse_mojibake(values: Iterable[str], *, what: str, used: str) -> None:
    """EncodingError if the decoded texts look like Chinese read with the wrong codec."""
    for v in values:
        right = mojibake(v)
        if right is not None:
            shown = v[:20]
            msg = (
                f"{what} was read as {used} but its text looks garbled ({shown!r}); it is "
                f"probably {right}: import it again with --encoding {right}"
            )
            raise EncodingError(msg)


def normalise(value: str) -> str:
    """Full-width digits and Latin letters and the ideographic space made half-width (full-
    width punctuation is kept: （） and ， are how Chinese text is written); surrounding
    white space and a zero-width no-break space removed."""
    return value.translate(_WIDE).replace("\ufeff", "").strip()


def normalise_address(value: str) -> str:
    """An address reduced for matching: NFKC, no spaces, 号楼/栋/幢 treated alike."""
    s = unicodedata.normalize("NFKC", value)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"(号楼|栋|幢|号院)", "号", s)
    return s.lower()
