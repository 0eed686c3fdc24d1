# Two entry points on a fresh Debian machine (run as root, or with sudo for apt):
#   make demo   installs xvtrace, emulates every virtio-on-Xen transport on one block
#               workload, decodes the bundles and prints them side by side, then
#               reconstructs the EPAM run's requests and replays them on every transport
#   make test   installs everything the tests use (incl. xenalyze) and runs them
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_WORKLOAD ?= randread-4k-qd1
DEMO_REQUESTS ?= 20000

.PHONY: demo test install apt bench clean

$(BIN)/python:
	@if ! $(PYTHON) -c "import ensurepip, venv" >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' ruff

# Debian packages the tests use: xenalyze (oracle), QEMU + busybox + cpio (real-guest test),
# qemu-system-xen (the real Xen host's HVM device model), chromium (renders the HTML report
# headless). tests/xen/build_host.py adds make, gcc and the guest kernel's linux-headers.
APT_PKGS := xen-utils-4.17 qemu-system-xen python3-venv qemu-system-x86 busybox-static cpio chromium
apt:
	@if ! command -v xenalyze >/dev/null 2>&1 || ! command -v qemu-system-x86_64 >/dev/null 2>&1 \
	    || [ ! -e /bin/busybox ] || [ ! -e /usr/libexec/xen-qemu-system-i386 ] || ! command -v cpio >/dev/null 2>&1 \
	    || ! command -v chromium >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(APT_PKGS); \
	fi

demo: install
	rm -rf demo-run
	$(BIN)/xvtrace emulate --transport all --workload $(DEMO_WORKLOAD) --requests $(DEMO_REQUESTS) -o demo-run
	$(BIN)/xvtrace summary demo-run/epam-mmio
	$(BIN)/xvtrace dump demo-run/epam-mmio -e 'hvm.*' -n 19  # one request's traps, as Xen traced them
	$(BIN)/xvtrace timeline demo-run/epam-mmio
	$(BIN)/xvtrace replay demo-run/epam-mmio --transport all

test: apt install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

bench: install
	$(BIN)/python benchmarks/xentrace_ingest.py --size-mb 500

clean:
	rm -rf $(VENV) demo-run demo-bundle benchmarks/work .pytest_cache .hypothesis
