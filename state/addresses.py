"""Email address normalisation: trim, lower-case, and a fast syntactic check.

Deliberately nothing cleverer (no dot or plus folding, no DNS): an opt-out
belongs to the address exactly as the recipient wrote it, case aside.
"""

import re

MAX_ADDRESS = 254
MAX_LOCAL = 64
# RFC 5321's 253-character domain limit needs no check of its own: within 254 characters in all,
# after a local part and the @, a domain has at most 252.

# \w is Unicode-aware, so internationalised addresses (RFC 6531) pass.
_ATOM = r"[\w!#$%&'*+/=?^`{|}~-]+"
_LABEL = r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")

# The common case, checked first because imports run it for every row: an ASCII address of at
# most _SHORT characters. No part of one can exceed its length limit, and on lower-cased ASCII
# \w is [0-9a-z_], so this pattern matches exactly the addresses _ADDRESS accepts; a label is
# spelled without a length bound so that possessive quantifiers can skip all backtracking.
# Anything it does not match (non-ASCII, longer, or invalid) takes the full check below.
_SHORT = 64
_SHORT_ATOM = r"[0-9a-z_!#$%&'*+/=?^`{|}~-]++"
_SHORT_LABEL = r"[0-9a-z]++(?:-++[0-9a-z]++)*+"
_SHORT_ASCII = re.compile(rf"{_SHORT_ATOM}(?:\.{_SHORT_ATOM})*+@{_SHORT_LABEL}(?:\.{_SHORT_LABEL})++")


# The short ASCII check over the lines of a block (addresses joined by newlines, none longer than
# _SHORT): every line is one that _SHORT_ASCII matches whole. No part of _SHORT_ASCII matches a newline,
# so each line is judged exactly as fullmatch judges it alone.
_SHORT_LINES = re.compile(rf"{_SHORT_ASCII.pattern}(?:\n{_SHORT_ASCII.pattern})*+")


class InvalidAddress(ValueError):
    """The text is not a syntactically valid email address; the message says why."""


def normalise_address(raw: str) -> str:
    """Return the normalised address, or raise InvalidAddress naming what is wrong."""
    address = raw.strip().lower()
    if len(address) <= _SHORT and _SHORT_ASCII.fullmatch(address):
        return address
    if len(address) <= MAX_ADDRESS and _ADDRESS.fullmatch(address):
        local = address.rpartition("@")[0]
        if len(local) <= MAX_LOCAL:
            return address
    raise InvalidAddress(explain_invalid(address))


def normalise_block(raws: list[str]) -> list[str | None]:
    """normalise_address of each text where the short ASCII check takes it, else None (ask normalise_address).

    One C pass over the whole block when every text is ASCII on one line and all pass, which is
    the usual case of an import's ordinary rows; otherwise the short check text by text.
    """
    stripped = list(map(str.strip, raws))
    text = "\n".join(stripped).lower()
    if text.isascii() and text.count("\n") == len(raws) - 1:
        if raws and max(map(len, stripped)) <= _SHORT and _SHORT_LINES.fullmatch(text):
            return text.split("\n")
        lowered = text.split("\n")
    else:
        lowered = [address.lower() for address in stripped]
    short = _SHORT_ASCII.fullmatch
    return [address if len(address) <= _SHORT and short(address) else None for address in lowered]


def is_valid_address(raw: str) -> bool:
    """True when normalise_address would accept the text."""
    try:
        normalise_address(raw)
    except InvalidAddress:
        return False
    return True


def explain_invalid(address: str) -> str:
    """Say, in a few words, why an (already trimmed, lower-cased) address is invalid."""
    if not address:
        return "empty address"
    if len(address) > MAX_ADDRESS:
        return f"address longer than {MAX_ADDRESS} characters"
    if any(ch.isspace() for ch in address):
        return "address contains white space"
    if "@" not in address:
        return "no @ in address"
    if address.count("@") > 1:
        return "more than one @ in address"
    local, _, domain = address.partition("@")
    if not local:
        return "nothing before the @"
    if not domain:
        return "no domain after the @"
    if len(local) > MAX_LOCAL:
        return f"part before the @ longer than {MAX_LOCAL} characters"
    if "." not in domain:
        return f"domain {domain!r} has no dot"
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return "misplaced dot before the @"
    if not re.fullmatch(rf"{_ATOM}(?:\.{_ATOM})*", local):
        return "invalid character before the @"
    return f"invalid domain {domain!r}"
