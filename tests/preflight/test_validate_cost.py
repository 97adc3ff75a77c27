"""What validate's own checks cost beside the token count (issue 18.13):
their fast paths must say what the slow ones said. The throughput itself is
benchmarks/validate_large.py's (validate's CPU against a plain loop)."""

from ftctl.controller.preflight.dataset import check_line, conversation_digest
from ftctl.controller.preflight.secret_scan import spans

KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xY"


def test_the_digest_is_canonical_and_takes_what_orjson_refuses():
    a = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    b = [{"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"}]
    assert conversation_digest(a) == conversation_digest(b)  # key order is not content
    assert conversation_digest(a) != conversation_digest(a[:1] + [{"role": "assistant", "content": "hello!"}])
    assert conversation_digest(a, "qa") != conversation_digest(a, "legal") != conversation_digest(a)
    huge = [{"role": "user", "content": "hi", "n": 2 ** 70}]  # over 64 bits: the standard library's JSON
    assert conversation_digest(huge) == conversation_digest([dict(reversed(list(huge[0].items())))])


def test_a_long_run_is_found_wherever_it_starts():
    prose = "word " * 200
    assert spans(prose) == [] and spans(prose + "short words only") == []
    for text in (f"{prose} api_key={KEY}", f"{KEY} {prose}", f"{prose}\u00a0{KEY}\t{prose}"):
        assert any(text[s:e] == KEY for s, e in spans(text)), text


def test_found_kinds_are_counted_per_example():
    line = ('{"messages": [{"role": "user", "content": "mail ann@example.com or bob@example.org"}, '
            '{"role": "assistant", "content": "ann@example.com it is"}]}').encode()
    ex = check_line(1, line, provider="mistral", counter=None, context=None)
    assert ex.found == {"email": 3} and ex.digest is not None
    clean = check_line(2, b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
                          b'"content": "hello"}]}', provider="mistral", counter=None, context=None)
    assert clean.found == {} and clean.ok
