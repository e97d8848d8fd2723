"""Masks personal data and secrets in text before it is logged or stored.

    ember serve --log-content                 # request lines carry prompts/completions, redacted (default)
    ember serve --log-content --no-redact     # verbatim (only where the log is as protected as the data)

    redact("mail bob@example.com, card 4111 1111 1111 1111")  -> "mail [EMAIL], card [CARD]"

Masked: e-mail addresses, phone numbers, payment card numbers (13-19 digits passing the Luhn check), IBANs
(passing the mod-97 check), IPv4/IPv6 addresses, and API-key-like secrets (`sk-...`, `ember-...`, AWS/GitHub
style tokens, `Bearer ...`, long hex/base64 runs). Every pattern is bounded (no nested or overlapping
quantifiers), so matching is linear in the text. Names need NER: with the optional `presidio-analyzer`
package installed, `redact(..., names=True)` also masks PERSON entities (skipped silently when absent).
"""

import ipaddress
import re

_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}\b")
_SECRET = re.compile(
    r"\b(?:sk-[A-Za-z0-9_-]{16,200}|ember-[A-Za-z0-9_-]{20,200}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,200}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,200}|[A-Fa-f0-9]{32,128})\b|\bBearer\s{1,5}[A-Za-z0-9._~+/=-]{8,500}")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[A-Fa-f0-9]{1,4}:){2,7}[A-Fa-f0-9]{0,4}(?![\w:])|::1\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card(m: re.Match) -> str:
    digits = re.sub(r"\D", "", m.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_ok(digits) else m.group()


def _ip(m: re.Match) -> str:
    try:
        ipaddress.ip_address(m.group())
        return "[IP]"
    except ValueError:
        return m.group()


def _phone(m: re.Match) -> str:
    digits = sum(c.isdigit() for c in m.group())
    return "[PHONE]" if 7 <= digits <= 15 else m.group()


def redact(text: str, names: bool = False) -> str:
    if not isinstance(text, str) or not text:
        return text
    text = _SECRET.sub("[SECRET]", text)
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub(lambda m: "[IBAN]" if iban_ok(m.group()) else m.group(), text)
    text = _CARD.sub(_card, text)
    text = _IPV4.sub(_ip, text)
    text = _IPV6.sub(_ip, text)
    text = _PHONE.sub(_phone, text)
    if names:
        text = _names(text)
    return text


def redact_value(value, names: bool = False):
    """redact() applied to every string inside lists and dicts (log records, stored outputs)."""
    if isinstance(value, str):
        return redact(value, names)
    if isinstance(value, list):
        return [redact_value(v, names) for v in value]
    if isinstance(value, dict):
        return {k: redact_value(v, names) for k, v in value.items()}
    return value


def _names(text: str) -> str:
    try:
        from presidio_analyzer import AnalyzerEngine  # optional extra: `pip install ember[presidio]`
    except ImportError:
        return text
    found = AnalyzerEngine().analyze(text=text, entities=["PERSON"], language="en")
    for r in sorted(found, key=lambda r: -r.start):
        text = text[: r.start] + "[NAME]" + text[r.end:]
    return text
