"""The bootstrap's compiler knows both cooperative-matrix extensions; the SPIR-V tools are there."""
import subprocess

import pytest

from kgen import toolchain
from kgen.errors import ToolchainError


def test_compiler_compiles_coopmat2_probe(tmp_path):
    compiler = toolchain.find_compiler()
    out = tmp_path / "probe.spv"
    result = subprocess.run(compiler.command(toolchain.PROBE, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    val = subprocess.run([str(toolchain.spirv_tool("spirv-val")), "--target-env", "vulkan1.3", str(out)],
                         capture_output=True, text=True)
    assert val.returncode == 0, val.stdout + val.stderr
    dis = subprocess.run([str(toolchain.spirv_tool("spirv-dis")), str(out)], capture_output=True, text=True)
    assert "CooperativeMatrixKHR" in dis.stdout and "TensorAddressingNV" in dis.stdout


def test_spirv_tools_present():
    for name in ("spirv-val", "spirv-dis", "spirv-opt"):
        assert toolchain.spirv_tool(name).is_file()


def test_override_that_cannot_compile_the_probe_is_a_clear_error(tmp_path, monkeypatch, fresh_discovery):
    fake = tmp_path / "glslang"
    fake.write_text("#!/bin/sh\necho 'Glslang Version: 11:12.0.0'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("KGEN_GLSLANG", str(fake))
    with pytest.raises(ToolchainError, match="KGEN_GLSLANG.*cannot compile"):
        toolchain.find_compiler()


def test_override_that_is_missing_is_a_clear_error(tmp_path, monkeypatch, fresh_discovery):
    monkeypatch.setenv("KGEN_GLSLC", str(tmp_path / "nope"))
    with pytest.raises(ToolchainError, match="KGEN_GLSLC.*not an executable"):
        toolchain.find_compiler()
