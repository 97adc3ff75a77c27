"""Personal data and secrets in a message's text: what `validate` counts,
`submit` refuses and `prepare --scrub-pii` replaces.

Five kinds, each found by the library that knows its rules, behind a cheap
prefilter so that text without a candidate costs a few regex scans:

- email: an address (a regex: finding addresses in prose is what one is for);
- phone: `phonenumbers` (Google's libphonenumber metadata), leniency
  STRICT_GROUPING, numbers without a country code read in a default region;
  a bare run of digits counts only after a word such as "call" or "phone",
  so order numbers, invoice ids, dates, IP addresses, versions and ISBNs
  are not phones;
- card: digits that pass the Luhn check (`python-stdnum`) and have a card
  network's length and prefix;
- iban: country format and mod-97 checksum (`python-stdnum`);
- secret: API keys, tokens and private keys (controller/preflight/secret_scan.py:
  `detect-secrets`' plugins and the shapes they lack, bearer tokens, a token
  named as a key, random-looking tokens).

A match is a kind and a span; nothing here keeps or prints the matched text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from ftctl.controller.preflight import secret_scan

KINDS = ("email", "phone", "card", "iban", "secret")
PERSONAL = ("email", "phone", "card", "iban")  # --allow-pii allows these; a secret never
PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]", "secret": "[SECRET]"}
DEFAULT_REGION = "US"
_DROP_DIGITS = str.maketrans("", "", "0123456789")
_A_DIGIT = re.compile(r"[0-9]")
_NAMES = {"email": ("email address", "email addresses"), "phone": ("phone number", "phone numbers"),
          "card": ("card number", "card numbers"), "iban": ("IBAN", "IBANs"), "secret": ("secret", "secrets")}


def describe(kind: str, n: int) -> str:
    """"1 email address", "3 IBANs"."""
    one, many = _NAMES[kind]
    return f"{n:,} {one if n == 1 else many}"


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    start: int
    end: int


class RegionError(ValueError):
    pass


def check_region(region: str) -> str:
    """A region phonenumbers knows (ISO 3166 alpha-2, e.g. US, GB, DE)."""
    import phonenumbers

    code = (region or "").strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise RegionError(f"unknown phone region {region!r} (a two-letter country code, e.g. US, GB, DE, FR)")
    return code


# -- email ----------------------------------------------------------------------

EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
                   r"(?![\w-]|:[\w/~])")  # git@github.com:org/repo is a remote, not an address
# file names such as icon@2x.png are not addresses
_NOT_A_TLD = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "tif", "tiff", "pdf"}


def _emails(text: str) -> list[Match]:
    if "@" not in text:
        return []
    return [Match("email", m.start(), m.end()) for m in EMAIL.finditer(text)
            if m.group().rsplit(".", 1)[1].lower() not in _NOT_A_TLD]


# -- phone ----------------------------------------------------------------------

# runs of digits and separators worth asking phonenumbers about (its matcher
# costs 40 to 170 us a call, so the checks below turn most runs away first)
_PHONE_WINDOW = re.compile(r"(?<![\w.])(?:\+\s?)?\(?\d[\d\s().\-/]{5,24}\d\)?")
_SEPARATOR = re.compile(r"[\s().\-/]")
# a bare run of digits is a phone only when the text says so just before it
_PHONE_WORD = re.compile(r"(?i)(?:\b(?:call|phone|tel|telephone|mobile|cell|cellphone|fax|sms|text|whatsapp|dial"
                         r"|ring|reach|telefon|téléphone|tél|handy)\b|\b(?:ph|mob|tel)\.)[^\d\n]{0,16}$")
_ID_BEFORE = re.compile(r"(?i)(?:#|\bno\.?|\bisbn(?:-1[03])?:?|\bv(?:ersion)?\.?)\s*$")
_NOT_A_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}"  # an IPv4 address
                          r"|\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[ T]\d{1,2})?|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")  # a date


@lru_cache(maxsize=8)
def _national_min(region: str) -> int:
    """The fewest digits of a national number in the region (US: 10)."""
    from phonenumbers import PhoneMetadata

    metadata = PhoneMetadata.metadata_for_region(region)
    lengths = [n for n in (metadata.general_desc.possible_length or ()) if n > 0] if metadata else []
    return min(lengths, default=7)


def _phones(text: str, region: str) -> list[Match]:
    out: list[Match] = []
    for window in _PHONE_WINDOW.finditer(text):
        run = window.group()
        digits = len(run) - len(run.translate(_DROP_DIGITS))
        international = run.startswith("+")
        if digits < (7 if international else _national_min(region)) or _NOT_A_PHONE.fullmatch(run):
            continue
        before = text[max(0, window.start() - 24):window.start()]
        if _ID_BEFORE.search(before):
            continue  # order #..., no. ..., ISBN ..., v2...
        if not international and not _SEPARATOR.search(run) and not _PHONE_WORD.search(before):
            continue  # 2025061234: an order number unless "call", "phone" ... comes just before
        import phonenumbers
        from phonenumbers import Leniency

        lo = max(0, window.start() - 2)
        snippet = text[lo:window.end() + 2]
        for m in phonenumbers.PhoneNumberMatcher(snippet, region, leniency=Leniency.STRICT_GROUPING):
            start, end = lo + m.start, lo + m.end
            raw = m.raw_string
            before = text[max(0, start - 24):start]
            if _NOT_A_PHONE.fullmatch(raw) or _ID_BEFORE.search(before):
                continue
            if not raw.startswith("+") and not _SEPARATOR.search(raw) and not _PHONE_WORD.search(before):
                continue
            out.append(Match("phone", start, end))
    return out


# -- payment card ---------------------------------------------------------------

# a run of 12 digits or more with spaces or dashes, found fast (no lookbehind), then checked
_CARD_RUN = re.compile(r"\d[\d -]{10,}\d")
_CARD = re.compile(r"(?<![\w-])(?<!\d[.,])(?:\d{12,19}|\d{3,6}(?:[ -]\d{2,6}){1,4})(?![\w-]|[.,]\d|[ -]\d)")
# (first digits, lengths): card networks' IIN ranges
_NETWORKS = (
    (("4",), (13, 16, 19)),  # Visa
    (tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)), (16,)),  # Mastercard
    (("34", "37"), (15,)),  # American Express
    (("6011", "65") + tuple(str(p) for p in range(644, 650)), (16, 17, 18, 19)),  # Discover
    (("300", "301", "302", "303", "304", "305", "36", "38", "39"), (14, 15, 16, 17, 18, 19)),  # Diners
    (tuple(str(p) for p in range(3528, 3590)), (16, 17, 18, 19)),  # JCB
    (("62", "81"), (16, 17, 18, 19)),  # UnionPay
    (("50",) + tuple(str(p) for p in range(56, 70)), tuple(range(12, 20))),  # Maestro
)


def _card_network(digits: str) -> bool:
    return any(len(digits) in lengths and digits.startswith(prefixes) for prefixes, lengths in _NETWORKS)


def _cards(text: str) -> list[Match]:
    from stdnum import luhn

    out = []
    for run in _CARD_RUN.finditer(text):
        # endpos 2 past the run, so the lookahead still sees what follows it
        for m in _CARD.finditer(text, run.start(), run.end() + 2):
            digits = m.group().replace(" ", "").replace("-", "")
            if 12 <= len(digits) <= 19 and _card_network(digits) and luhn.is_valid(digits):
                out.append(Match("card", m.start(), m.end()))
    return out


# -- IBAN -------------------------------------------------------------------------

_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{1,4}){3,8})(?![\w-])")
_IBAN_HINT = re.compile(r"[A-Z]{2}\d{2}")


def _ibans(text: str) -> list[Match]:
    if not _IBAN_HINT.search(text):
        return []
    from stdnum import iban

    out = []
    for m in _IBAN.finditer(text):
        groups = m.group().split(" ")
        # the longest run of groups that is an IBAN: a capitalised word after one may follow
        for n in range(len(groups), 0, -1):
            if iban.is_valid("".join(groups[:n])):
                out.append(Match("iban", m.start(), m.start() + len(" ".join(groups[:n]))))
                break
    return out


# -- secrets ----------------------------------------------------------------------

def _secrets(text: str) -> list[Match]:
    return [Match("secret", start, end) for start, end in secret_scan.spans(text)]


# -- all kinds --------------------------------------------------------------------

def _merged(matches: list[Match]) -> list[Match]:
    """Overlapping matches of one kind as one (a key two patterns found)."""
    out: list[Match] = []
    for m in sorted(matches, key=lambda m: m.start):
        if out and m.start < out[-1].end:
            out[-1] = Match(m.kind, out[-1].start, max(out[-1].end, m.end))
        else:
            out.append(m)
    return out


class Detector:
    """Finds each kind in a text; one per process (phonenumbers keeps its
    metadata loaded)."""

    def __init__(self, phone_region: str = DEFAULT_REGION):
        self.region = check_region(phone_region)

    def find(self, text: str) -> list[Match]:
        """Non-overlapping matches in text order. Where two overlap, the
        earlier kind in this order wins: secret, card, iban, email, phone
        (an IBAN or a card holds digit runs a phone number could match).

        Each detector runs only where its cheap precondition holds (enough
        digits, an @, a long token): most text costs a few microseconds."""
        digits = len(text) - len(text.translate(_DROP_DIGITS)) if _A_DIGIT.search(text) else 0
        found = [
            _secrets(text),
            _cards(text) if digits >= 12 else (),
            _ibans(text) if digits >= 2 else (),
            _emails(text),
            _phones(text, self.region) if digits >= 7 else (),
        ]
        if not any(found):
            return []
        kept: list[Match] = []
        for matches in found:
            for m in _merged(matches):
                if not any(m.start < k.end and k.start < m.end for k in kept):
                    kept.append(m)
        return sorted(kept, key=lambda m: m.start)

    def count(self, text: str) -> Counter:
        return Counter(m.kind for m in self.find(text))

    def scrub(self, text: str) -> tuple[str, Counter]:
        """Every match replaced by its kind's placeholder, e.g. [EMAIL]."""
        matches = self.find(text)
        for m in reversed(matches):
            text = text[:m.start] + PLACEHOLDERS[m.kind] + text[m.end:]
        return text, Counter(m.kind for m in matches)
