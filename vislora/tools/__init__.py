"""File tools behind the `vislora` command: inspect, convert, merge, resize, extract. Each works on
AdapterFile objects (vislora.formats) and needs no model, except where a kohya file's names must be
resolved (a config-built skeleton on the meta device stands in for the base)."""
