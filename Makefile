# Quick start: `make demo` or `make test`. Each creates .venv and installs everything on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python samples/demo.py

# The studio's page is tested in Debian's Chromium, driven by Playwright (no browser download). Installed when
# missing and apt-get can (as root); without it the browser tests skip and say why.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		echo "installing Debian's chromium (about 480 MB) for the studio's browser test" && \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } || \
		echo "chromium not installed: the studio's browser tests will skip"

test: $(STAMP) browser
	$(BIN)/python -m pytest -n auto --dist loadfile

bench: $(STAMP)
	$(BIN)/python bench/train_step.py --rounds 9 --plot docs/train_step.png
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python bench/sd_train.py
	$(BIN)/python bench/blend.py
	$(BIN)/python bench/digits_sd.py

clean:
	rm -rf $(VENV) runs
