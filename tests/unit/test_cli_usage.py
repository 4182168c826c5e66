"""`auralens` usage errors are one line on stderr naming the command, exit 2 (auralens.cli.main)."""

from __future__ import annotations

import pytest

from auralens.cli import main


@pytest.mark.parametrize("argv, where, what", [
    (["record", "--n", "abc"], "auralens record", "Invalid value for '--n'"),
    (["record", "--nonexistent"], "auralens record", "No such option: --nonexistent"),
    (["bogus"], "auralens", "No such command 'bogus'"),
    (["steer", "fit", "--bad"], "auralens steer fit", "No such option: --bad"),
])
def test_usage_errors_are_one_line(argv, where, what, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {where}: {what}") and f"'{where} --help'" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_help_and_success_exit_zero_and_bare_command_shows_help(capsys):
    main(["--help"])  # returns normally: exit 0
    assert "Usage" in capsys.readouterr().out
    main(["models", "--json"])  # returns normally
    assert '"supported"' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "Usage" in capsys.readouterr().out
