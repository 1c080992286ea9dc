"""mfsexports.cfg: every address and option form, errors naming their line, which rule
applies, identity mapping, password proofs; and the session checks built on them
(`sessionaccess.admit`) against a real namespace: root, `..`, read-only, goal and trash
ranges, meta sessions, reload."""

import dataclasses
import errno
import ipaddress
import pwd
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elkfs.master import exports as ex
from elkfs.master.sessionaccess import SessionAccess, admit, learn, resolve_root
from elkfs.proto import messages as m
from elkfs.proto.errors import FsError
from elkfs.proto.password import password_digest, password_proof, tool_token

from .test_namespace import Runner

ip = ex.parse_ip


def rule(text: str) -> ex.Rule:
    [r] = ex.parse(text)
    return r


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("text, low, high", [
    ("*", "0.0.0.0", "255.255.255.255"),
    ("10.1.2.3", "10.1.2.3", "10.1.2.3"),
    ("10.0.0.0-10.0.0.5", "10.0.0.0", "10.0.0.5"),
    ("192.168.1.77/24", "192.168.1.0", "192.168.1.255"),
    ("10.1.0.0/255.255.0.0", "10.1.0.0", "10.1.255.255"),
    ("10.1.2.3/32", "10.1.2.3", "10.1.2.3"),
    ("0.0.0.0/0", "0.0.0.0", "255.255.255.255"),
    ("127.0.0.0/255.0.0.0", "127.0.0.0", "127.255.255.255"),
])
def test_address_forms(text, low, high):
    assert ex.parse_address(text) == (ip(low), ip(high))


@pytest.mark.parametrize("text", [
    "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.-1", "a.b.c.d", "1.2.3.4/33",
    "1.2.3.4/255.0.255.0", "1.2.3.9-1.2.3.4", "1.2.3.4-", "1.2.3.4/", "**", "1.2.3.4 ",
    "１.2.3.4",
])
def test_bad_addresses(text):
    with pytest.raises(ValueError):
        ex.parse_address(text)


# ---------------------------------------------------------------- lines and options


def test_every_option():
    r = rule("10.0.0.0/8  /a/b/  rw,alldirs,admin,maproot=nobody,mapall=1000:1000,"
             "password=secret,mingoal=2,maxgoal=3,mintrashtime=1d12h,maxtrashtime=2w,"
             "dynamicip,ignoregid")
    nobody = pwd.getpwnam("nobody")
    assert r.path == (b"a", b"b")
    assert not r.readonly and r.alldirs and r.admin
    assert r.maproot == (nobody.pw_uid, nobody.pw_gid)
    assert r.mapall == (1000, 1000)
    assert r.password == password_digest(b"secret")
    assert (r.mingoal, r.maxgoal) == (2, 3)
    assert (r.mintrashtime, r.maxtrashtime) == (36 * 3600, 14 * 86400)


def test_defaults_are_moosefs():
    r = rule("* /")
    assert r.readonly and not r.alldirs and not r.admin
    assert r.maproot == (999, 999) and r.mapall is None and r.password is None
    assert (r.mingoal, r.maxgoal, r.mintrashtime) == (1, 9, 0)


def test_meta_and_aliases():
    assert rule("* .").meta
    assert not rule("* / readwrite").readonly
    assert rule("* / rw,readonly").readonly  # the last one says
    md5 = password_digest(b"pw").hex()
    assert rule(f"* / md5pass={md5}").password == password_digest(b"pw")
    assert rule("* / maproot=0").maproot == (0, 0)
    assert rule("* / maproot=root:nogroup").maproot[1] > 0
    assert rule("* / mapall=5:7").mapall == (5, 7)


def test_comments_blank_lines_and_a_hash_in_a_password():
    rules = ex.parse("# header\n\n   \n* / rw  # trailing\n\t# indented\n"
                     "* /x password=a#b\n")
    assert [r.line for r in rules] == [4, 6]
    assert rules[1].password == password_digest(b"a#b")


@pytest.mark.parametrize("text", ["90", "90S", "1m30s", "1W2D3H4M5S", "2h", "1d12H"])
def test_durations(text):
    expected = {"90": 90, "90S": 90, "1m30s": 90, "1W2D3H4M5S": 604800 + 2 * 86400
                + 3 * 3600 + 4 * 60 + 5, "2h": 7200, "1d12H": 129600}[text]
    assert ex.parse_duration(text) == expected


@pytest.mark.parametrize("line, complaint", [
    ("*", "expected ADDRESS DIRECTORY"),
    ("* / rw extra", "spaces"),
    ("1.2.3 / rw", "bad IPv4"),
    ("* relative rw", "must be / or start with /"),
    ("* /a/../b rw", "'..'"),
    ("* / rx", "unknown option 'rx'"),
    ("* / rw,,alldirs", "empty option"),
    ("* / rw=1", "takes no value"),
    ("* / maproot", "needs a value"),
    ("* / maproot=no-such-user-here", "no user named"),
    ("* / maproot=0:no-such-group-here", "no group named"),
    ("* / maproot=4000000", "give its group"),
    ("* / mapall=1:", "USER[:GROUP]"),
    ("* / password=", "empty password"),
    ("* / md5pass=abc", "32 hexadecimal"),
    ("* / mingoal=0", "1-9"),
    ("* / maxgoal=10", "1-9"),
    ("* / mingoal=5,maxgoal=3", "mingoal is above maxgoal"),
    ("* / mintrashtime=2h,maxtrashtime=1h", "mintrashtime is above"),
    ("* / maxtrashtime=1h1d", "in this order"),
    ("* / maxtrashtime=1x", "units"),
    ("* / maxtrashtime=99999999999", "above"),
])
def test_errors_name_the_line(line, complaint):
    text = "# comment\n* / rw\n\n" + line + "\n* . rw\n"
    with pytest.raises(ex.ExportsError) as e:
        ex.parse(text, "/etc/mfs/mfsexports.cfg")
    assert str(e.value).startswith("/etc/mfs/mfsexports.cfg:4: ")
    assert complaint in str(e.value)


# ---------------------------------------------------------------- which rule applies


RULES = ex.parse("""
*              /        ro
10.0.0.0/8     /        rw
10.1.0.0/16    /pub     rw,alldirs,maproot=0
10.2.0.1       /        rw,admin,password=s3cret
10.3.0.0/16    .        rw
""")


def choose(addr, path="/", proven=frozenset(), tried=False):
    p = None if path is None else ex.split_path(path)
    return ex.choose(RULES, ex.ip_value(addr), p, proven, tried)


def test_most_permissive_match_wins():
    assert choose("192.168.0.1").rule.line == 2  # only "*"
    assert choose("10.9.9.9").rule.line == 3  # rw beats ro
    assert choose("10.1.0.1", "/pub").rule.line == 4  # the only one for /pub
    assert choose("10.1.0.1", "/pub/a/b").rule.line == 4  # alldirs
    assert choose("10.1.0.1").rule.line == 3
    assert choose("10.9.9.9", "/pub").rule is None  # "/" without alldirs is "/" only
    assert choose("10.2.0.1").rule.line == 3  # no password given: the plain rw line


def test_ties_go_to_the_first_line():
    rules = ex.parse("* / rw\n* / rw\n")
    assert ex.choose(rules, ip("1.1.1.1"), ()).rule.line == 1


def test_passwords():
    digest = password_digest(b"s3cret")
    challenge = b"c" * 32
    proven = ex.proven_passwords(RULES, challenge, password_proof(digest, challenge))
    assert proven == {digest}
    assert choose("10.2.0.1", proven=proven).rule.line == 5
    wrong = ex.proven_passwords(RULES, challenge, password_proof(password_digest(b"x"),
                                                                 challenge))
    assert not wrong
    only_pw = ex.parse("* / rw,password=s3cret")
    assert ex.choose(only_pw, ip("1.1.1.1"), ()).reason == "password required"
    assert ex.choose(only_pw, ip("1.1.1.1"), (), wrong, True).reason == "wrong password"
    # an answer to another challenge proves nothing (no replay)
    assert not ex.proven_passwords(RULES, b"d" * 32, password_proof(digest, challenge))


def test_tool_token_is_its_own_secret():
    """The tool token (docs/security.md) is neither the proof nor the digest, differs
    with every registration's challenge and every password, and is the same on both
    sides (the same inputs)."""
    digest = password_digest(b"s3cret")
    challenge = b"c" * 32
    token = tool_token(digest, challenge)
    assert len(token) == 32 and token == tool_token(digest, challenge)
    assert token not in (digest, password_proof(digest, challenge))
    assert token != tool_token(digest, b"d" * 32)
    assert token != tool_token(password_digest(b"other"), challenge)


def test_meta_rules_apply_to_meta_sessions_only():
    assert choose("10.3.0.9", None).rule.line == 6
    assert choose("10.4.0.9", None).rule is None
    assert "meta" in choose("10.4.0.9", None).reason
    assert choose("10.3.0.9").rule.line == 3


def test_non_ipv4_peers_match_star_only():
    assert ex.ip_value("::1") is None
    assert ex.ip_value("::ffff:10.0.0.1") == ip("10.0.0.1")
    assert ex.choose(RULES, None, ()).rule.line == 2


def test_admin_without_session():
    assert ex.admin_allowed(ex.parse("10.0.0.0/8 / rw,admin"), ip("10.1.1.1"))
    assert not ex.admin_allowed(ex.parse("10.0.0.0/8 / rw,admin"), ip("11.1.1.1"))
    assert not ex.admin_allowed(RULES, ip("10.2.0.1"))  # that line needs a password
    assert ex.admin_allowed(ex.parse(ex.DEFAULT_TEXT), None)


def test_identity_mapping():
    r = rule("* / rw,maproot=100:200,mapall=300:400")
    assert ex.map_ids(r, 0, 0) == (100, 200)
    assert ex.map_ids(r, 1000, 1000) == (300, 400)
    assert ex.map_identity(r, 1000, 1000, (1, 2, 3)) == (300, 400, (400,))
    keep = rule("* / rw,maproot=0")
    assert ex.map_identity(keep, 0, 5, (5, 6)) == (0, 5, (5, 6))
    assert ex.map_ids(keep, 1000, 1000) == (1000, 1000)
    assert ex.map_ids(rule("* / rw"), 0, 0) == (999, 999)  # MooseFS's default


# ---------------------------------------------------------------- fuzz


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_any_text_parses_or_names_a_line(text):
    try:
        rules = ex.parse(text, "f")
    except ex.ExportsError as e:
        assert str(e).startswith("f:")
        lineno = int(str(e).split(":")[1])
        assert 1 <= lineno <= max(1, len(text.splitlines()))
        return
    for r in rules:
        assert 0 <= r.low <= r.high <= 0xFFFFFFFF
        assert 1 <= r.mingoal <= r.maxgoal <= 9


OPTION_WORDS = ["ro", "rw", "readonly", "readwrite", "alldirs", "admin", "dynamicip",
                "ignoregid", "maproot=0", "maproot=0:0", "mapall=1:1", "password=p",
                "md5pass=" + "ab" * 16, "mingoal=1", "maxgoal=9", "mintrashtime=0",
                "maxtrashtime=1w", "mingoal=x", "bogus", "maproot=", "=", ""]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["*", "10.0.0.1", "10.0.0.0/8", "10.0.0.0/255.0.0.0", "1.1.1.1-2.2.2.2",
                     "300.1.1.1", "1.1.1.1/40", "x"]),
    st.sampled_from(["/", ".", "/a", "/a/b/", "a", "/../x"]),
    st.lists(st.sampled_from(OPTION_WORDS), max_size=5)), max_size=6))
def test_fuzz_rule_like_lines(lines):
    text = "\n".join(f"{a} {p} {','.join(o)}".rstrip() for a, p, o in lines)
    try:
        rules = ex.parse(text)
    except ex.ExportsError as e:
        assert ":" in str(e)
        return
    assert len(rules) == len(lines)
    for r, (_, path, _) in zip(rules, lines):
        assert r.meta == (path == ".")


@settings(max_examples=800, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_fuzz_netmask_matches_like_ipaddress(net, bits, addr):
    text = f"{ipaddress.IPv4Address(net)}/{bits}"
    low, high = ex.parse_address(text)
    network = ipaddress.IPv4Network(text, strict=False)
    assert (low, high) == (int(network.network_address), int(network.broadcast_address))
    mask = f"{ipaddress.IPv4Address(net)}/{network.netmask}"
    assert ex.parse_address(mask) == (low, high)
    r = rule(f"{text} / rw")
    hit = ex.choose([r], addr, ()).rule is not None
    assert hit == (ipaddress.IPv4Address(addr) in network)


# ---------------------------------------------------------------- session checks


@pytest.fixture
def tree():
    """/pub/docs/f, /secret/s, /pub/link -> /secret/s (a symlink)."""
    r = Runner()
    pub = r.mkdir(1, b"pub")
    docs = r.mkdir(pub, b"docs")
    f = r.mkfile(docs, b"f")
    secret = r.mkdir(1, b"secret")
    s = r.mkfile(secret, b"s")
    r.do(m.Symlink(pub, b"link", b"/secret/s", 0, 0))
    return r, {"pub": pub, "docs": docs, "f": f, "secret": secret, "s": s}


def access_for(r, text, path="/", addr="10.0.0.1"):
    rules = ex.parse(text)
    p = None if path is None else ex.split_path(path)
    verdict = ex.choose(rules, ip(addr), p)
    root = resolve_root(r.ns, p) if p else 1
    return SessionAccess(verdict.rule, ip(addr), p, frozenset(), root), rules


def denied(r, access, op, code):
    with pytest.raises(FsError) as e:
        admit(r.ns, access, op)
    assert e.value.status == code, e.value


def test_subtree_root(tree):
    r, i = tree
    access, _ = access_for(r, "* /pub rw", "/pub")
    assert access.root == i["pub"]
    admit(r.ns, access, m.Lookup(i["docs"], b"f"))
    admit(r.ns, access, m.GetAttr(i["f"]))  # found by walking the tree once
    for op in (m.GetAttr(i["secret"]), m.GetAttr(i["s"]), m.ReadDir(1),
               m.Lookup(1, b"secret"), m.Mkdir(i["secret"], b"x", 0o755, 0, 0),
               m.Rename(i["docs"], b"f", i["secret"], b"f"), m.Link(i["s"], i["docs"], b"l"),
               m.Snapshot(i["s"], i["docs"], b"copy"), m.ReadChunk(i["s"], 0),
               m.SetAttr(i["s"], m.SET_MODE, 0o777), m.ListTrash()):
        denied(r, access, op, errno.EACCES)
    # ".." of the root is the root; ".." below it is the parent
    up = admit(r.ns, access, m.Lookup(i["pub"], b".."))
    assert r.ns.query(up).attr.inode == i["pub"]
    up = admit(r.ns, access, m.Lookup(i["docs"], b".."))
    assert r.ns.query(up).attr.inode == i["pub"]
    # the symlink's target is just bytes: the client's kernel resolves it, not the master
    link = r.ns.query(admit(r.ns, access, m.Lookup(i["pub"], b"link"))).attr
    assert r.ns.query(admit(r.ns, access, m.ReadLink(link.inode))).value == b"/secret/s"


def test_files_shown_to_a_session_are_known_without_a_walk(tree):
    r, i = tree
    access, _ = access_for(r, "* /pub rw", "/pub")
    learn(access, r.ns.query(m.ReadDir(i["docs"])))
    assert i["f"] in access.known and not access.scanned
    admit(r.ns, access, m.GetAttr(i["f"]))
    assert not access.scanned
    denied(r, access, m.GetAttr(i["s"]), errno.EACCES)
    assert access.scanned and i["s"] not in access.known


def test_files_listed_without_attributes_are_known_too(tree):
    r, i = tree
    access, _ = access_for(r, "* /pub rw", "/pub")
    learn(access, r.ns.query(m.ReadDir(i["docs"], names_only=True)))
    learn(access, r.ns.query(m.ReadDir(i["pub"], names_only=True)))
    assert i["f"] in access.known and not access.scanned
    assert i["docs"] not in access.known  # directories need not be


def test_subfolder_not_exported_or_missing(tree):
    r, _ = tree
    rules = ex.parse("* /pub rw")
    assert ex.choose(rules, ip("1.1.1.1"), ex.split_path("/")).rule is None
    assert ex.choose(rules, ip("1.1.1.1"), ex.split_path("/pub/docs")).rule is None
    with pytest.raises(FsError) as e:
        resolve_root(r.ns, ex.split_path("/nothing"))
    assert e.value.status == errno.ENOENT


def test_read_only(tree):
    r, i = tree
    access, _ = access_for(r, "* / ro")
    for op in (m.GetAttr(i["f"]), m.ReadChunk(i["f"], 0), m.Acquire(i["f"]),
               m.Release(i["f"]), m.SetLock(i["f"], 1, 1, 0, 0, 10), m.EndSession()):
        admit(r.ns, access, op)
    for op in (m.Mknod(1, b"x", stat.S_IFREG | 0o644, 0, 0), m.Unlink(i["docs"], b"f"),
               m.WriteChunk(i["f"], 0), m.Truncate(i["f"], 0), m.SetGoal(i["f"], 2),
               m.SetAttr(i["f"], m.SET_ATIME_NOW), m.AppendReserve(i["f"], 10),
               m.Undelete(5), m.PurgeTrash([5])):
        denied(r, access, op, errno.EROFS)


def test_goal_and_trash_ranges_are_refused_not_clamped(tree):
    r, i = tree
    access, _ = access_for(r, "* / rw,mingoal=2,maxgoal=3,mintrashtime=1h,maxtrashtime=1d")
    admit(r.ns, access, m.SetGoal(i["f"], 2))
    admit(r.ns, access, m.SetGoal(i["f"], 3, True))
    denied(r, access, m.SetGoal(i["f"], 1), errno.EPERM)
    denied(r, access, m.SetGoal(i["f"], 4), errno.EPERM)
    admit(r.ns, access, m.SetTrashTime(i["f"], 3600))
    denied(r, access, m.SetTrashTime(i["f"], 0), errno.EPERM)
    denied(r, access, m.SetTrashTime(i["f"], 86401), errno.EPERM)


def test_creators_are_mapped(tree):
    r, i = tree
    access, _ = access_for(r, "* / rw,maproot=nobody,mapall=1234:4321")
    nobody = pwd.getpwnam("nobody")
    op = admit(r.ns, access, m.Mknod(1, b"x", stat.S_IFREG | 0o644, 0, 0))
    assert (op.uid, op.gid) == (nobody.pw_uid, nobody.pw_gid)
    op = admit(r.ns, access, m.Mkdir(1, b"y", 0o755, 1000, 1000))
    assert (op.uid, op.gid) == (1234, 4321)
    op = admit(r.ns, access, m.Symlink(1, b"z", b"t", 1000, 1000))
    assert (op.uid, op.gid) == (1234, 4321)
    assert r.do(op).attr.uid == 1234
    plain = m.Mknod(1, b"w", stat.S_IFREG, 0, 0)
    root_kept, _ = access_for(r, "* / rw,maproot=0")
    assert admit(r.ns, root_kept, plain) is plain


def test_meta_sessions_have_the_trash_only(tree):
    r, i = tree
    access, _ = access_for(r, "* . rw", None)
    for op in (m.ListTrash(), m.StatFs(), m.Undelete(5), m.PurgeTrash([5]), m.EndSession()):
        admit(r.ns, access, op)
    for op in (m.GetAttr(1), m.Lookup(1, b"pub"), m.Mkdir(1, b"x", 0o755, 0, 0)):
        denied(r, access, op, errno.EACCES)
    ro, _ = access_for(r, "* . ro", None)
    admit(r.ns, ro, m.ListTrash())
    denied(r, ro, m.Undelete(5), errno.EROFS)


def test_reload_revokes_or_keeps(tree):
    r, i = tree
    access, _ = access_for(r, "* / rw", "/", "10.0.0.1")
    access.recheck(ex.parse("10.0.0.0/8 / rw\n"))
    admit(r.ns, access, m.Mkdir(1, b"a", 0o755, 0, 0))
    access.recheck(ex.parse("10.0.0.0/8 / ro\n"))
    denied(r, access, m.Mkdir(1, b"b", 0o755, 0, 0), errno.EROFS)
    access.recheck(ex.parse("11.0.0.0/8 / rw\n"))
    denied(r, access, m.GetAttr(1), errno.EACCES)
    admit(r.ns, access, m.EndSession())  # it may still say goodbye
    access.recheck(ex.parse("* / rw\n"))
    admit(r.ns, access, m.GetAttr(1))


def test_shipped_example_is_the_default():
    path = __file__.rsplit("/tests/", 1)[0] + "/examples/mfsexports.cfg"
    with open(path) as f:
        text = f.read()
    def lineless(rules):
        return [dataclasses.replace(r, line=0) for r in rules]

    assert lineless(ex.parse(text, path)) == lineless(ex.parse(ex.DEFAULT_TEXT))
    # and every commented example line parses too
    examples = [line[1:] for line in text.splitlines() if line[:2] in ("#*", "#1")]
    assert len(ex.parse("\n".join(examples))) == len(examples) == 5


def test_default_rule_passes_requests_untouched_until_revoked(tree):
    r, i = tree
    access, _ = access_for(r, ex.DEFAULT_TEXT)
    assert access.unlimited
    op = m.Mknod(1, b"x", stat.S_IFREG | 0o644, 0, 0)
    assert admit(r.ns, access, op) is op
    access.recheck(ex.parse("11.0.0.0/8 / rw,maproot=0\n"))
    assert not access.unlimited
    denied(r, access, m.GetAttr(1), errno.EACCES)
    access.recheck(ex.parse("* / rw,maproot=0,maxgoal=5\n"))  # a range: checked again
    assert not access.unlimited
    denied(r, access, m.SetGoal(1, 6), errno.EPERM)
