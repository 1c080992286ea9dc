"""Master identity ``uuid.incarnation`` and the incarnation rule (HA.md "Identity").

A master's uuid is made with its data directory; its incarnation is raised whenever it
starts from a journal that may miss something it acknowledged.  A raised incarnation is a
new member: it is in no in-sync record, so it can neither lead nor count for a commit
until a leader has brought it to its last entry and grown it back in; and a leader that
sees a new incarnation at an address restarts that follower's progress from zero, so
entries the old incarnation acknowledged and lost are sent again.

When may a journal miss acknowledged entries?  It depends on ``CHANGELOG_SAVE_MODE``:

* ``SAVE_FSYNC``: a journal write is acknowledged only once fsynced.  A process crash or a
  power loss loses only writes nobody acknowledged; the incarnation stays.
* ``SAVE_DEFAULT`` (mode 0, the product's default; mode 1 alike): a write is acknowledged once handed to
  the operating system, which syncs it within about a second.  A process crash loses
  nothing (the page cache survives it); a power loss (or a kernel crash) may lose the
  unsynced tail.  The shell cannot see which, so the rule is: after an *unclean* stop
  (no clean-shutdown mark) *and* a machine restart (the kernel's boot id changed), raise
  the incarnation.  A clean stop syncs everything first, so it keeps the incarnation.

Either mode: a journal found damaged or restored from a backup raises it too (the shell
truncates at the first bad record and reports it; HA-traces.md 6a).

The new incarnation must be persisted (fsynced) before the master sends anything, and the
current boot id stored with it, so that a second process crash in the same boot keeps it.
"""
from __future__ import annotations

SAVE_DEFAULT = 0      # CHANGELOG_SAVE_MODE 0: written in the background, synced within ~1 s
SAVE_FLUSH = 1        # written in the foreground, not fsynced: the same as 0 for power loss
SAVE_FSYNC = 2        # every acknowledged write fsynced first

SAVE_MODES = (SAVE_DEFAULT, SAVE_FLUSH, SAVE_FSYNC)


def ident(uuid: str, incarnation: int) -> str:
    return f"{uuid}.{incarnation}"


def incarnation_at_start(stored: int, save_mode: int, clean_stop: bool,
                         stored_boot_id: str | None, boot_id: str,
                         journal_damaged: bool = False) -> tuple[int, str]:
    """The incarnation a master starts with, and why (for the log).

    ``stored`` is the incarnation in the data directory, ``stored_boot_id`` the boot id
    written with it at the previous start (None on a fresh directory).
    """
    if save_mode not in SAVE_MODES:
        raise ValueError(f"unknown CHANGELOG_SAVE_MODE {save_mode}")
    if journal_damaged:
        return stored + 1, "journal damaged or restored"
    if save_mode != SAVE_FSYNC and not clean_stop and stored_boot_id is not None \
            and stored_boot_id != boot_id:
        return stored + 1, "unclean stop and machine restart: unsynced tail may be lost"
    return stored, "kept"
