import pytest

from elkfs.chunkserver.hddcfg import HddConfigError, load, parse_text


def test_parse_forms(tmp_path):
    for n in range(1, 7):
        (tmp_path / f"hd{n}").mkdir()
    cfg = tmp_path / "mfshdd.cfg"
    cfg.write_text(f"""
# disks
{tmp_path}/hd1
*{tmp_path}/hd2          # marked for removal

  <{tmp_path}/hd3
>{tmp_path}/hd4 -5GiB
~{tmp_path}/hd5=extra
hd6
""")
    entries = load(str(cfg))
    assert [e.path for e in entries] == [str(tmp_path / f"hd{n}") for n in range(1, 7)]
    assert [e.marked_for_removal for e in entries] == [False, True, False, False, False, False]
    assert entries[2].prefix == "<"
    assert entries[3].prefix == ">" and entries[3].options == "-5GiB"
    assert entries[4].prefix == "~" and entries[4].options == "=extra"
    assert entries[1].lineno == 4


def test_missing_path_names_file_and_line(tmp_path):
    cfg = tmp_path / "mfshdd.cfg"
    cfg.write_text(f"{tmp_path}\n\n# c\n{tmp_path}/nope\n")
    with pytest.raises(HddConfigError, match=r"mfshdd\.cfg:4: .*nope does not exist"):
        load(str(cfg))


def test_errors(tmp_path):
    with pytest.raises(HddConfigError, match="not found"):
        load(str(tmp_path / "absent.cfg"))
    empty = tmp_path / "empty.cfg"
    empty.write_text("# nothing\n\n")
    with pytest.raises(HddConfigError, match="no disks"):
        load(str(empty))
    with pytest.raises(HddConfigError, match="x.cfg:1: no path"):
        parse_text("*\n", "x.cfg")
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(HddConfigError, match="not a directory"):
        parse_text(str(f), "x.cfg")
    with pytest.raises(HddConfigError, match="listed twice"):
        parse_text(f"{tmp_path}\n{tmp_path}/\n", "x.cfg")
    assert parse_text("/does/not/exist\n", "x.cfg", check_exists=False)[0].path == "/does/not/exist"
