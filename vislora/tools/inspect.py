"""`vislora inspect FILE`: what an adapter file holds, without a model.

Format, kinds, ranks and alphas, DoRA; coverage per component and per block (lbw ids); the base model its
shapes were made for (cross-attention width 768 / 1024 / 2048, a second text encoder); size and parameter
count; the prompts it was trained with (instance prompt, trigger, ...), each on its own line; and the
training metadata (`ss_*`, `modelspec.*`, vislora's), escaped and truncated: metadata is untrusted text, and a
terminal must never receive its control characters (line breaks and tabs are text, and stay).
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

from .. import formats
from ..checks import Parser
from ..formats.arch import of_file
from ..helpformat import HelpFormatter
from .blocks import coverage

MAX_VALUE_CHARS = 160
KEPT_AS_TEXT = " \n\t"
# The prompts a training recipe records, as inspect names them: fields of vislora's JSON record (vislora.*),
# and modelspec's trigger phrase.
PROMPT_FIELDS = {"instance_prompt": "instance prompt", "class_prompt": "class prompt", "trigger": "trigger",
                 "caption": "caption"}
PROMPT_KEYS = {"modelspec.trigger_phrase": "trigger"}
MAX_RECORD_CHARS = 65536  # a longer vislora.* value is not parsed for prompts
SHOWN_METADATA = ("ss_", "sshs_", "modelspec.", "vislora.", "format", "lora_adapter_metadata")


def escape(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """Control, format and other non-printing characters but line breaks and tabs as \\xNN / \\uNNNN, then
    cut to `limit` chars."""
    out = []
    for ch in text:
        if unicodedata.category(ch)[0] in ("C", "Z") and ch not in KEPT_AS_TEXT:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    escaped = "".join(out)
    return escaped if len(escaped) <= limit else f"{escaped[:limit]}... (+{len(escaped) - limit} chars)"


def prompts(metadata: dict[str, str]) -> dict[str, str]:
    """The prompts the adapter was trained with, by name ("instance prompt", "trigger", ...), escaped."""
    found = {}
    for key, value in sorted(metadata.items()):
        if key in PROMPT_KEYS and value.strip():
            found[PROMPT_KEYS[key]] = value
        elif key.startswith("vislora.") and value.startswith("{") and len(value) <= MAX_RECORD_CHARS:
            try:
                record = json.loads(value)
            except (ValueError, RecursionError):  # untrusted text: no record, no prompts
                continue
            found.update({name: record[field] for field, name in PROMPT_FIELDS.items()
                          if isinstance(record.get(field), str) and record[field].strip()})
    return {name: escape(text, 2 * MAX_VALUE_CHARS) for name, text in found.items()}


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())  # per-component subfolders too
    return path.stat().st_size


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Everything `inspect` shows, as JSON-ready data, from the file's header alone (any size reads in
    milliseconds; alphas, ranks and factor shapes are checked, tensor values only when a file is loaded)."""
    adapter = formats.read(path, values=False)
    modules = adapter.modules
    arch = of_file(modules)
    per_comp, per_block, unresolved = coverage(adapter)
    count = lambda values: dict(sorted(Counter(values).items(), key=lambda kv: -kv[1]))  # noqa: E731
    return {
        "file": str(path),
        "format": adapter.format,
        "size_bytes": _size(Path(path)),
        "modules": len(modules),
        "parameters": sum(t.numel() for w in modules.values() for t in w.factors.values()),
        "kinds": count(w.kind for w in modules.values()),
        "ranks": {str(k): v for k, v in count(w.rank for w in modules.values()).items()},
        "alphas": {f"{k:g}": v for k, v in count(w.alpha for w in modules.values()).items()},
        "dora": sum(1 for w in modules.values() if getattr(w, "magnitude", None) is not None),
        "full_tensors": len(adapter.extra),
        "base": {"name": arch.name, "family": arch.family, "cross_attention_width": arch.cross_width,
                 "text_encoders": arch.text_encoders},
        "components": per_comp,
        "blocks": per_block,
        "unresolved": unresolved[:50],
        "prompts": prompts(adapter.metadata),
        "metadata": {escape(k, 80): escape(v) for k, v in sorted(adapter.metadata.items())
                     if k.startswith(SHOWN_METADATA)},
    }


def _text(info: dict[str, Any]) -> str:
    base = info["base"]
    base_text = base["name"] or (f"cross-attention width {base['cross_attention_width']}"
                                 if base["cross_attention_width"] else "unknown (no cross-attention modules)")
    lines = [
        f"{info['file']}: {info['format']}, {info['modules']} modules, {info['parameters']:,} parameters, "
        f"{info['size_bytes'] / 1e6:.2f} MB",
        f"  base: {base_text}" + (f", {base['text_encoders']} text encoder(s) adapted" if base["text_encoders"] else ""),
        "  kinds: " + ", ".join(f"{k} {v}" for k, v in info["kinds"].items())
        + (f"; DoRA on {info['dora']}" if info["dora"] else ""),
        "  ranks: " + ", ".join(f"{k} x{v}" for k, v in info["ranks"].items()),
        "  alphas: " + ", ".join(f"{k} x{v}" for k, v in info["alphas"].items()),
        "  components: " + ", ".join(f"{k} {v}" for k, v in info["components"].items()),
        "  blocks: " + ", ".join(f"{k} {v}" for k, v in info["blocks"].items()),
    ]
    if info["unresolved"]:
        lines.append(f"  unresolved names ({len(info['unresolved'])}): {', '.join(info['unresolved'][:5])}")
    if info["full_tensors"]:
        lines.append(f"  full tensors (modules_to_save): {info['full_tensors']}")
    lines += [f"  {name}: {_indented(text, 4)}" for name, text in info["prompts"].items()]
    if info["metadata"]:
        lines.append("  metadata:")
        lines += [f"    {k}: {_indented(v, 6)}" for k, v in info["metadata"].items()]
    return "\n".join(lines)


def _indented(text: str, spaces: int) -> str:
    """A value's later lines indented under its first."""
    return text.replace("\n", "\n" + " " * spaces)


def main(argv: list[str]) -> int:
    p = Parser(prog="vislora inspect", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("file", help="adapter .safetensors file or PEFT adapter folder")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    args = p.parse_args(argv)
    info = describe(args.file)
    print(json.dumps(info, indent=2) if args.json else _text(info))
    return 0
