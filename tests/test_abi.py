"""Host tier: the runner's kernel ABI header and the definitions codegen writes into every
generated source agree, field by field. Generated sources include no headers, so nothing else
would notice if one side changed: the C compiler checks it here (``cc -fsyntax-only``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from codegen import capture
from codegen.emit.c import KERNEL_ABI_VERSION, emit_c
from codegen.passes import run_passes

pytestmark = pytest.mark.host
HEADER = Path(__file__).parents[1] / "android_app/src/main/cpp/core/npas_kernel_abi.h"
STRUCT = re.compile(r"typedef struct npas_step_args \{(.*?)\} npas_step_args;", re.S)


def _generated_source() -> str:
    graph = run_passes(capture(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8)))
    return emit_c(graph).source


def _fields(struct_body: str) -> list[str]:
    body = re.sub(r"/\*.*?\*/", "", struct_body, flags=re.S)
    return [re.findall(r"\w+", decl)[-1] for decl in body.split(";") if decl.strip()]


def _abi_check(header: str, generated: str) -> str:
    """A C file: the header, the generated prelude (its own struct skipped by the include
    guard, as on the runner side), the generated struct again under another name, and static
    assertions per field, for the version and for a generated kernel's signature."""
    prelude = generated[:generated.index("typedef union")]  # up to the math helpers
    ours = STRUCT.search(generated)
    theirs = STRUCT.search(header)
    assert ours and theirs, "both sides define struct npas_step_args"
    gen_fields, hdr_fields = _fields(ours.group(1)), _fields(theirs.group(1))
    version = re.search(r"npas_kernel_abi_version = (\d+)u;", generated)
    assert version, "the generated source exports npas_kernel_abi_version"
    lines = ['#include "npas_kernel_abi.h"', "#include <stddef.h>", prelude,
             ours.group(0).replace("npas_step_args", "npas_gen_step_args"),
             "#define GEN(f) ((npas_gen_step_args *)0)->f",
             "#define HDR(f) ((npas_step_args *)0)->f",
             f"_Static_assert(NPAS_KERNEL_ABI_VERSION == {version.group(1)}u, "
             '"ABI version: header vs generated");',
             "_Static_assert(sizeof(npas_gen_step_args) == sizeof(npas_step_args), "
             '"struct size");',
             "_Static_assert(_Alignof(npas_gen_step_args) == _Alignof(npas_step_args), "
             '"struct alignment");',
             f"_Static_assert({len(gen_fields)} == {len(hdr_fields)}, \"field count\");"]
    for f in hdr_fields:
        lines += [
            f"_Static_assert(offsetof(npas_gen_step_args, {f}) == offsetof(npas_step_args, {f}),"
            f' "offset of {f}");',
            f'_Static_assert(sizeof(GEN({f})) == sizeof(HDR({f})), "size of {f}");',
            f"_Static_assert(__builtin_types_compatible_p(__typeof__(GEN({f})), "
            f'__typeof__(HDR({f}))), "type of {f}");']
    kernel = re.search(r"NPAS_EXPORT void (npas_step_\w+)\(([^)]*)\)", generated)
    assert kernel, "the generated source defines a step kernel"
    lines += [f"void {kernel.group(1)}({kernel.group(2)});",
              f"_Static_assert(__builtin_types_compatible_p(__typeof__(&{kernel.group(1)}), "
              'npas_kernel_fn), "kernel signature");']
    return "\n".join(lines) + "\n"


def _syntax_check(cc: str, tmp_path: Path, header: str,
                  generated: str) -> subprocess.CompletedProcess:
    (tmp_path / "npas_kernel_abi.h").write_text(header)
    src = tmp_path / "abi_check.c"
    src.write_text(_abi_check(header, generated))
    return subprocess.run([cc, "-std=c11", "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                           f"-I{tmp_path}", str(src)], capture_output=True, text=True)


def test_header_and_generated_prelude_agree(cc, tmp_path) -> None:
    generated = _generated_source()
    assert f"npas_kernel_abi_version = {KERNEL_ABI_VERSION}u;" in generated
    r = _syntax_check(cc, tmp_path, HEADER.read_text(), generated)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("side,old,new,needle", [
    ("header", "float *output;", "double *output;", "output"),
    ("header", "#define NPAS_KERNEL_ABI_VERSION 1u", "#define NPAS_KERNEL_ABI_VERSION 2u",
     "ABI version"),
    ("generated", "  float *output;\n", "", "field count"),
    ("generated", "const float *const *params;", "const float *const *params;\n  int x;",
     "field count"),
    ("generated", "const float *const *inputs;\n  float *output;",
     "float *output;\n  const float *const *inputs;", "offset of"),
    ("generated", "int64_t begin, int64_t end, void *scratch)",
     "int64_t begin, int end, void *scratch)", "kernel signature"),
], ids=["header-type", "header-version", "gen-removed", "gen-added", "gen-reordered",
        "gen-kernel-signature"])
def test_a_change_on_either_side_fails(cc, tmp_path, side, old, new, needle) -> None:
    header, generated = HEADER.read_text(), _generated_source()
    if side == "header":
        assert old in header
        header = header.replace(old, new)
    else:
        assert old in generated
        generated = generated.replace(old, new, 1)
    r = _syntax_check(cc, tmp_path, header, generated)
    assert r.returncode != 0 and needle in r.stderr, r.stderr
