"""Secrets in training data: API keys, tokens and private keys.

A key pasted into a training file leaks to the provider and into the model,
where a prompt can bring it back out; `validate` and `submit` refuse any,
whatever --allow-pii says, and `prepare --scrub-pii` replaces them.

What is found, in order of trust:

- key shapes: `detect-secrets`' regex plugins (AWS, GitHub, GitLab, Slack,
  Stripe, OpenAI with its T3BlbkFJ marker, JWT, SendGrid, Twilio, ...) and
  the shapes they lack: sk-... (OpenAI project and service keys, Anthropic),
  Together's tgp_v1_, Hugging Face's hf_, Google's AIza, Groq's gsk_,
  GitHub's github_pat_, a whole JWT;
- private key headers (detect-secrets) and the PEM block under one;
- the password in https://user:password@host, a bearer or basic token;
- a token right after what names it (MISTRAL_API_KEY=..., "my api key is
  ...", token: ...): Mistral keys have no prefix, Together's older ones are
  64 hex digits like a SHA-256;
- a random-looking token with no name (see _random_looking).

Hashes, UUIDs, identifiers (CamelCase, snake_case), typed ids such as
file-... or ftjob-... and base64 of text are not secrets. Only text with a
long run of mixed characters, a key header or a URL is scanned at all.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

_DROP_DIGITS = str.maketrans("", "", "0123456789")
# a secret is a long run of non-space characters; only runs that mix cases or
# letters and digits are looked at (a key header and a URL password aside)
_CHUNK = re.compile(r"\S{12,}")
_KEY_HEADERS = ("PRIVATE KEY", "PuTTY-User-Key")
# the block under a header (an 8192-bit RSA key is about 6.5 kB): bounded, so
# headers without an end do not make the search quadratic
_PEM = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
                  r"(?:.{0,16384}?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)?", re.S)
# shapes detect-secrets does not know (its OpenAI plugin needs the T3BlbkFJ marker)
_SHAPES = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d\d-)?[A-Za-z0-9_-]{20,}"  # OpenAI, Anthropic
    r"|tgp_v1_[A-Za-z0-9_-]{20,}"  # Together
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|AIza[0-9A-Za-z_-]{35}"  # Google
    r"|gsk_[A-Za-z0-9]{40,}"  # Groq
    r"|github_pat_[A-Za-z0-9_]{22,}"  # GitHub fine-grained (the plugin knows ghp_ and the like)
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # a whole JWT (the plugin stops before the signature)
    r")(?![\w-])")
# the password in https://user:password@host (detect-secrets' BasicAuth plugin gives no position)
_URL_PASSWORD = re.compile(r"://[^\s:/@{}]+:([^\s/@{}]+)@")
_BEARER = re.compile(r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9._~+/-]{16,}=*)")
# a token right after what names it: MISTRAL_API_KEY=..., "my api key is ...", token: ...
_KEY_WORDS = ("key", "token", "secret", "password", "passwd")
_NAMED = re.compile(r"(?i)(?<![a-z])(?:api[\s_-]?key|access[\s_-]?key|secret(?:[\s_-]?key)?|token|password|passwd)"
                    r"[\w ]{0,12}?(?:\s*[:=]\s*|\s+is\s+)[\"'`]?([A-Za-z0-9_+/=.-]{12,})")
_TOKEN = re.compile(r"(?<![\w+/=.$-])[A-Za-z0-9_+/-]{20,}={0,2}(?![\w+/=.$-])")
# file-..., ftjob-..., req_...: an id with its type in front (keys with a known prefix are shapes above)
_TYPED_ID = re.compile(r"[a-z]{2,12}(?:[-_][a-z]{2,12})*[-_]")
_HEX = re.compile(r"[0-9a-fA-F-]+")
_WORDLIKE = re.compile(r"[A-Z]?[a-z]{4,}")


@lru_cache(maxsize=1)
def _plugins() -> tuple:
    """detect-secrets' regex plugins that fit prose (not its keyword or quoted
    high-entropy plugins, written for source files; nor IP addresses): the
    private key one, those for key shapes, and a prefilter for the latter."""
    from detect_secrets.plugins.aws import AWSKeyDetector
    from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
    from detect_secrets.plugins.discord import DiscordBotTokenDetector
    from detect_secrets.plugins.github_token import GitHubTokenDetector
    from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
    from detect_secrets.plugins.jwt import JwtTokenDetector
    from detect_secrets.plugins.mailchimp import MailchimpDetector
    from detect_secrets.plugins.npm import NpmDetector
    from detect_secrets.plugins.openai import OpenAIDetector
    from detect_secrets.plugins.private_key import PrivateKeyDetector
    from detect_secrets.plugins.pypi_token import PypiTokenDetector
    from detect_secrets.plugins.sendgrid import SendGridDetector
    from detect_secrets.plugins.slack import SlackDetector
    from detect_secrets.plugins.square_oauth import SquareOAuthDetector
    from detect_secrets.plugins.stripe import StripeDetector
    from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
    from detect_secrets.plugins.twilio import TwilioKeyDetector

    shapes = tuple(cls() for cls in (
        AWSKeyDetector, AzureStorageKeyDetector, DiscordBotTokenDetector, GitHubTokenDetector,
        GitLabTokenDetector, JwtTokenDetector, MailchimpDetector, NpmDetector, OpenAIDetector,
        PypiTokenDetector, SendGridDetector, SlackDetector, SquareOAuthDetector, StripeDetector,
        TelegramBotTokenDetector, TwilioKeyDetector))
    # one pass over the text before 16 plugins' own passes: their patterns in
    # one alternation, case-insensitive (so it matches all they match, and more)
    any_shape = re.compile("|".join(f"(?:{r.pattern})" for p in shapes for r in p.denylist), re.IGNORECASE)
    return PrivateKeyDetector(), shapes, any_shape


def _entropy(token: str) -> float:
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in Counter(token).values())


def _random_looking(token: str) -> bool:
    """A generated key rather than a word, an identifier, a hash or a UUID:
    upper and lower case and digits, not hex, high entropy, the character
    class changes often (a capital starting a word is no change: about one
    change in two characters in a random string, one a word in CamelCase),
    and little of it is in word-like runs (Handler, account). Longer than
    256 characters it is a payload (base64 of an image), not a key.

    On random base62 keys of 24 to 64 characters this finds about 94%
    (benchmarks/pii.py measures it); keys a name or a known shape announces
    are found by the rules above whatever their entropy."""
    core = token.rstrip("=")
    n = len(core)
    if not 20 <= n <= 256 or core.upper() == core or core.lower() == core or core.translate(_DROP_DIGITS) == core:
        return False  # not upper and lower case and digits
    if _HEX.fullmatch(core) or _TYPED_ID.match(core) or _encoded_text(token):
        return False
    classes = [0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else 3 for c in core]
    changes = sum(a != b and not (a == 1 and b == 0) for a, b in zip(classes, classes[1:]))
    if changes < 0.3 * (n - 1):
        return False
    if sum(len(w) for w in _WORDLIKE.findall(core)) >= 0.4 * n:
        return False
    return _entropy(core) >= min(math.log2(n) - 1.0, 4.4)


def _encoded_text(token: str) -> bool:
    """Base64 of printable text (data in the example, not a key)."""
    import base64
    import binascii

    if len(token) % 4:
        return False
    try:
        decoded = base64.b64decode(token, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return False
    return decoded.replace("\n", " ").replace("\t", " ").isprintable()


def _key_like(s: str) -> bool:
    """A value worth calling a key once something names it: letters and
    digits, or both cases outside word-like runs (not "Authorization")."""
    if any(c.isdigit() for c in s):
        return any(c.isalpha() for c in s)
    return s.upper() != s != s.lower() and sum(len(w) for w in _WORDLIKE.findall(s)) < 0.4 * len(s)


def _mixed(s: str) -> bool:
    """Two of lower case, upper case and digits: a key, not a word."""
    return (s.upper() != s) + (s.lower() != s) + (s.translate(_DROP_DIGITS) != s) >= 2


def _at(text: str, values: set[str]) -> list[tuple[int, int]]:
    """Every place of each value a plugin found (plugins give no position)."""
    out = []
    for value in values:
        value = value.strip()
        start = text.find(value) if value else -1
        while start >= 0:
            out.append((start, start + len(value)))
            start = text.find(value, start + len(value))
    return out


def spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each secret in `text` (they may overlap)."""
    # a first search stops at the first run of 12 (most prose has none): cheaper
    # than splitting the text to measure its words
    first = _CHUNK.search(text)
    chunks = [m for m in _CHUNK.finditer(text, first.start()) if _mixed(m.group())] if first else []
    header = any(h in text for h in _KEY_HEADERS)
    if not chunks and not header and "://" not in text:
        return []
    key_plugin, shape_plugins, any_shape = _plugins()
    out: list[tuple[int, int]] = []
    if header:
        out += [(m.start(), m.end()) for m in _PEM.finditer(text)]
        out += _at(text, set(key_plugin.analyze_string(text)))
    if "@" in text:
        out += [(m.start(1), m.end(1)) for m in _URL_PASSWORD.finditer(text)]
    if not chunks:
        return out
    lower = text.lower()
    named = [p for p, words in ((_BEARER, ("bearer", "basic")), (_NAMED, _KEY_WORDS)) if any(w in lower for w in words)]
    for pattern in named:
        out += [(m.start(1), m.end(1)) for m in pattern.finditer(text) if _key_like(m.group(1))]
    joined = "\n".join(m.group() for m in chunks if m.end() - m.start() >= 20)  # no key shape is shorter
    for plugin in shape_plugins if joined and any_shape.search(joined) else ():
        out += _at(text, set(plugin.analyze_string(joined)))
    for chunk in chunks:
        for m in _SHAPES.finditer(text, chunk.start(), chunk.end()):
            if _mixed(m.group()[3:]):
                out.append((m.start(), m.end()))
        for m in _TOKEN.finditer(text, chunk.start(), chunk.end()):
            if _random_looking(m.group()):
                out.append((m.start(), m.end()))
    return out
