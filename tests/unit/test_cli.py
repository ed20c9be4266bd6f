"""The command line as a user runs it, without a Vulkan device (`kgen devices`:
tests/device/test_cli_devices.py)."""
from helpers import ROOT, run_cli
from kgen.cli import main


def test_space_from_caps_file_explains_cuts(tmp_path, capsys):
    caps_file = ROOT / "kgen" / "data" / "lavapipe.json"
    assert main(["space", "--caps", str(caps_file), "--head-k", "576", "--head-v", "512",
                 "--k-type", "q8_0", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "path coopmat2: unsupported" in out and "path scalar:" in out
    assert "fa_sc_k576_v512_q8_0q8_0" in out
    assert "rejected:" in out


def test_space_rejects_a_bad_device_index(capsys):
    caps_file = ROOT / "kgen" / "data" / "h100.json"
    assert main(["space", "--caps", str(caps_file), "--device", "3"]) == 2
    err = capsys.readouterr().err
    assert "--device 3: there are 1 device(s)" in err and len(err.strip().splitlines()) == 1


def test_generated_folder_is_fresh():
    """A template refactor shows as a diff of generated/: re-render and compare."""
    result = run_cli("generate", "--check", "--no-compile")
    assert result.returncode == 0, result.stderr
