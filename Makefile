# Two entry points, as in the README: `make audit` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= all
OUT ?= reports
BIN := $(VENV)/bin

.PHONY: audit test setup browser clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS),test]'
	@# Keras 2 (tf-keras) requires the 'tensorflow' distribution, which tensorflow-cpu provides under another
	@# name: installed without dependencies, it uses tensorflow-cpu's tensorflow module
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt tf-keras
	touch $@

setup: $(VENV)/.installed

# tests/test_browser.py opens a report in headless Chromium (Debian's package; Playwright's own browser
# download is not used). Installed here when missing and running as root, as CI does; elsewhere the test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for tests/test_browser.py"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "warning: could not install chromium: tests/test_browser.py will be skipped"; \
	else echo "note: chromium is not installed (apt-get install chromium, as root): tests/test_browser.py will be skipped"; fi

# Exit status 1 means the audit found deviations: that is a successful audit, so make accepts it.
audit: setup
	@$(BIN)/bncheck audit --out $(OUT); status=$$?; \
	if [ $$status -eq 1 ]; then echo "(exit status 1: deviations found; see $(OUT)/index.html)"; fi; \
	[ $$status -le 1 ]

# Test files run in parallel, one file per process (its framework workers are shared within a file); at most 4
# processes, since each may start several frameworks
test: setup browser
	$(BIN)/python -m pytest -q -ra --durations=15 -n auto --maxprocesses 4 --dist loadfile

clean:
	rm -rf $(VENV) $(OUT)/index.html $(OUT)/results.json $(OUT)/results.xml $(OUT)/results.sqlite* $(OUT)/findings $(OUT)/repro
