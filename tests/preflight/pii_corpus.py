"""A labelled corpus for the personal data and secret detector
(controller/preflight/pii.py): each positive holds exactly one value of its
kind, each negative none of any kind. tests/test_pii.py asserts the targets
on it and benchmarks/pii.py prints precision and recall per kind.

Every value is fake on purpose: emails at example.com/.org/.net and the
.example/.test names; phone numbers in the ranges kept for fiction (US
555-01xx, UK Ofcom drama numbers, Australia's 0491 570 xxx) or plainly
sequential; card numbers the networks publish for testing; IBANs from the
standard's and banks' documentation; keys made of FAKE, EXAMPLE and
sequences (AWS's own documentation key, jwt.io's sample token).

Default phone region: US.
"""

# (kind, text, the value that must be found)
POSITIVES: list[tuple[str, str, str]] = [
    # -- email
    ("email", "Please write to jane.doe@example.com about the refund.", "jane.doe@example.com"),
    ("email", "cc: ops-team+alerts@mail.example.org", "ops-team+alerts@mail.example.org"),
    ("email", "My address is J.Smith@Example.NET, thanks", "J.Smith@Example.NET"),
    ("email", "Contact <support@corp.example> for access.", "support@corp.example"),
    ("email", "email:first_last99@sub.example.com", "first_last99@sub.example.com"),
    ("email", "The reviewer (a.b.c@dept.example.org) signed off.", "a.b.c@dept.example.org"),
    ("email", "Send the invoice to billing@acme.test.", "billing@acme.test"),
    ("email", "user%relay@example.com bounced twice", "user%relay@example.com"),
    ("email", "Forwarded from \"Ann\" <ann@example.net> on Monday", "ann@example.net"),
    ("email", "Reply to noreply@notifications.example.com if stuck", "noreply@notifications.example.com"),
    ("email", "Der Kunde schrieb an kunde@beispiel.example heute", "kunde@beispiel.example"),
    ("email", "{\"to\": \"x@example.org\", \"subject\": \"hi\"}", "x@example.org"),
    ("email", "mailto:sales@example.com?subject=quote", "sales@example.com"),
    ("email", "Ticket opened by o.neil@example.com yesterday", "o.neil@example.com"),
    # -- phone (default region US)
    ("phone", "Call me on +1 (415) 555-0123 after five.", "+1 (415) 555-0123"),
    ("phone", "Our office: (212) 555-0187.", "(212) 555-0187"),
    ("phone", "Reach the desk at 202-555-0143 any time", "202-555-0143"),
    ("phone", "Toll free 1-800-555-0199 for orders", "1-800-555-0199"),
    ("phone", "tel 415.555.0100", "415.555.0100"),
    ("phone", "Her mobile is +1 650 555 0110", "+1 650 555 0110"),
    ("phone", "Please call 4155550142 tomorrow", "4155550142"),
    ("phone", "tel:+14155550111", "+14155550111"),
    ("phone", "London office: +44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "Sydney mobile +61 491 570 156", "+61 491 570 156"),
    ("phone", "Berlin: +49 30 23125 456", "+49 30 23125 456"),
    ("phone", "Paris +33 1 99 00 12 34, ask for Marie", "+33 1 99 00 12 34"),
    ("phone", "Mumbai support +91 98765 43210", "+91 98765 43210"),
    ("phone", "Tokyo desk +81 3-1234-5678", "+81 3-1234-5678"),
    ("phone", "Madrid +34 612 345 678 (WhatsApp)", "+34 612 345 678"),
    ("phone", "Sao Paulo: +55 11 91234-5678", "+55 11 91234-5678"),
    ("phone", "Toronto line (416) 555-0199 ext. 12", "(416) 555-0199"),
    # -- payment card (the networks' test numbers)
    ("card", "Charge 4111 1111 1111 1111 exp 12/28", "4111 1111 1111 1111"),
    ("card", "card number 4012888888881881, cvv 123", "4012888888881881"),
    ("card", "Use 4242-4242-4242-4242 in the sandbox", "4242-4242-4242-4242"),
    ("card", "Visa 4000 0566 5566 5556 was declined.", "4000 0566 5566 5556"),
    ("card", "Mastercard 5555 5555 5555 4444", "5555 5555 5555 4444"),
    ("card", "MC: 5105105105105100", "5105105105105100"),
    ("card", "The 2-series card 2223 0031 2200 3222 works", "2223 0031 2200 3222"),
    ("card", "Amex 3782 822463 10005 on file", "3782 822463 10005"),
    ("card", "AMEX 371449635398431.", "371449635398431"),
    ("card", "Discover 6011 1111 1111 1117", "6011 1111 1111 1117"),
    ("card", "Diners Club 3056 9309 0259 04", "3056 9309 0259 04"),
    ("card", "JCB 3530111333300000 expired", "3530111333300000"),
    ("card", "JCB card 3566 0020 2036 0505", "3566 0020 2036 0505"),
    ("card", "UnionPay 6200000000000005", "6200000000000005"),
    # -- IBAN (examples from the standard and banks' documentation)
    ("iban", "Pay to GB82 WEST 1234 5698 7654 32 by Friday", "GB82 WEST 1234 5698 7654 32"),
    ("iban", "IBAN: DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
    ("iban", "Compte FR14 2004 1010 0505 0001 3M02 606.", "FR14 2004 1010 0505 0001 3M02 606"),
    ("iban", "NL91 ABNA 0417 1643 00 (ABN AMRO)", "NL91 ABNA 0417 1643 00"),
    ("iban", "Belgian account BE71 0961 2345 6769", "BE71 0961 2345 6769"),
    ("iban", "CH93 0076 2011 6238 5295 7", "CH93 0076 2011 6238 5295 7"),
    ("iban", "Transfer to ES91 2100 0418 4502 0005 1332 please", "ES91 2100 0418 4502 0005 1332"),
    ("iban", "IT60 X054 2811 1010 0000 0123 456 is the Italian one", "IT60 X054 2811 1010 0000 0123 456"),
    ("iban", "AT61 1904 3002 3457 3201", "AT61 1904 3002 3457 3201"),
    ("iban", "Swedish IBAN SE45 5000 0000 0583 9825 7466", "SE45 5000 0000 0583 9825 7466"),
    ("iban", "NO93 8601 1117 947 NOK", "NO93 8601 1117 947"),
    ("iban", "compact form GB29NWBK60161331926819 works too", "GB29NWBK60161331926819"),
    ("iban", "DE89370400440532013000", "DE89370400440532013000"),
    ("iban", "PL61 1090 1014 0000 0712 1981 2874 (PLN)", "PL61 1090 1014 0000 0712 1981 2874"),
    # -- secrets
    ("secret", "my key is sk-FAKE0000aaaaBBBB1111ccccDDDD2222eeee ok?", "sk-FAKE0000aaaaBBBB1111ccccDDDD2222eeee"),
    ("secret", "OPENAI_API_KEY=sk-proj-FAKE1234abcdEFGH5678ijklMNOP9012qrstUVWX",
     "sk-proj-FAKE1234abcdEFGH5678ijklMNOP9012qrstUVWX"),
    ("secret", "legacy sk-FAKEaaaaaaaa12345678T3BlbkFJFAKEbbbbbbbb12345678 in the log",
     "sk-FAKEaaaaaaaa12345678T3BlbkFJFAKEbbbbbbbb12345678"),
    ("secret", "anthropic: sk-ant-api03-FAKEfake0123456789FAKEfake0123456789abcd",
     "sk-ant-api03-FAKEfake0123456789FAKEfake0123456789abcd"),
    ("secret", "MISTRAL_API_KEY=FAKE0000mistral1111KEY2222abcdEF", "FAKE0000mistral1111KEY2222abcdEF"),
    ("secret", "Use FAKE9mQ2xR7pL4nW8vB3kT6yH1jD5sZ0 with the client", "FAKE9mQ2xR7pL4nW8vB3kT6yH1jD5sZ0"),
    ("secret", "together key tgp_v1_FAKEtogether0123456789abcdefGHIJ", "tgp_v1_FAKEtogether0123456789abcdefGHIJ"),
    ("secret", "TOGETHER_API_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
     "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
    ("secret", "AWS access key AKIAIOSFODNN7EXAMPLE was in the script", "AKIAIOSFODNN7EXAMPLE"),
    ("secret", "aws_secret_access_key = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("secret", "git clone with ghp_FAKEabcdefghijklmnopqrstuvwxyz012345", "ghp_FAKEabcdefghijklmnopqrstuvwxyz012345"),
    ("secret", "token github_pat_11FAKE0000000000000000_FAKEfakeFAKEfake1234",
     "github_pat_11FAKE0000000000000000_FAKEfakeFAKEfake1234"),
    ("secret", "SLACK_BOT=xoxb-1234567890-1234567890123-FAKEfakeFAKEfakeFAKEfake",
     "xoxb-1234567890-1234567890123-FAKEfakeFAKEfakeFAKEfake"),
    ("secret", "webhook https://hooks.slack.com/services/T00000000/B00000000/FAKEFAKEFAKEFAKEFAKEFAKE",
     "hooks.slack.com/services/T00000000/B00000000/FAKEFAKEFAKEFAKEFAKEFAKE"),
    ("secret", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAFAKEFAKEFAKE\n-----END RSA PRIVATE KEY-----",
     "MIIEowIBAAKCAQEAFAKEFAKEFAKE"),
    ("secret", "paste your -----BEGIN OPENSSH PRIVATE KEY----- here", "BEGIN OPENSSH PRIVATE KEY"),
    ("secret", "curl -H 'Authorization: Bearer FAKEtoken0123456789abcdef' https://api.example.com",
     "FAKEtoken0123456789abcdef"),
    ("secret", "jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0Ijox"
               "NTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
     "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"),
    ("secret", "stripe sk_live_FAKEFAKE1234567890abcdef in prod", "sk_live_FAKEFAKE1234567890abcdef"),
    ("secret", "SG.FAKEFAKEFAKEFAKEFAKE12.FAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE123",
     "SG.FAKEFAKEFAKEFAKEFAKE12.FAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKEFAKE123"),
    ("secret", "HF_TOKEN=hf_FAKEfakeFAKEfakeFAKEfakeFAKEfake12", "hf_FAKEfakeFAKEfakeFAKEfakeFAKEfake12"),
    ("secret", "maps key AIzaFAKE0123456789abcdefghijklmnopqrstu", "AIzaFAKE0123456789abcdefghijklmnopqrstu"),
    ("secret", "the wifi password: FAKEpass1234word", "FAKEpass1234word"),
]

# no personal data and no secret of any kind
NEGATIVES: list[str] = [
    # order numbers, invoice ids, tickets, references
    "Order 123-456-789 has shipped.",
    "Your order #4471-2209-118 is on its way",
    "order 2025061234 was refunded",
    "PO 2025-000123 approved by finance",
    "Invoice INV-2024-00123 is overdue",
    "invoice 2024061200042 paid in full",
    "See ticket JIRA-48213 and case 00912345",
    "Reference no. 555-123-4567 on the form",
    "tracking 1Z999AA10123456784 via UPS",
    "Room 1204, building 7, floor 12",
    "SKU 8806094939467 is out of stock",
    # IP addresses and ports
    "The server at 192.168.100.200 is down",
    "connect to 10.0.0.1:8080 then 172.16.254.1",
    "IPv6 2001:db8:85a3::8a2e:370:7334 is documentation space",
    "ping 203.0.113.45 and 198.51.100.7",
    # versions and builds
    "Upgrade to v2.14.3 before Friday",
    "Python 3.11.7 and numpy 1.26.4",
    "Windows 10.0.19041.1415 build",
    "release 1.2.3-rc.4+20240612 is tagged",
    "firmware 4.1.12.2048 fixes it",
    # dates and times
    "on 2026-11-27 12:30:45 revenue was 138000000",
    "Due 27/11/2026, or 11.27.2026 in the US style",
    "2026-11-27T12:30:45Z is the deadline",
    "between 2024/06/12 and 2024/07/01",
    "meeting 10:30-11:45 on 12.06.2024",
    "timestamp 1718200000 in seconds",
    # ISBNs and other check-digit numbers
    "ISBN 978-3-16-148410-0 is on the cover",
    "ISBN-10 0-306-40615-2",
    "ISBN-13: 9780306406157",
    "The classic Luhn example 79927398713 passes",
    "IMEI 490154203237518 of the handset",
    "card ending in 1111 was charged",
    "4111 1111 1111 1112 fails the check",
    "IBAN DE89 3704 0044 0532 0130 01 has a bad checksum",
    "see section DE12 of the manual",
    # money, measurements, maths
    "Revenue grew 12% to $1,234,567.89 in 2023",
    "pi is 3.14159265358979 and e is 2.718281828",
    "coordinates 37.7749, -122.4194",
    "between 1990 and 2000 about 4,500,000 units",
    "Chapter 12, pages 100-215",
    "the flight UA 1234 leaves at 10:30",
    "zip 94103-1234 in San Francisco",
    # identifiers, UUIDs and hashes in prose
    "request id 123e4567-e89b-12d3-a456-426614174000 failed",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 matches",
    "commit 3f2a1b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a fixed it",
    "the md5 is d41d8cd98f00b204e9800998ecf8427e",
    "class AbstractSingletonProxyFactoryBean extends it",
    "call getUserAccountById2024Handler first",
    "the HttpClient2ConnectionManagerFactory class",
    "internationalization and Donaudampfschifffahrtsgesellschaft are long words",
    "docs at https://docs.example.com/api/v2/fine-tuning/jobs",
    "installed under /usr/local/lib/python3.11/site-packages",
    "base model mistral-7b-instruct-v0.3 and open-mistral-nemo-2407",
    "gpt-4o-mini-2024-07-18 is the snapshot",
    "we use sk-learn and sk-video",
    "the task-queue-2024 worker restarted",
    # words near secret-like ones
    "BEGIN TRANSACTION; COMMIT;",
    "He was the bearer of bad news",
    "Bearer authentication sends a token in the header",
    "Authorization: Bearer <your token here>",
    "the api key must be kept secret",
    "your token is valid for 3600 seconds",
    "the password must be at least 12 characters",
    "Set OPENAI_API_KEY in your environment",
    # at signs that are not addresses
    "icon@2x.png and logo@3x.png",
    "ping @support on Slack",
    "pip install ftctl@1.2.3",
    # plain prose with numbers
    "We answered 1,204 tickets in 3 days, 98% within 2 hours.",
    "Step 1: open the app. Step 2: tap Settings.",
    "The model scored 87.5 on MMLU and 62.1 on GSM8K.",
]

# numbers read in a region other than the default (region, text, value)
REGIONAL: list[tuple[str, str, str]] = [
    ("GB", "ring 020 7946 0123 before noon", "020 7946 0123"),
    ("GB", "Leeds office 0113 496 0123", "0113 496 0123"),
    ("AU", "call 0491 570 006", "0491 570 006"),
    ("DE", "Telefon 030 23125 456", "030 23125 456"),
    ("FR", "appelez le 01 99 00 12 34", "01 99 00 12 34"),
]


def score(detector) -> dict[str, dict[str, int]]:
    """Per kind: tp (positives of the kind found over their value), fn
    (missed), fp (findings of the kind anywhere else: in negatives, or in a
    positive of another kind or away from its value)."""
    from ftctl.controller.preflight.pii import KINDS

    counts = {kind: {"tp": 0, "fn": 0, "fp": 0} for kind in KINDS}
    for kind, text, value in POSITIVES:
        at = text.index(value)
        hit = False
        for m in detector.find(text):
            if m.kind == kind and m.start < at + len(value) and at < m.end:
                hit = True
            else:
                counts[m.kind]["fp"] += 1
        counts[kind]["tp" if hit else "fn"] += 1
    for text in NEGATIVES:
        for m in detector.find(text):
            counts[m.kind]["fp"] += 1
    return counts
