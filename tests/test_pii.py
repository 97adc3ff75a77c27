"""The personal data and secret detector: the labelled corpus's targets
(recall >= 0.95 per kind, no false positive), scrubbing, the phone region."""

import pytest

from ftctl.controller.preflight.pii import KINDS, PLACEHOLDERS, Detector, RegionError, check_region
from tests.pii_corpus import NEGATIVES, POSITIVES, REGIONAL, score


@pytest.fixture(scope="module")
def us():
    return Detector("US")


def test_the_corpus_is_big_enough_and_covers_every_kind():
    assert len(POSITIVES) >= 50 and len(NEGATIVES) >= 50
    per_kind = {kind: sum(k == kind for k, _, _ in POSITIVES) for kind in KINDS}
    assert min(per_kind.values()) >= 10, per_kind
    assert all(value in text for _, text, value in POSITIVES)


def test_recall_per_kind_and_no_false_positive(us):
    counts = score(us)
    for kind, c in counts.items():
        recall = c["tp"] / (c["tp"] + c["fn"])
        assert recall >= 0.95, (kind, c)
        assert c["fp"] == 0, (kind, c)


@pytest.mark.parametrize("text", NEGATIVES)
def test_no_negative_is_flagged(us, text):
    assert us.find(text) == [], [(m.kind, text[m.start:m.end]) for m in us.find(text)]


def test_scrub_replaces_each_value_with_its_kinds_placeholder(us):
    for kind, text, value in POSITIVES:
        scrubbed, counts = us.scrub(text)
        assert value not in scrubbed and PLACEHOLDERS[kind] in scrubbed, (kind, text, scrubbed)
        assert counts == {kind: 1}, (text, counts)
        assert us.find(scrubbed) == [], (text, scrubbed)  # nothing of the value is left to find
    for text in NEGATIVES:
        assert us.scrub(text) == (text, {})


def test_several_kinds_in_one_text_are_each_counted(us):
    text = ("Ann (ann@example.com, +1 415 555 0123) paid with 4111 1111 1111 1111 from "
            "DE89 3704 0044 0532 0130 00 and pasted AKIAIOSFODNN7EXAMPLE; order 123-456-789 on 2026-11-27.")
    assert us.count(text) == {"email": 1, "phone": 1, "card": 1, "iban": 1, "secret": 1}
    scrubbed, _ = us.scrub(text)
    assert scrubbed == ("Ann ([EMAIL], [PHONE]) paid with [CARD] from [IBAN] and pasted [SECRET]; "
                        "order 123-456-789 on 2026-11-27.")


@pytest.mark.parametrize("region,text,value", REGIONAL)
def test_a_national_number_is_read_in_the_configured_region(region, text, value, us):
    found = [text[m.start:m.end] for m in Detector(region).find(text) if m.kind == "phone"]
    assert found == [value]
    assert us.find(text) == []  # not a US number


def test_region_names_are_checked():
    assert check_region("gb") == "GB"
    with pytest.raises(RegionError, match="unknown phone region 'XX'"):
        check_region("XX")


def test_random_keys_without_a_name_are_secrets_and_identifiers_are_not(us):
    import random
    import string

    rng = random.Random(7)
    keys = ["".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32)) for _ in range(200)]
    found = sum(bool(us.find(f"use {k} with the client")) for k in keys)
    assert found >= 0.9 * len(keys)  # benchmarks/pii.py prints the exact rate
    for ident in ("AbstractSingletonProxyFactoryBean2", "X509Certificate2Collection", "getUserAccountById2024Handler",
                  "sha256WithRSAEncryption2048", "file-abc123XYZ456def789GHI"):
        assert us.find(f"see {ident} here") == [], ident
