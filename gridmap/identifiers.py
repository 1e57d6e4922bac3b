"""Chinese phone numbers and resident ID numbers (GB 11643): normalised, validated; and the
plain-text rule every stored text follows.

Input is normalised first (NFKC turns full-width digits and spaces into ASCII; spaces,
hyphens and brackets are dropped; ``+86`` is removed), then validated:

* phone: a mobile number ``1[3-9]`` + 9 digits, or a landline ``0`` + area code (2 or 3
  digits) + a local number of 7–8 digits not starting with 0 or 1, stored as
  ``0371-68812345``;
* ID number: 18 characters, region code, a real birth date not in the future, sequence,
  and the ISO 7064 MOD 11-2 check character.

A store of **synthetic** data (the sample, see data/README.md) also accepts the forms that
mark its people as invented and can belong to nobody: mobile numbers starting ``100``,
landline local numbers starting ``0`` and ID numbers with a wrong check character.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# re.ASCII: \d would also take Arabic-Indic and other digits that NFKC leaves alone
_ID = re.compile(r"[1-8]\d{5}(\d{4})(\d{2})(\d{2})\d{3}[\dX]", re.ASCII)
_MOBILE = re.compile(r"1[3-9]\d{9}", re.ASCII)
_SYNTHETIC_MOBILE = re.compile(r"100\d{8}", re.ASCII)
_LANDLINE = re.compile(r"(0(?:10|2\d|[3-9]\d{2}))([2-9]\d{6,7})", re.ASCII)
_SYNTHETIC_LANDLINE = re.compile(r"(0(?:10|2\d|[3-9]\d{2}))(0\d{6,7})", re.ASCII)
_SEPARATORS = str.maketrans("", "", " -()（）")
# Text that must never be stored: control characters (NUL included), line and paragraph
# separators, and the bidirectional overrides that make text display other than it reads.
_FORBIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e"
    "\u2060-\u2069\ufeff\U000e0000-\U000e007f]"
)
"""Control, bidi and invisible characters (zero-width, soft hyphen, tags): two names that
look alike are alike."""


class IdentifierError(ValueError):
    """A value that is not a valid identifier of its kind; the message says why."""


def id_check_digit(first17: str) -> str:
    """The GB 11643 (ISO 7064 MOD 11-2) check character of an 18-character ID number."""
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def check_text(value: str) -> str:
    """``value`` unchanged if it holds no control, separator or bidi-override character."""
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        msg = f"contains the character U+{ord(bad.group()):04X}, which text may not hold"
        raise IdentifierError(msg)
    return value


def visible(value: str) -> str:
    """``value`` with every character :func:`check_text` refuses written as ``\\uXXXX``
    (for logs: an entry cannot fake a line break or run backwards)."""
    return _FORBIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", value)


def normalise_phone(value: str, *, synthetic: bool = False) -> str:
    """A phone number in its stored form (``13812345678`` or ``0371-68812345``)."""
    text = unicodedata.normalize("NFKC", value).strip().translate(_SEPARATORS)
    for prefix in ("+86", "0086"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if _MOBILE.fullmatch(text) or (synthetic and _SYNTHETIC_MOBILE.fullmatch(text)):
        return text
    m = _LANDLINE.fullmatch(text) or (synthetic and _SYNTHETIC_LANDLINE.fullmatch(text))
    if m:
        return f"{m.group(1)}-{m.group(2)}"
    msg = "is not a phone number (a mobile 1xxxxxxxxxx or a landline such as 0371-68812345)"
    raise IdentifierError(msg)


_SURELY_PAST = dt.date(2025, 1, 1)
"""A birth date up to this day is never in the future (saves asking the clock per row)."""


def normalise_id_number(
    value: str, *, synthetic: bool = False, today: dt.date | None = None
) -> str:
    """A resident ID number in its stored form (18 characters, upper-case X)."""
    text = unicodedata.normalize("NFKC", value).strip().replace(" ", "").upper()
    m = _ID.fullmatch(text)
    if m is None:
        msg = "is not an 18-character resident ID number (GB 11643)"
        raise IdentifierError(msg)
    try:
        born = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        msg = "holds no valid birth date"
        raise IdentifierError(msg) from None
    if born < dt.date(1900, 1, 1) or (born > _SURELY_PAST and born > (today or dt.date.today())):
        msg = "holds a birth date outside 1900 to today"
        raise IdentifierError(msg)
    if not synthetic and text[17] != id_check_digit(text[:17]):
        msg = "fails its check character (GB 11643); check the number"
        raise IdentifierError(msg)
    return text


NORMALISERS = {"phone": normalise_phone, "id_number": normalise_id_number}
"""Format name (as declared in the layer registry) → normaliser."""
