"""The personal data and secret detector: the labelled corpus's targets
(recall >= 0.95 per kind, no false positive), scrubbing, the phone region,
and what validate, prepare and submit do with each kind."""

import json

import pytest

from ftctl.controller.preflight.pii import KINDS, PLACEHOLDERS, Detector, RegionError, check_region
from tests.conftest import run_ftctl, run_ftctl_many
from tests.preflight.pii_corpus import NEGATIVES, POSITIVES, REGIONAL, score


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
    import base64

    payload = base64.b64encode(rng.randbytes(600)).decode()  # an image pasted as base64: data, not a key
    assert us.find(f"the logo is {payload} in base64") == []


# -- the commands ----------------------------------------------------------------

def _example(text):
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "noted"}]}


def _write(path, texts):
    path.write_text("".join(json.dumps(_example(t)) + "\n" for t in texts))
    return path


def test_validate_reports_kinds_counts_and_lines_but_never_the_values(tmp_path):
    pii = [(kind, text) for kind, text, _ in POSITIVES if kind != "secret"]
    path = _write(tmp_path / "pii.jsonl", NEGATIVES[:5] + [text for _, text in pii])
    lines = {kind: [n for n, (k, _) in enumerate(pii, start=6) if k == kind] for kind in ("email", "phone", "card", "iban")}
    p, allowed = run_ftctl_many(["validate", str(path)], ["validate", str(path), "--allow-pii", "--json"])
    assert p.returncode == 1
    (line,) = [l for l in p.stdout.splitlines() if l.startswith("personal data:")]
    assert line.startswith(f"personal data: {len(lines['email'])} email addresses "
                           f"(lines {', '.join(map(str, lines['email'][:10]))} and {len(lines['email']) - 10} more); "
                           f"{len(lines['phone'])} phone numbers")
    assert f"; {len(lines['card'])} card numbers" in line and f"; {len(lines['iban'])} IBANs (" in line
    assert "secrets" not in p.stdout and "--allow-pii" in p.stdout.splitlines()[-1]
    data = json.loads(allowed.stdout)
    assert allowed.returncode == 0 and data["clean"] is True and data["phone_region"] == "US"
    assert data["personal_data"]["card"] == {"count": len(lines["card"]), "lines": lines["card"]}  # every line
    assert data["secrets"] == {"count": 0, "lines": []}
    for _, _, value in POSITIVES:
        assert value not in p.stdout + p.stderr + allowed.stdout + allowed.stderr


def test_a_pasted_key_fails_validate_even_with_allow_pii(tmp_path):
    secrets = [(text, value) for kind, text, value in POSITIVES if kind == "secret"]
    path = _write(tmp_path / "keys.jsonl", ["hello"] + [text for text, _ in secrets])
    p, as_json = run_ftctl_many(["validate", str(path), "--allow-pii"], ["validate", str(path), "--allow-pii", "--json"])
    assert p.returncode == 1
    assert f"secrets: {len(secrets)} secrets (lines 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 and {len(secrets) - 10} more)" \
        in p.stdout
    assert "never allowed in training data, not even with --allow-pii" in p.stdout
    data = json.loads(as_json.stdout)
    assert data["clean"] is False and data["secrets"]["count"] == len(secrets)
    assert "secret" not in data["personal_data"]
    for _, value in secrets:
        assert value not in p.stdout + p.stderr + json.dumps(data)


def test_prepare_scrubs_every_kind_and_prints_counts_per_kind(tmp_path):
    path = _write(tmp_path / "raw.jsonl", [text for _, text, _ in POSITIVES] + NEGATIVES)
    out = tmp_path / "clean.jsonl"
    p, check = run_ftctl_many(["prepare", str(path), str(out), "--scrub-pii"], ["validate", str(out)])
    assert p.returncode == 0, p.stderr
    per_kind = {kind: sum(k == kind for k, _, _ in POSITIVES) for kind in KINDS}
    assert (f"replaced: {per_kind['email']} email addresses, {per_kind['phone']} phone numbers, "
            f"{per_kind['card']} card numbers, {per_kind['iban']} IBANs, {per_kind['secret']} secrets") in p.stdout
    written = out.read_text()
    assert all(value not in written for _, _, value in POSITIVES)
    assert all(json.dumps(t)[1:-1] in written for t in NEGATIVES)  # the negatives pass through untouched
    # lines that became the same once scrubbed ("IBAN: [IBAN]") are dropped like any duplicate
    assert "duplicate once scrubbed" in p.stdout
    assert check.returncode == 0, check.stdout
    for _, _, value in POSITIVES:
        assert value not in p.stdout + p.stderr


def test_submit_refuses_a_secret_even_with_allow_pii(make_config):
    cfg = make_config(agents=("qa",))
    _write(cfg.parent / "data" / "qa.jsonl", ["deploy with sk-FAKE0000aaaaBBBB1111ccccDDDD2222eeee"])
    p = run_ftctl("submit", "qa", "--allow-pii", config=cfg)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr
    assert "holds 1 secret (API keys, tokens or private keys; first at line 1)" in p.stderr
    assert "not even with --allow-pii" in p.stderr and "sk-FAKE" not in p.stderr
    assert not (cfg.parent / "ftctl.db").exists()


def test_the_phone_region_comes_from_the_option_or_the_config(make_config, tmp_path):
    london = _write(tmp_path / "uk.jsonl", ["ring 020 7946 0123 before noon"])
    cfg = make_config(agents=("qa",), extra='\n[preflight]\nphone_region = "GB"\n')
    _write(cfg.parent / "data" / "qa.jsonl", ["ring 020 7946 0123 before noon"])
    us, gb, by_config, overridden, p, bad = run_ftctl_many(
        ["validate", str(london)], ["validate", str(london), "--phone-region", "gb"],
        ["--config", str(cfg), "validate", str(london)],
        ["--config", str(cfg), "validate", str(london), "--phone-region", "US"], ["--config", str(cfg), "submit", "qa"],
        ["validate", str(london), "--phone-region", "XX"])
    assert us.returncode == 0  # not a US number
    assert "1 phone number (line 1)" in gb.stdout
    assert "1 phone number (line 1)" in by_config.stdout
    assert overridden.returncode == 0
    assert p.returncode == 2 and "holds personal data (1 phone; first at line 1)" in p.stderr
    assert bad.returncode == 2 and bad.stderr.strip().endswith("--phone-region: unknown phone region 'XX' "
                                                               "(a two-letter country code, e.g. US, GB, DE, FR)")
    cfg.write_text(cfg.read_text().replace('phone_region = "GB"', 'phone_region = "UK"'))
    p = run_ftctl("validate", str(london), config=cfg)
    assert p.returncode == 2 and "preflight.phone_region: unknown phone region 'UK'" in p.stderr
    assert len(p.stderr.splitlines()) == 1
