"""The kernel source compiles with NVRTC (the runtime's path) and nvcc for Orin and Hopper, and the
launch geometry mirrored in launcher.py equals the C launcher's. Runs without a GPU."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from protospect.cpp_ext import kernel_build, launcher

CPP_EXT = Path(launcher.__file__).resolve().parent
KERNELS = [b"proto_topk_partial_f16", b"proto_topk_partial_f16_k1", b"proto_topk_partial_f32", b"proto_topk_merge_splits", b"proto_topk_merge_min",
           b"proto_topk_bank_sqnorm_f16", b"proto_topk_bank_sqnorm_f32", b"proto_topk_config"]


@pytest.fixture(scope="module")
def nvrtc_ready():
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python not installed (pip install 'protospect[gpu]')")
    if not launcher.cuda_include_dirs():
        pytest.skip("CUDA headers (mma.h) not found for NVRTC; set CUDA_HOME")


@pytest.mark.parametrize("arch", ["sm_87", "sm_90", "sm_90a"])
def test_nvrtc_compiles_the_kernel_source(nvrtc_ready, arch, caplog):
    cubin = launcher.compile_cubin(arch)
    assert cubin[:4] == b"\x7fELF"
    for name in KERNELS:
        assert name in cubin, f"{name.decode()} missing from the {arch} cubin"
    assert not [r for r in caplog.records if "NVRTC messages" in r.getMessage()], "NVRTC printed warnings"


def test_nvrtc_reports_a_broken_source_as_cuda_error(nvrtc_ready):
    from protospect.errors import CudaError

    with pytest.raises(CudaError, match="could not compile"):
        launcher.compile_cubin("sm_90", source='extern "C" __global__ void f() { undefined_symbol(); }')


def _entry(ptx: str, name: str) -> str:
    """One kernel's body in a PTX text."""
    return ptx.split(f".entry {name}(")[1].split(".entry ")[0]


def _ptxas_entry(ptx: str, arch: str, name: str, tmp_path: Path) -> str:
    """ptxas -v's report (registers, spills) on one kernel of NVRTC's PTX, as the runtime would assemble it."""
    path = tmp_path / f"{arch}.ptx"
    path.write_text(ptx)
    out = subprocess.run(["ptxas", f"-arch={arch}", "-v", str(path), "-o", str(tmp_path / f"{arch}.cubin")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return (out.stderr + out.stdout).split(f"entry function '{name}'")[1].split("Compiling entry")[0]


def _registers(report: str) -> int:
    return int(report.split("Used ")[1].split(" registers")[0])


GEOMETRY_MAIN = r"""
#include <cstdio>
#include "proto_topk.cu"
int main() {
    const int cases[][4] = {CASES};
    for (const auto& c : cases)
        for (int dtype = 0; dtype < 2; ++dtype) {
            const int splits = proto_topk_plan_splits(c[0], c[1], c[2], dtype, c[3]);
            printf("%d %zu\n", splits, proto_topk_workspace_bytes(c[0], c[1], c[2], dtype, splits));
        }
    printf("smem %u %u\n", protospect_topk::SmemLayoutF32::kBytes, protospect_topk::SmemLayoutMma::kBytes);
    return 0;
}
"""
GEOMETRY_CASES = [(4096, 4096, 200, 132), (1024, 1024, 32, 132), (4096, 32768, 1, 132), (1, 1, 1, 8),
                  (70, 130, 1, 8), (200, 1000, 64, 132), (33, 2000, 200, 16), (5000, 64, 64, 132)]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("defines,bound_atoms", [((), 0), (("-DPROTOSPECT_TOPK_SHARED_BOUND=1",), 32)])
def test_launcher_geometry_matches_the_c_launcher(tmp_path, defines, bound_atoms):
    """Split plan and workspace bytes of the C launcher equal launcher.py's mirror, in the default build and
    in the shared-bound comparison build (its atoms region)."""
    src = tmp_path / "geometry.cu"
    src.write_text(GEOMETRY_MAIN.replace("CASES", ", ".join("{%d, %d, %d, %d}" % c for c in GEOMETRY_CASES)))
    exe = tmp_path / "geometry"
    build = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", *defines, f"-I{CPP_EXT}", str(src), "-o", str(exe)],
                           capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout.splitlines()
    # proto_topk.cuh (block_q, block_m, blocks per SM) per dtype; kMaxSplits = 8
    geometry = {"float32": (64, 64, 3), "float16": (128, 128, 2)}
    cases = [(c, dtype) for c in GEOMETRY_CASES for dtype in ("float32", "float16")]
    assert len(lines) == len(cases) + 1
    for ((Q, M, k, sms), dtype), line in zip(cases, lines):
        splits, ws = (int(x) for x in line.split())
        block_q, block_m, per_sm = geometry[dtype]
        assert splits == launcher.plan_splits(Q, M, k, sms, block_q, block_m, 8, per_sm), (Q, M, k, sms, dtype)
        assert ws == launcher.workspace_layout(Q, k, splits, dtype, bound_atoms)["bytes"]
    smem_f32, smem_f16 = (int(x) for x in lines[-1].split()[1:])
    assert 48 * 1024 < smem_f16 <= 163 * 1024 and 48 * 1024 < smem_f32 <= 163 * 1024  # opt-in needed, fits Orin
    assert 2 * smem_f16 <= 227 * 1024  # two fp16 blocks per H100 SM, as the split plan assumes


def test_cubin_cache_compiles_once_per_source_and_arch(nvrtc_ready, tmp_path, monkeypatch):
    monkeypatch.setattr(kernel_build, "_CACHE_DIR", tmp_path)
    first = launcher._cached_cubin("sm_87")
    cached = list(tmp_path.glob("proto_topk_sm_87_*.cubin"))
    assert len(cached) == 1 and cached[0].read_bytes() == first

    def no_compile(*args, **kwargs):
        raise AssertionError("the cached cubin should have been used")

    monkeypatch.setattr(kernel_build, "compile_cubin", no_compile)
    assert launcher._cached_cubin("sm_87") == first


def test_cubin_cache_keeps_comparison_builds_apart(nvrtc_ready, tmp_path, monkeypatch):
    """PROTOSPECT_TOPK_DEFINES (a development switch: the test suite on a -D variant) builds its own cubin,
    cached apart from the default build's; anything but a -DPROTOSPECT_TOPK_* switch is refused."""
    from protospect.errors import ConfigError

    monkeypatch.setattr(kernel_build, "_CACHE_DIR", tmp_path)
    monkeypatch.delenv("PROTOSPECT_TOPK_DEFINES", raising=False)
    default = launcher._cached_cubin("sm_87")
    monkeypatch.setenv("PROTOSPECT_TOPK_DEFINES", "-DPROTOSPECT_TOPK_AGG_ATOMICS=1")
    variant = launcher._cached_cubin("sm_87")
    assert variant != default and len(list(tmp_path.glob("proto_topk_sm_87_*.cubin"))) == 2
    for bad in ("-O0", "-DNDEBUG", "-DPROTOSPECT_TOPK_AGG_ATOMICS=1;rm"):
        monkeypatch.setenv("PROTOSPECT_TOPK_DEFINES", bad)
        with pytest.raises(ConfigError, match="PROTOSPECT_TOPK_DEFINES"):
            launcher.build_defines()


def test_nvrtc_compile_leaves_interpreter_constants_alone(nvrtc_ready):
    """Regression: writing NVRTC's (empty, 1-byte) log into ``b" " * 1`` overwrote CPython's cached
    single-byte object, and torch.load broke later in the same process."""
    space = bytes([32])
    launcher.compile_cubin("sm_90")
    assert b" " == space and b" " * 1 == space


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ["sm_90a", "sm_90", "sm_87"])
def test_fp16_k1_tiles_use_wgmma_exactly_on_sm90a(tmp_path, arch):
    """Hopper's arch-specific build multiplies the k = 1 kernel's tiles with wgmma; the k > 1 kernel, and
    every other build, with mma.sync (measured faster there on the H100: docs/results/kernel_bench_h100.md)."""
    ptx = tmp_path / f"proto_topk_{arch}.ptx"
    build = subprocess.run(["nvcc", "-std=c++17", f"-arch={arch}", "-ptx", f"-I{CPP_EXT}", str(CPP_EXT / "proto_topk.cu"),
                            "-o", str(ptx)], capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr
    text = ptx.read_text()
    body = {name: _entry(text, name) for name in ("proto_topk_partial_f16", "proto_topk_partial_f16_k1")}
    k1_wgmma = arch == "sm_90a"
    assert ("wgmma.mma_async" in body["proto_topk_partial_f16_k1"]) is k1_wgmma
    assert ("fence.proxy.async" in body["proto_topk_partial_f16_k1"]) is k1_wgmma
    assert ("mma.sync.aligned.m16n8k16" in body["proto_topk_partial_f16_k1"]) is not k1_wgmma
    assert "wgmma.mma_async" not in body["proto_topk_partial_f16"]
    assert "mma.sync.aligned.m16n8k16" in body["proto_topk_partial_f16"]


def test_kernel_arch_picks_the_arch_specific_hopper_target():
    assert launcher.kernel_arch(9, 0) == "sm_90a"
    assert launcher.kernel_arch(8, 7) == "sm_87"
    assert launcher.kernel_arch(8, 0) == "sm_80"
    assert launcher.kernel_arch(12, 0) == "sm_120"


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas not on PATH")
def test_nvrtc_merge_kernel_keeps_four_blocks_per_sm_on_hopper(nvrtc_ready, tmp_path):
    """Regression: NVRTC's build of the merge kernel took 70 registers (3 blocks of 256 threads per SM)
    where nvcc's took 64, and the torch-free launcher ran 12 % slower at k = 200 on the H100 (0.547 vs
    0.486 ms); __launch_bounds__(256, 4) holds it to 64 (launcher 0.491 vs torch op 0.493 ms after)."""
    merge = _ptxas_entry(launcher.compile_ptx("compute_90a"), "sm_90a", "proto_topk_merge_splits", tmp_path)
    assert _registers(merge) <= 64, merge


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas not on PATH")
@pytest.mark.parametrize("arch", ["compute_90a", "compute_87"])
def test_shared_bound_switch_builds_without_spills_and_touches_only_the_k_gt_1_kernel(nvrtc_ready, tmp_path, arch):
    """-DPROTOSPECT_TOPK_SHARED_BOUND (a comparison build, off by default): only the fp16 k > 1 partial kernel
    reads and writes the cross-block atoms (relaxed GPU-scope accesses); NVRTC's build keeps it free of
    spills at two blocks per SM; the default build has no such accesses and reports 0 atoms."""
    default = launcher.compile_ptx(arch)
    ptx = launcher.compile_ptx(arch, extra_options=("-DPROTOSPECT_TOPK_SHARED_BOUND=1",))
    relaxed = ("ld.relaxed.gpu.global", "st.relaxed.gpu.global")
    assert all(op in _entry(ptx, "proto_topk_partial_f16") for op in relaxed)
    for name in ("proto_topk_partial_f16_k1", "proto_topk_partial_f32", "proto_topk_merge_splits"):
        assert not any(op in _entry(ptx, name) for op in relaxed), name
    assert not any(op in default for op in relaxed)
    if arch == "compute_90a":  # with wgmma for k > 1 too: the atoms come from the wgmma accumulators
        both = launcher.compile_ptx(arch, extra_options=("-DPROTOSPECT_TOPK_SHARED_BOUND=2", "-DPROTOSPECT_TOPK_WGMMA_ALL"))
        body = _entry(both, "proto_topk_partial_f16")
        assert "wgmma.mma_async" in body and all(op in body for op in relaxed)
    part = _ptxas_entry(ptx, f"sm_{arch.split('_')[1]}", "proto_topk_partial_f16", tmp_path)
    assert " 0 bytes spill stores" in part and _registers(part) <= 128, part


@pytest.mark.parametrize("level", [1, 2])
def test_aggregated_histogram_switch_builds_and_uses_match_any(nvrtc_ready, level):
    """-DPROTOSPECT_TOPK_AGG_ATOMICS (a comparison build for studies/kernel_variants.py, off by default):
    the radix histograms of the partial kernels' select and of the merge count lanes per bin with
    match.any; the default build has none. Both build with NVRTC, the variants' path, without warnings."""
    default = launcher.compile_ptx("compute_90a")
    agg = launcher.compile_ptx("compute_90a", extra_options=(f"-DPROTOSPECT_TOPK_AGG_ATOMICS={level}",))
    for name in ("proto_topk_merge_splits", "proto_topk_partial_f16", "proto_topk_partial_f32"):
        assert "match.any.sync" not in _entry(default, name)
        assert "match.any.sync" in _entry(agg, name), name
    assert "match.any.sync" not in _entry(agg, "proto_topk_partial_f16_k1")  # no select there


def _ptx_int_array(ptx: str, name: str) -> list[int]:
    """The initializer of a `.global .b8 name[N] = {...}` int32 array in a PTX text (little-endian bytes; PTX
    leaves out trailing zero bytes)."""
    size, rest = ptx.split(f" {name}[")[1].split("]", 1)
    raw = bytes(int(b) for b in rest.split("{")[1].split("}")[0].split(",")).ljust(int(size), b"\0")
    return [int.from_bytes(raw[i:i + 4], "little", signed=True) for i in range(0, len(raw), 4)]


@pytest.mark.parametrize("arch", ["compute_87", "compute_90a"])
def test_kernel_constants_have_one_source_the_hosts_read(nvrtc_ready, arch):
    """proto_topk_config.h is the one place the constants are set: kernel_config.py's parse of it equals what
    the compiled module reports to the launcher (proto_topk_config[]), the C header's PROTO_TOPK_MAX_K, the
    torch op's and launcher's limits and the host-test fakes (whose shared-memory bytes come from here)."""
    from launcher_fakes import SMEM_BYTES

    from protospect.cpp_ext import kernel_config, torch_op
    from protospect.cpp_ext.kernel_config import CONFIG as C

    exported = _ptx_int_array(launcher.compile_ptx(arch), "proto_topk_config")
    assert exported == [C["kBlockQ"], C["kBlockM"], C["kThreads"], SMEM_BYTES[0], C["kBlocksPerSm"],
                        C["kMmaBlockQ"], C["kMmaBlockM"], C["kMmaThreads"], SMEM_BYTES[1], C["kMmaBlocksPerSm"],
                        C["kMaxK"], C["kMaxSplits"], C["kMergeThreads"], 0]
    shared_bound = _ptx_int_array(launcher.compile_ptx(arch, extra_options=("-DPROTOSPECT_TOPK_SHARED_BOUND=1",)),
                                  "proto_topk_config")
    assert shared_bound[13] == C["kBoundAtoms"] == C["kMaxSplits"] * C["kBoundTiles"] * C["kBoundRanks"]
    c_header = (CPP_EXT / "proto_topk.h").read_text()
    assert f"PROTO_TOPK_MAX_K = {C['kMaxK']} " in c_header  # (proto_topk.cu also static_asserts it)
    assert launcher.MAX_K == torch_op.MAX_K == C["kMaxK"]
    assert [launcher.cand_cap(k) for k in (1, 64, 192, 256)] == [130, 256, 512, 512]
    # every `constexpr int` of the header was parsed (none silently skipped)
    header = kernel_config.CONFIG_HEADER.read_text()
    assert header.count("constexpr int k") == len(C)


def test_every_kernel_header_is_listed_and_hashed_into_the_cubin_cache_key(nvrtc_ready, tmp_path, monkeypatch):
    """NVRTC gets every header the kernel includes (KERNEL_HEADERS), and an edit to any one of them, not only to
    proto_topk.cuh, makes a new cubin instead of loading a stale one from the cache."""
    from protospect.cpp_ext.kernel_config import KERNEL_HEADERS

    on_disk = {p.name for p in CPP_EXT.glob("proto_topk*") if p.suffix in (".cuh", ".h")} - {"proto_topk.h"}
    assert set(KERNEL_HEADERS) == on_disk  # proto_topk.h is the C launcher's ABI, not device code
    included = {name for p in on_disk for name in re.findall(r'#include "([^"]+)"', (CPP_EXT / p).read_text())}
    assert included <= set(KERNEL_HEADERS)

    monkeypatch.setattr(kernel_build, "_CACHE_DIR", tmp_path)
    monkeypatch.delenv("PROTOSPECT_TOPK_DEFINES", raising=False)
    monkeypatch.setattr(kernel_build, "compile_cubin", lambda arch, source, extra_options=(): b"\x7fELF" + source[:8].encode())
    launcher._cached_cubin("sm_87")
    real = launcher.kernel_headers()
    for name in real:
        edited = dict(real, **{name: real[name] + "\n// edited\n"})
        monkeypatch.setattr(kernel_build, "kernel_headers", lambda edited=edited: edited)
        launcher._cached_cubin("sm_87")
    assert len(list(tmp_path.glob("proto_topk_sm_87_*.cubin"))) == 1 + len(real) == len(KERNEL_HEADERS)
