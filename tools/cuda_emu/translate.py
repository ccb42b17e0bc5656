"""Rewrites phasor's CUDA sources into C++ that runs on the CPU under cuda_emu (runtime/cuda_emu.h).

Each rewrite is local and mechanical, so the emulated program is the kernel source itself:
  kernel<<<grid, block, smem, stream>>>(args)  ->  ::cuda_emu::Launch(grid, block, smem, stream)(kernel, args)
  extern __shared__ T smem[];                  ->  T* smem = ::cuda_emu::dynamic_shared<T>();
  __shared__ T a[N], b[M];                     ->  auto& a = ::cuda_emu::static_shared<T[N]>(__PRETTY_FUNCTION__, site); ...
  asm volatile("<ptx>" : outs : ins)           ->  a call into ::cuda_emu::ptx (only the instructions listed below)
  cudaFoo(                                     ->  ::cuda_emu::api::cudaFoo(   (the runtime calls phasor makes)
  __CUDA_ARCH__                                ->  PHASOR_EMU_CUDA_ARCH (900): the device-code branches are taken
  TORCH_LIBRARY_IMPL(phasor, CUDA, m)          ->  TORCH_LIBRARY_IMPL(<namespace>, CPU, m)
  TORCH_LIBRARY_FRAGMENT(phasor, m)            ->  TORCH_LIBRARY_FRAGMENT(<namespace>, m)
  TORCH_LIBRARY_IMPL(phasor, CPU, m)           ->  an unused function (the CPU kernels are not part of the emulation)
With namespace "phasor" (build.load(..., override_cpu=True)) the CUDA kernels are registered as phasor's
CPU kernels instead, and the schema fragments are dropped.
An unknown PTX instruction or an unparsable launch is an error, never silently skipped.
"""
from __future__ import annotations

import re
import zlib

API = ("GetDevice", "GetLastError", "GetErrorString", "DeviceGetAttribute", "FuncSetAttribute",
       "FuncGetAttributes", "OccupancyMaxActiveBlocksPerMultiprocessor", "OccupancyMaxActiveClusters",
       "LaunchKernelEx", "MemsetAsync")


class TranslateError(RuntimeError):
    pass


def _same_lines(old: str, new: str) -> str:
    """`new` padded with the newlines it lacks against `old`: every rewrite keeps the source's line
    numbers (compiler messages and the profile's source lines point into the original file)."""
    return new + "\n" * max(0, old.count("\n") - new.count("\n"))


def _match_forward(text: str, i: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket that closes text[i] (== open_ch), skipping string literals."""
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == '"':
            j = text.index('"', j + 1)
            while text[j - 1] == "\\":
                j = text.index('"', j + 1)
        elif ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise TranslateError(f"unbalanced {open_ch}{close_ch} at offset {i}")


def _split_top(s: str) -> list[str]:
    """Split on commas outside (), [], {}, <> and strings."""
    out, depth, cur, k = [], 0, [], 0
    while k < len(s):
        ch = s[k]
        if ch == '"':
            end = s.index('"', k + 1)
            cur.append(s[k:end + 1])
            k = end + 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        k += 1
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _kernel_start(text: str, end: int) -> int:
    """Start of the kernel expression that ends at text[end - 1] (before `<<<`)."""
    j = end - 1
    while text[j].isspace():
        j -= 1
    if text[j] == ">":  # template arguments
        depth = 0
        while True:
            if text[j] == ">":
                depth += 1
            elif text[j] == "<":
                depth -= 1
                if depth == 0:
                    j -= 1
                    break
            j -= 1
    while j >= 0 and (text[j].isalnum() or text[j] in "_:"):
        j -= 1
    return j + 1


def rewrite_launches(text: str) -> str:
    while (i := text.find("<<<")) >= 0:
        start = _kernel_start(text, i)
        kernel = text[start:i].strip()
        if not kernel:
            raise TranslateError(f"no kernel name before <<< near: {text[max(0, i - 80):i + 40]!r}")
        j = text.index(">>>", i)
        cfg = text[i + 3:j]
        k = j + 3
        while text[k].isspace():
            k += 1
        if text[k] != "(":
            raise TranslateError(f"launch without arguments near: {text[i:i + 80]!r}")
        close = _match_forward(text, k, "(", ")")
        args = text[k + 1:close - 1].strip()
        call = f"::cuda_emu::Launch({cfg})({kernel}{', ' + args if args else ''})"
        text = text[:start] + _same_lines(text[start:close], call) + text[close:]
    return text


_DYN = re.compile(r"extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([\w:<>, ]+?)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC = re.compile(r"__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([^;]+);")


def rewrite_shared(text: str, path: str) -> str:
    text = _DYN.sub(lambda m: _same_lines(m.group(0), f"{m.group(1)}* {m.group(2)} = ::cuda_emu::dynamic_shared<{m.group(1)}>();"), text)

    def static(m: re.Match) -> str:
        decl = m.group(1)
        first = min([k for k in (decl.find("["), decl.find(",")) if k >= 0] or [len(decl)])
        name = re.search(r"(\w+)\s*$", decl[:first])
        if not name:
            raise TranslateError(f"{path}: unsupported __shared__ declaration {m.group(0)!r}")
        ctype, decls = decl[:name.start()].strip(), _split_top(decl[name.start():])
        out = []
        for d in decls:
            dm = re.fullmatch(r"(\w+)\s*((?:\[[^\]]+\]\s*)*)", d)
            if not dm or "=" in d:
                raise TranslateError(f"{path}: unsupported __shared__ declaration {m.group(0)!r}")
            site = zlib.crc32(f"{path}:{m.start()}:{dm.group(1)}".encode()) & 0x7FFFFFFF
            dims = dm.group(2).replace(" ", "")
            out.append(f"auto& {dm.group(1)} = ::cuda_emu::static_shared<{ctype}{dims}>(__PRETTY_FUNCTION__, {site});")
        return _same_lines(m.group(0), " ".join(out))

    text = _STATIC.sub(static, text)
    if "__shared__" in text:
        raise TranslateError(f"{path}: a __shared__ declaration was not rewritten")
    return text


def _split_asm_sections(body: str) -> list[str]:
    """Split an asm statement's body on the colons between its sections (not inside () or strings)."""
    parts, depth, start, k = [], 0, 0, 0
    while k < len(body):
        ch = body[k]
        if ch == '"':
            k = body.index('"', k + 1)
            while body[k - 1] == "\\":
                k = body.index('"', k + 1)
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ":" and depth == 0:
            if body[k + 1:k + 2] == ":":  # "::" is two empty sections
                parts.append(body[start:k].strip())
                start = k + 1
            else:
                parts.append(body[start:k].strip())
                start = k + 1
        k += 1
    parts.append(body[start:].strip())
    return parts


_ASM = re.compile(r"\basm\s*(?:volatile\s*)?\(")


def _asm_call(ptx: str, operands: list[tuple[str, str]]) -> str:
    """C++ for one PTX instruction whose %N operands are replaced by their expressions."""
    def sub(m):
        return f"({operands[int(m.group(1))][1]})"
    ins = re.sub(r"%(\d+)", sub, ptx).strip().rstrip(";").strip()
    op, _, rest = ins.partition(" ")
    args = _split_top(rest)

    def regs(a):  # "{x, y}" or one register
        return _split_top(a[1:-1]) if a.startswith("{") else [a]

    def mem(a):
        if not (a.startswith("[") and a.endswith("]")):
            raise TranslateError(f"expected a [address] operand in {ptx!r}")
        return a[1:-1]

    if m := re.fullmatch(r"cp\.async\.(ca|cg)\.shared\.global", op):
        size = args[2]
        src_size = args[3] if len(args) > 3 else size
        return f"::cuda_emu::ptx::cp_async(uint32_t({mem(args[0])}), {mem(args[1])}, int({size}), int({src_size}))"
    if op == "cp.async.commit_group":
        return "::cuda_emu::ptx::cp_async_commit()"
    if op == "cp.async.wait_group":
        return f"::cuda_emu::ptx::cp_async_wait(int({args[0]}))"
    if m := re.fullmatch(r"st\.shared(?:\.v(\d))?\.(?:b32|u32)", op):
        n, vals = int(m.group(1) or 1), regs(args[1])
        init = ", ".join(f"uint32_t({v})" for v in vals)
        return f"{{ const uint32_t emu_v[{n}] = {{{init}}}; ::cuda_emu::ptx::st_shared<{n}>(uint32_t({mem(args[0])}), emu_v); }}"
    if m := re.fullmatch(r"ld\.shared(?:\.v(\d))?\.(?:b32|u32)", op):
        n, outs = int(m.group(1) or 1), regs(args[0])
        assign = " ".join(f"{o} = emu_v[{k}];" for k, o in enumerate(outs))
        return f"{{ uint32_t emu_v[{n}]; ::cuda_emu::ptx::ld_shared<{n}>(uint32_t({mem(args[1])}), emu_v); {assign} }}"
    if m := re.fullmatch(r"ldmatrix\.sync\.aligned\.m8n8\.x4(\.trans)?\.shared\.b16", op):
        outs = regs(args[0])
        assign = " ".join(f"{o} = emu_v[{k}];" for k, o in enumerate(outs))
        trans = "true" if m.group(1) else "false"
        return f"{{ uint32_t emu_v[4]; ::cuda_emu::ptx::ldmatrix_x4(uint32_t({mem(args[1])}), emu_v, {trans}); {assign} }}"
    if m := re.fullmatch(r"mma\.sync\.aligned\.(m16n8k16\.row\.col\.f32\.(f16|bf16)\.\2\.f32|m16n8k32\.row\.col\.s32\.s8\.s8\.s32)", op):
        d, a, b, c = (regs(x) for x in args)
        acc = "int32_t" if "s32" in op else "float"
        fn = ("mma_m16n8k32_s8" if "s32" in op else
              f"mma_m16n8k16<{'__half' if m.group(2) == 'f16' else '__nv_bfloat16'}>")
        return (f"{{ {acc} emu_c[4] = {{{', '.join(c)}}}; "
                f"const uint32_t emu_a[4] = {{{', '.join(f'uint32_t({x})' for x in a)}}}; "
                f"const uint32_t emu_b[2] = {{{', '.join(f'uint32_t({x})' for x in b)}}}; "
                f"::cuda_emu::ptx::{fn}(emu_c, emu_a, emu_b); "
                + " ".join(f"{o} = emu_c[{k}];" for k, o in enumerate(d)) + " }")
    raise TranslateError(f"PTX instruction not emulated: {op!r}")


def rewrite_asm(text: str, path: str) -> str:
    while m := _ASM.search(text):
        open_paren = m.end() - 1
        close = _match_forward(text, open_paren, "(", ")")
        body = text[open_paren + 1:close - 1]
        parts = _split_asm_sections(body)
        ptx = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', parts[0])).replace("\\n", "\n").replace("\\t", " ")
        operands = []
        for section in parts[1:3]:
            for opnd in _split_top(section) if section else []:
                om = re.fullmatch(r'"([^"]*)"\s*\((.*)\)', opnd, re.S)
                if not om:
                    raise TranslateError(f"{path}: cannot parse asm operand {opnd!r}")
                operands.append((om.group(1), om.group(2).strip()))
        calls = [_asm_call(line, operands) for line in ptx.split("\n") if line.strip()]
        end = close
        if text[end:end + 1] == ";":
            end += 1
        text = text[:m.start()] + _same_lines(text[m.start():end], "; ".join(calls) + ";") + text[end:]
    return text


def translate(text: str, path: str, namespace: str) -> str:
    text = text.replace("__CUDA_ARCH__", "PHASOR_EMU_CUDA_ARCH")
    text = re.sub(r"\bcuda(" + "|".join(API) + r")\s*\(", r"::cuda_emu::api::cuda\1(", text)
    # The emulated ops take CPU tensors (get_device() == -1); they stand for tensors on device 0.
    text = re.sub(r"\b([\w.]+)\.get_device\(\)", r"::cuda_emu::api::emu_device(\1.get_device())", text)
    text = rewrite_asm(text, path)
    text = rewrite_shared(text, path)
    text = rewrite_launches(text)
    counter = iter(range(1_000_000))

    def unused(kind):
        return lambda mm: f"[[maybe_unused]] static void phasor_emu_unused_{kind}_{next(counter)}(torch::Library& m)"
    # Other dispatch keys' registrations (the CPU kernels) are not part of the emulation.
    text = re.sub(r"TORCH_LIBRARY_IMPL\(\s*phasor\s*,\s*(?!CUDA\b)(\w+)\s*,\s*m\s*\)", unused("impl"), text)
    text = re.sub(r"TORCH_LIBRARY_IMPL\(\s*phasor\s*,\s*CUDA\s*,\s*m\s*\)", f"TORCH_LIBRARY_IMPL({namespace}, CPU, m)", text)
    if namespace == "phasor":  # override mode: phasor's schemas exist already, the CUDA kernels replace the CPU ones
        text = re.sub(r"TORCH_LIBRARY_FRAGMENT\(\s*phasor\s*,\s*m\s*\)", unused("schema"), text)
    else:
        text = re.sub(r"TORCH_LIBRARY_FRAGMENT\(\s*phasor\s*,\s*m\s*\)", f"TORCH_LIBRARY_FRAGMENT({namespace}, m)", text)
    text = re.sub(r"m\.set_python_module\([^;]*\);", "", text)
    if path.endswith((".cu", ".cuh")):
        text = f'#include "cuda_emu.h"\n#line 1 "{path}"\n' + text
    return text
