"""The command line as a newcomer meets it: help for a group of commands, negative numbers as option values, and
one error line (never a traceback) for a path that is the wrong kind of thing."""

import pytest

from kubefusion import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_group_of_commands_has_help(capsys):
    code, out, err = run(capsys, "data", "--help")
    assert code == 0 and "data synth" in out and "data validate" in out and "predict" not in out
    code, _, err = run(capsys, "data")
    assert code == 2 and "data validate" in err
    code, _, err = run(capsys, "data", "bogus")
    assert code == 2 and err.endswith("error: unknown command 'data bogus'\n") and "data synth" in err
    assert run(capsys, "help", "data") == run(capsys, "data", "--help")  # not the top-level help


def test_help_names_a_command(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["help", "data", "synth"])
    out, _ = capsys.readouterr()
    assert done.value.code == 0 and out.startswith("usage: kubefusion data synth")
    code, _, err = run(capsys, "help", "bogus")
    assert code == 2 and err.endswith("error: unknown command 'bogus'\n")


def test_an_option_value_may_be_negative_numbers(capsys, tmp_path):
    code, _, err = run(capsys, "predict", "--artifacts", str(tmp_path / "none"), "--numeric", "-0.19,0.7,-1e3")
    assert code == 2
    assert "expected one argument" not in err
    assert err.startswith(f"error: {tmp_path / 'none' / 'model.json'}: missing")


@pytest.mark.parametrize("what", ["folder", "latin-1", "artifacts-file"])
def test_a_wrong_kind_of_path_is_one_error_line(capsys, tmp_path, what):
    job = tmp_path / "job.yaml"
    if what == "folder":
        argv, expected = ["run", str(tmp_path), "--local"], f"error: {tmp_path}: is a folder; give the job's YAML file"
    elif what == "latin-1":
        job.write_bytes(b"apiVersion: kubefusion.io/v1alpha1\nkind: MultimodalTrainJob\nmetadata: {name: caf\xe9}\n")
        argv, expected = ["run", str(job), "--local"], f"error: {job} line 3: not UTF-8 text (byte 0xe9)"
    else:
        job.write_text("x")
        argv, expected = ["predict", "--artifacts", str(job), "--text", "hello"], \
            f"error: --artifacts {job}: a file, not a folder"
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith(expected) and err.count("\n") == 1 and "Traceback" not in err


def test_an_os_error_about_a_path_is_one_line_unless_verbose(capsys, monkeypatch, tmp_path):
    import kubefusion.local as local

    def boom(args):
        raise NotADirectoryError(20, "Not a directory", str(tmp_path / "x" / "y"))

    monkeypatch.setattr(local, "run", boom)
    code, _, err = run(capsys, "run", "job.yaml", "--local")
    assert (code, err) == (2, f"error: {tmp_path / 'x' / 'y'}: not a directory\n")
    with pytest.raises(NotADirectoryError):
        cli.main(["run", "job.yaml", "--local", "-v"])


@pytest.mark.parametrize("command", ["preprocess", "train"])
def test_a_missing_data_flag_folder_is_named_by_the_flag(capsys, tmp_path, command):
    from pathlib import Path

    job = Path(__file__).parents[2] / "examples" / "local-job.yaml"
    out = ["--out", str(tmp_path / "a")] if command == "preprocess" else \
        ["--artifacts", str(tmp_path / "a"), "--output", str(tmp_path / "o")]
    code, _, err = run(capsys, command, "--config", str(job), *out, "--data", str(tmp_path / "nodata"))
    assert code == 2 and err == f"error: --data {tmp_path / 'nodata'}: no such folder (the dataset folder to use " \
                                "instead of spec.data.path)\n"
