from __future__ import annotations

from endoedge.bench.fingerprint import (
    IDENTITY_FIELDS,
    fingerprint_differences,
    machine_fingerprint,
    machine_id,
    parse_cpuinfo,
    parse_l4t_release,
    parse_nvpmodel,
)

X86_CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
model name	: AMD EPYC 7B13
flags		: fpu sse sse2 avx avx2 fma f16c
"""
ORIN_CPUINFO = """processor	: 0
BogoMIPS	: 62.50
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer	: 0x41
"""


def test_parse_cpuinfo_x86_and_arm():
    x86 = parse_cpuinfo(X86_CPUINFO)
    assert x86["cpu_model"] == "AMD EPYC 7B13"
    assert x86["cpu_flags"] == ["avx", "avx2", "f16c", "fma"]
    arm = parse_cpuinfo(ORIN_CPUINFO)
    assert arm["cpu_flags"] == ["asimd", "asimddp", "asimdhp"]


def test_parse_jetson_facts():
    assert parse_l4t_release("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic") == "R36.3.0"
    assert parse_l4t_release("garbage") == ""
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (0)"
    assert parse_nvpmodel("NV Power Mode: 15W\n2") == "15W (2)"
    assert parse_nvpmodel("") == ""


def fake_runner(outputs):
    def run(argv):
        return outputs.get(argv[0])

    return run


def test_fingerprint_has_the_fields_that_identify_a_result():
    info = machine_fingerprint(run=fake_runner({}))
    for key in (*IDENTITY_FIELDS, "cpu_flags", "versions", "machine_id", "os", "kernel"):
        assert key in info, key
    assert info["cpu_cores"] >= 1 and info["ram_gib"] > 0
    assert info["gpu"] == "none"
    assert info["versions"]["numpy"] and info["versions"]["python"]
    assert info["machine_id"].startswith(info["arch"])


def test_gpu_and_power_mode_come_from_the_tools():
    runner = fake_runner(
        {
            "nvidia-smi": "NVIDIA RTX A4000, 550.54",
            "nvpmodel": "NV Power Mode: 25W\n1",
            "jetson_clocks": "SOC family:tegra234  Machine:NVIDIA Jetson Orin NX\nGPU MinFreq=306000000",
        }
    )
    info = machine_fingerprint(run=runner)
    assert info["gpu"] == "NVIDIA RTX A4000, 550.54"
    assert info["power_mode"] == "25W (1)"
    assert info["clocks"][0].startswith("SOC family")


def test_machine_id_separates_machines_and_differences_are_named():
    base = {
        "arch": "aarch64",
        "cpu_model": "",
        "cpu_cores": 8,
        "ram_gib": 15.3,
        "gpu": "integrated (NVIDIA Jetson Orin NX)",
        "jetson_model": "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
        "l4t": "R36.3.0",
        "power_mode": "MAXN (0)",
        "versions": {"onnxruntime": "1.20.0", "tensorrt": "10.3.0"},
    }
    other_mode = {**base, "power_mode": "15W (2)"}
    assert machine_id(base) != machine_id(other_mode)
    assert "jetson-orin-nx" in machine_id(base) and "r36.3.0" in machine_id(base)
    assert fingerprint_differences(base, dict(base)) == []
    diffs = fingerprint_differences(base, {**other_mode, "versions": {"onnxruntime": "1.20.0", "tensorrt": "10.7.0"}})
    assert any(d.startswith("power_mode") for d in diffs)
    assert any(d.startswith("versions.tensorrt") for d in diffs)


def test_same_cpu_name_with_other_instruction_sets_is_another_machine():
    # A cloud VM reports "AMD EPYC" for Zen 3 (AVX2) and Zen 4 (AVX-512 VNNI) alike; their int8 and
    # fp32 latencies differ, so their results must not share a folder.
    zen3 = {"arch": "x86_64", "cpu_model": "AMD EPYC", "cpu_cores": 2, "ram_gib": 23.5, "gpu": "none"}
    zen3["cpu_flags"] = ["avx", "avx2", "f16c", "fma"]
    zen4 = {**zen3, "cpu_flags": ["avx", "avx2", "avx512_vnni", "avx512f", "f16c", "fma"]}
    assert machine_id(zen3) != machine_id(zen4)
    assert machine_id(zen3).startswith("x86_64-amd-epyc-2c-nogpu-")
    assert any(d.startswith("cpu_flags") for d in fingerprint_differences(zen3, zen4))
