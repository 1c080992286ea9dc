"""The incarnation rule of a master's start-up (identity.py)."""
import pytest

from elkfs.consensus.identity import (SAVE_DEFAULT, SAVE_FLUSH, SAVE_FSYNC,
                                      incarnation_at_start)


def test_default_mode_raises_after_unclean_stop_across_a_reboot():
    assert incarnation_at_start(3, SAVE_DEFAULT, False, "boot-a", "boot-b")[0] == 4
    assert incarnation_at_start(3, SAVE_FLUSH, False, "boot-a", "boot-b")[0] == 4


def test_default_mode_keeps_it_after_a_process_crash_or_a_clean_stop():
    assert incarnation_at_start(3, SAVE_DEFAULT, False, "boot-a", "boot-a")[0] == 3
    assert incarnation_at_start(3, SAVE_DEFAULT, True, "boot-a", "boot-b")[0] == 3
    assert incarnation_at_start(1, SAVE_DEFAULT, False, None, "boot-b")[0] == 1


def test_fsync_mode_keeps_it_unless_the_journal_is_damaged():
    assert incarnation_at_start(3, SAVE_FSYNC, False, "boot-a", "boot-b")[0] == 3
    assert incarnation_at_start(3, SAVE_FSYNC, True, "a", "a", journal_damaged=True)[0] == 4


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        incarnation_at_start(1, 7, False, None, "b")
