"""POSIX ACLs (elkfs/access.py): the check, chmod of the mask, inheritance; and that the
pure cores of this issue import no I/O."""

import ast
import os

import pytest

from elkfs import access
from elkfs.access import GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, UNDEFINED_ID as U

OWNER, GRP, NOBODY, STAFF = 0, 0, 65534, 50


def acl(*entries):
    return access.parse(access.encode(list(entries)))


def no_groups(gid):
    return gid == NOBODY


def test_named_user_entry_limited_by_the_mask_and_group_matches_deny():
    a = acl((USER_OBJ, 6, U), (USER, 4, NOBODY), (GROUP_OBJ, 4, U), (MASK, 4, U), (OTHER, 4, U))
    assert access.allows(a, OWNER, GRP, NOBODY, no_groups, 4)
    assert not access.allows(a, OWNER, GRP, NOBODY, no_groups, 2)
    deny = acl((USER_OBJ, 6, U), (USER, 0, NOBODY), (GROUP_OBJ, 4, U), (MASK, 4, U),
               (OTHER, 4, U))
    assert not access.allows(deny, OWNER, GRP, NOBODY, no_groups, 4)
    assert access.allows(deny, OWNER, GRP, 1000, no_groups, 4)  # others: OTHER
    masked = acl((USER_OBJ, 6, U), (USER, 6, NOBODY), (GROUP_OBJ, 0, U), (MASK, 0, U),
                 (OTHER, 0, U))
    assert not access.allows(masked, OWNER, GRP, NOBODY, no_groups, 4)
    # a matching group entry that does not grant denies (OTHER is not tried)
    grp = acl((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (GROUP, 0, STAFF), (MASK, 4, U),
              (OTHER, 4, U))
    assert not access.allows(grp, OWNER, GRP, 1000, lambda g: g == STAFF, 4)


def test_mode_chmod_and_minimal():
    a = acl((USER_OBJ, 6, U), (USER, 4, NOBODY), (GROUP_OBJ, 0, U), (MASK, 4, U), (OTHER, 0, U))
    assert access.mode_of(a, 0o100600) == 0o100640
    assert (MASK, 0, U) in access.chmod(a, 0o600)
    assert access.is_minimal(acl((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U)))
    with pytest.raises(access.AclError):
        acl((USER_OBJ, 6, U), (USER, 4, NOBODY), (GROUP_OBJ, 0, U), (OTHER, 0, U))  # no mask


def test_inherit_cuts_the_default_by_the_create_mode():
    default = acl((USER_OBJ, 7, U), (USER, 7, NOBODY), (GROUP_OBJ, 5, U), (MASK, 7, U),
                  (OTHER, 5, U))
    entries, mode = access.inherit(default, 0o666)
    assert mode == 0o664
    assert (MASK, 6, U) in entries and (USER, 7, NOBODY) in entries
    assert access.inherit(acl((USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)), 0o777) == \
        (None, 0o750)


@pytest.mark.parametrize("module", ["elkfs/access.py", "elkfs/master/filelocks.py"])
def test_pure_cores_import_no_io(module):
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    tree = ast.parse(open(os.path.join(root, module)).read())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and not n.level}
    assert not imported & {"asyncio", "time", "random", "socket", "os"}
