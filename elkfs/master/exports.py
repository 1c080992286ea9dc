"""mfsexports.cfg: which clients may mount what, and with which rights (MooseFS's format).

    ADDRESS  DIRECTORY  [OPTIONS]          one rule a line; `#` (first, or after a
                                           space) starts a comment

ADDRESS is `*`, `A.B.C.D`, `A.B.C.D-E.F.G.H` (inclusive), `A.B.C.D/BITS` or
`A.B.C.D/NETMASK`. DIRECTORY is `/` or a path from the root (it becomes the client's
root), or `.`: the meta file system (the trash). OPTIONS, comma-separated:

    ro, readonly            read only (the default)
    rw, readwrite           read and write
    alldirs                 any directory below DIRECTORY may be mounted as the root
    admin                   operators' commands (`mfscli -C`: maintenance, step-down, ...)
    maproot=USER[:GROUP]    what root (uid 0) becomes (default 999:999; maproot=0: root stays)
    mapall=USER[:GROUP]     what every other user becomes
    password=TEXT           the client must prove it knows TEXT (challenge and response)
    md5pass=HEX             the same, given as the MD5 of the password
    mingoal=N, maxgoal=N    goals a client may set (1-9; others: EPERM)
    mintrashtime=T, maxtrashtime=T
                            trash times a client may set (seconds, or like 1d12h, 2w: W D H
                            M S in this order; others: EPERM)
    dynamicip, ignoregid    accepted for MooseFS's sake; they change nothing here

USER and GROUP are names (resolved on the master) or numbers; without GROUP, the user's
primary group. Which line applies, as in MooseFS: of the lines that match the client's
address, the directory it asks for and the passwords it proved, the most permissive one
(read-write before read-only, then root unmapped, then `admin`, then with a password,
then the longest DIRECTORY); among equals, the first. No line: the client is refused.

Passwords never cross the wire: the master sends a random challenge, the client answers
HMAC-SHA256(key = MD5(password), challenge) (`proof`); the master keeps only the MD5.

Pure logic, no I/O (names are looked up with `pwd`/`grp` while parsing).
"""

from __future__ import annotations

import grp
import hmac
import pwd
import re
from dataclasses import dataclass

from ..proto.password import password_digest, password_proof
from .namespace import MAX_GOAL

META = "."
MAX_TRASHTIME = (1 << 32) - 1
DEFAULT_MAPROOT = (999, 999)  # MooseFS's default maproot
# When there is no mfsexports.cfg: everyone may mount anything, with every right (what
# MooseFS ships as its default file; MooseFS itself refuses everyone without one).
DEFAULT_TEXT = """\
*\t/\trw,alldirs,admin,maproot=0:0
*\t.\trw
"""


class ExportsError(ValueError):
    """A line that does not parse; the message names the source and the line."""


@dataclass(frozen=True)
class Rule:
    line: int
    low: int  # address range, inclusive, IPv4 as an integer
    high: int
    path: tuple[bytes, ...] | None  # components of DIRECTORY; None: the meta file system
    readonly: bool = True
    alldirs: bool = False
    admin: bool = False
    maproot: tuple[int, int] = DEFAULT_MAPROOT
    mapall: tuple[int, int] | None = None
    password: bytes | None = None  # MD5 of the password
    mingoal: int = 1
    maxgoal: int = MAX_GOAL
    mintrashtime: int = 0
    maxtrashtime: int = MAX_TRASHTIME

    @property
    def meta(self) -> bool:
        return self.path is None

    @property
    def any_address(self) -> bool:
        return self.low == 0 and self.high == 0xFFFFFFFF

    def rank(self) -> tuple:
        """How permissive the line is (higher wins); the earlier line wins a tie."""
        return (not self.readonly, self.maproot[0] == 0, self.admin,
                self.password is not None, len(self.path or ()), -self.line)


# ---------------------------------------------------------------- parsing

_COMMENT = re.compile(r"\s#")  # a comment after a rule (a password may hold a "#")


def parse(text: str, source: str = "mfsexports.cfg") -> list[Rule]:
    """The rules of an exports file, in order; `ExportsError` names the first bad line."""
    rules = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT.split(raw.strip(), 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            rules.append(parse_line(line, lineno))
        except ValueError as e:
            raise ExportsError(f"{source}:{lineno}: {e}: {raw.strip()!r}") from None
    return rules


def parse_line(line: str, lineno: int = 0) -> Rule:
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected ADDRESS DIRECTORY [OPTIONS]")
    if len(parts) > 3:
        raise ValueError("options must not contain spaces")
    low, high = parse_address(parts[0])
    path = None if parts[1] == META else parse_directory(parts[1])
    fields: dict = {"line": lineno, "low": low, "high": high, "path": path}
    if len(parts) == 3:
        fields.update(parse_options(parts[2]))
    if fields.get("mingoal", 1) > fields.get("maxgoal", MAX_GOAL):
        raise ValueError("mingoal is above maxgoal")
    if fields.get("mintrashtime", 0) > fields.get("maxtrashtime", MAX_TRASHTIME):
        raise ValueError("mintrashtime is above maxtrashtime")
    return Rule(**fields)


def parse_ip(text: str) -> int:
    octets = text.split(".")
    if len(octets) != 4 or not all(o.isdigit() and o.isascii() and len(o) <= 3
                                   for o in octets):
        raise ValueError(f"bad IPv4 address {text!r}")
    value = 0
    for o in octets:
        if int(o) > 255:
            raise ValueError(f"bad IPv4 address {text!r}")
        value = value << 8 | int(o)
    return value


def parse_address(text: str) -> tuple[int, int]:
    """(lowest, highest) address of `*`, `A.B.C.D`, `A-B`, `A/BITS` or `A/NETMASK`."""
    if text == "*":
        return 0, 0xFFFFFFFF
    if "-" in text:
        first, _, last = text.partition("-")
        low, high = parse_ip(first), parse_ip(last)
        if low > high:
            raise ValueError(f"range {text!r} ends before it starts")
        return low, high
    if "/" in text:
        net, _, mask_text = text.partition("/")
        base = parse_ip(net)
        if mask_text.isdigit() and mask_text.isascii():
            bits = int(mask_text)
            if bits > 32:
                raise ValueError(f"netmask /{bits} is more than 32 bits")
            mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
        else:
            mask = parse_ip(mask_text)
            inverted = ~mask & 0xFFFFFFFF
            if inverted & (inverted + 1):
                raise ValueError(f"netmask {mask_text} is not contiguous")
        low = base & mask
        return low, low | (~mask & 0xFFFFFFFF)
    ip = parse_ip(text)
    return ip, ip


def split_path(text: str) -> tuple[bytes, ...]:
    """The components of an absolute path; `.` parts dropped, `..` refused."""
    if not text.startswith("/"):
        raise ValueError(f"directory {text!r} must be / or start with /")
    parts = tuple(p.encode("utf-8", "surrogateescape") for p in text.split("/") if p and p != ".")
    if b".." in parts:
        raise ValueError(f"directory {text!r} must not contain '..'")
    return parts


parse_directory = split_path


def parse_ids(text: str, option: str) -> tuple[int, int]:
    """USER[:GROUP] as (uid, gid): names through the master's passwd and group files."""
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise ValueError(f"{option} expects USER[:GROUP]")
    gid = None
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ValueError(f"{option}: no group named {group!r}") from None
    if user.isdigit():
        uid = int(user)
        if gid is None:
            try:
                gid = pwd.getpwuid(uid).pw_gid
            except KeyError:
                raise ValueError(f"{option}: uid {uid} has no passwd entry: "
                                 "give its group (UID:GID)") from None
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"{option}: no user named {user!r}") from None
        uid = entry.pw_uid
        gid = entry.pw_gid if gid is None else gid
    if uid > 0xFFFFFFFF or gid > 0xFFFFFFFF:
        raise ValueError(f"{option}: ids must be below 2^32")
    return uid, gid


def parse_duration(text: str) -> int:
    """Seconds: a plain number, or #W#D#H#M#S parts in this order (any may be left out)."""
    if text.isdigit() and text.isascii():
        value = int(text)
    else:
        value, rest, units = 0, text.upper(), "WDHMS"
        seconds = {"W": 604800, "D": 86400, "H": 3600, "M": 60, "S": 1}
        if not rest:
            raise ValueError("empty duration")
        while rest:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            if digits == 0 or digits == len(rest) or not rest[:digits].isascii():
                raise ValueError(f"bad duration {text!r} (seconds, or like 1d12h)")
            unit = rest[digits]
            if unit not in units:
                raise ValueError(f"bad duration {text!r}: units W D H M S, in this order")
            value += int(rest[:digits]) * seconds[unit]
            units = units[units.index(unit) + 1:]
            rest = rest[digits + 1:]
    if value > MAX_TRASHTIME:
        raise ValueError(f"duration {text!r} is above {MAX_TRASHTIME} seconds")
    return value


def _goal(text: str, option: str) -> int:
    if not (text.isdigit() and text.isascii() and 1 <= int(text) <= MAX_GOAL):
        raise ValueError(f"{option} must be 1-{MAX_GOAL}")
    return int(text)


VALUED_OPTIONS = ("maproot", "mapall", "password", "md5pass", "mingoal", "maxgoal",
                  "mintrashtime", "maxtrashtime")


def parse_options(text: str) -> dict:
    fields: dict = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not key:
            raise ValueError("empty option")
        if key in ("ro", "readonly", "rw", "readwrite", "alldirs", "admin", "dynamicip",
                   "ignoregid"):
            if eq:
                raise ValueError(f"option {key} takes no value")
            if key in ("ro", "readonly", "rw", "readwrite"):
                fields["readonly"] = key in ("ro", "readonly")
            elif key in ("alldirs", "admin"):
                fields[key] = True
            continue
        if key not in VALUED_OPTIONS:
            raise ValueError(f"unknown option {key!r}")
        if not eq:
            raise ValueError(f"option {key} needs a value ({key}=...)")
        if key == "maproot":
            fields["maproot"] = parse_ids(value, key)
        elif key == "mapall":
            fields["mapall"] = parse_ids(value, key)
        elif key == "password":
            if not value:
                raise ValueError("empty password")
            fields["password"] = password_digest(value.encode("utf-8", "surrogateescape"))
        elif key == "md5pass":
            try:
                digest = bytes.fromhex(value)
            except ValueError:
                digest = b""
            if len(digest) != 16:
                raise ValueError("md5pass must be 32 hexadecimal digits")
            fields["password"] = digest
        elif key in ("mingoal", "maxgoal"):
            fields[key] = _goal(value, key)
        elif key in ("mintrashtime", "maxtrashtime"):
            fields[key] = parse_duration(value)
    return fields


# ---------------------------------------------------------------- passwords


def proven_passwords(rules: list[Rule], challenge: bytes, proof: bytes) -> frozenset[bytes]:
    """The password digests (of `rules`) that `proof` answers `challenge` with."""
    if not challenge or not proof:
        return frozenset()
    return frozenset(r.password for r in rules if r.password is not None
                     and hmac.compare_digest(password_proof(r.password, challenge), proof))


# ---------------------------------------------------------------- matching


def ip_value(address: str | None) -> int | None:
    """An IPv4 address (also IPv4-mapped IPv6) as an integer; None for anything else,
    which only `*` lines match."""
    if address is None:
        return None
    if address.startswith("::ffff:"):
        address = address[7:]
    try:
        return parse_ip(address)
    except ValueError:
        return None


def _address_matches(rule: Rule, ip: int | None) -> bool:
    return rule.any_address if ip is None else rule.low <= ip <= rule.high


def _path_matches(rule: Rule, path: tuple[bytes, ...] | None) -> bool:
    if rule.path is None or path is None:
        return rule.path is None and path is None
    if path == rule.path:
        return True
    return rule.alldirs and path[:len(rule.path)] == rule.path


@dataclass(frozen=True)
class Verdict:
    """The rule that applies, or why there is none (`reason`)."""

    rule: Rule | None
    reason: str = ""


def choose(rules: list[Rule], ip: int | None, path: tuple[bytes, ...] | None,
           proven: frozenset[bytes] = frozenset(), tried_password: bool = False) -> Verdict:
    """The rule for a client at `ip` asking for `path` (None: the meta file system) that
    proved the passwords `proven`."""
    best = None
    needed_password = False
    for rule in rules:
        if not _address_matches(rule, ip) or not _path_matches(rule, path):
            continue
        if rule.password is not None and rule.password not in proven:
            needed_password = True
            continue
        if best is None or rule.rank() > best.rank():
            best = rule
    if best is not None:
        return Verdict(best)
    if needed_password:
        return Verdict(None, "wrong password" if tried_password else "password required")
    what = "the meta file system" if path is None else \
        "/" + b"/".join(path).decode(errors="replace")
    return Verdict(None, f"no export of {what} for this address")


def admin_allowed(rules: list[Rule], ip: int | None) -> bool:
    """Whether a client at `ip` may give operators' commands without a session (they
    carry no password, so lines with one do not count)."""
    return any(r.admin and r.password is None and _address_matches(r, ip) for r in rules)


# ---------------------------------------------------------------- identities


def map_ids(rule: Rule, uid: int, gid: int) -> tuple[int, int]:
    """The identity a request by (uid, gid) acts as: root becomes `maproot` (unless that
    is 0), everyone else `mapall` (if given)."""
    if uid == 0:
        return (uid, gid) if rule.maproot[0] == 0 else rule.maproot
    return rule.mapall if rule.mapall is not None else (uid, gid)


def map_identity(rule: Rule, uid: int, gid: int, groups=()) -> tuple[int, int, tuple]:
    """`map_ids` with supplementary groups: a mapped identity has only its own group."""
    new_uid, new_gid = map_ids(rule, uid, gid)
    if (new_uid, new_gid) == (uid, gid):
        return uid, gid, tuple(groups)
    return new_uid, new_gid, (new_gid,)
