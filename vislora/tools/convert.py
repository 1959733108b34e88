"""`vislora convert IN OUT --to FORMAT`: the same adapter in another layout (any name in formats.TARGETS).

Tensors are moved, never recomputed, so every conversion is exact: the model's outputs are the same within
float rounding of the scale (alpha) bookkeeping. kohya and lycoris are one layout (LoHa, LoKr, Tucker and
full weights are written the LyCORIS way); diffusers and PEFT hold LoRA and LoCon only.
"""

from __future__ import annotations

from ..checks import Parser
from ..helpformat import HelpFormatter
from . import common


def convert(src: str, dst: str, to: str, base: str | None = None, allow_partial: bool = False) -> str:
    adapter = common.read(src, base, allow_partial)
    return str(common.write(dst, adapter, to))


def main(argv: list[str]) -> int:
    p = Parser(prog="vislora convert", description=__doc__.splitlines()[0], formatter_class=HelpFormatter)
    p.add_argument("src", help="adapter file or PEFT folder")
    p.add_argument("dst", help="output file (a folder for --to peft)")
    common.add_target_option(p, required=True)
    p.add_argument("--base", choices=sorted(common.BASES), help="base model whose names a kohya file uses "
                   "(default: from its tensor shapes)")
    p.add_argument("--allow-partial", action="store_true", help="drop module names the base does not have")
    args = p.parse_args(argv)
    common.check_output(args.dst, args.to)
    print(f"wrote {convert(args.src, args.dst, args.to, args.base, args.allow_partial)}")
    return 0
