"""One JSON reader for every file a command line names (kgen.cli.files.read_json): `kgen db
import/merge` and the --caps option refuse a bad file with the same one-line words, naming the
file (and the option), exit 2, and leave nothing written."""
import io
import json

import pytest

from kgen.cli import main
from kgen.cli.files import read_json

BAD = {
    "missing": (None, "cannot read it (No such file or directory)"),
    "folder": ("folder", "cannot read it (Is a directory)"),
    "empty": ("", "is not JSON (Expecting value"),
    "truncated": ('{"format": ', "is not JSON (Expecting value"),
    "nested": ("[" * 100000, "is not JSON ("),
    "binary": (b"\xff\xfe\x00garbage", "is not JSON ('utf-8' codec can't decode"),
}


def _bad_file(tmp_path, kind: str):
    path = tmp_path / f"{kind}.json"
    content = BAD[kind][0]
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path


def _refusal(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.removeprefix("kgen: ").rstrip("\n")


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_command_words_a_bad_file_alike(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setenv("KGEN_DB", str(tmp_path / "t.sqlite"))
    path, says = _bad_file(tmp_path, kind), BAD[kind][1]
    merged = tmp_path / "merged.json"
    imported = _refusal(capsys, ["db", "import", str(path)])
    assert _refusal(capsys, ["db", "merge", str(path), "-o", str(merged)]) == imported
    caps = _refusal(capsys, ["space", "--caps", str(path)])
    assert imported.startswith(f"{path}{':' if 'cannot read' in says else ''} {says}"), imported
    assert caps == f"--caps {imported}"
    assert not merged.exists() and not merged.with_name(merged.name + ".tmp").exists()


def test_db_import_reads_stdin_and_an_option_never_does(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"format": "x"})))
    assert read_json("-", stdin=True) == {"format": "x"}
    monkeypatch.setattr("sys.stdin", io.StringIO("{not json"))
    with pytest.raises(ValueError, match=r"^- is not JSON \("):
        read_json("-", stdin=True)
    monkeypatch.chdir(tmp_path)   # `--caps -` names a file called "-": there is none here
    with pytest.raises(ValueError, match=r"^--caps -: cannot read it \(No such file"):
        read_json("-", option="--caps")


def test_a_good_file_reads_the_same_through_every_caller(tmp_path):
    path = tmp_path / "good.json"
    path.write_text('{"a": [1, 2.5, "x"]}')
    assert read_json(str(path)) == read_json(str(path), option="--plot") == {"a": [1, 2.5, "x"]}
