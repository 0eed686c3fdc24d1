# Two entry points on a fresh Debian machine (run as root, or with sudo for apt):
#   make demo   installs xvtrace, emulates every virtio-on-Xen transport on one block
#               workload, decodes the bundles and prints them side by side, then
#               reconstructs the EPAM run's requests and replays them on every transport
#   make test   installs everything the tests use (incl. xenalyze), then runs lint and the
#               fast suite, then the real-system stage (Xen and guest boots, long tests)
#   make test-fast    lint + the fast suite only (what a bare `pytest` runs; ~6 minutes on
#                     2 cores, ~8 in a fresh clone that compiles its numba kernels first)
# Debian's own Python when it is new enough: built with profile-guided and link-time
# optimization, it runs the interpreted parts (imports, loading the compiled kernels) faster
# than an unoptimized build first on PATH (pyenv's default): `summary RAW` of a 500 MB trace
# 1.84-1.94 s against 1.96-2.12 s
PYTHON ?= $(shell /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_WORKLOAD ?= randread-4k-qd1
DEMO_REQUESTS ?= 20000

.PHONY: demo test test-fast test-system test-assets install apt bench clean

$(BIN)/python:
	@if ! $(PYTHON) -c "import ensurepip, venv" >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq python3-venv; \
	fi
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dask]' ruff

# Every Debian package the tests use, installed here before pytest starts (no test installs
# anything): xenalyze (oracle), QEMU + busybox + cpio (real guests), qemu-system-xen (the real
# Xen host's HVM device model), chromium (renders the HTML report headless), gcc + binutils
# (symbol oracles), make + gcc + the guest kernel's linux-headers (tests/xen builds its EPAM
# guest module), Debian's Linux source and its build tools (tests/xen/grant builds the
# grant-DMA guest kernel from it). The guest kernel is the one tests/guest/build-guest.sh unpacked into
# .cache/guest, else the one linux-image-amd64 depends on, which it will download.
APT_PKGS := xen-utils-4.17 qemu-system-xen python3-venv qemu-system-x86 busybox-static cpio \
	chromium make gcc binutils linux-source-6.1 patch bc bison flex libelf-dev libssl-dev
GUEST_CACHE := .cache/guest
GUEST_KVER := sh tests/guest/build-guest.sh --kernel-version $(GUEST_CACHE)
apt:
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	need() { kver=$$($(GUEST_KVER)); missing=; \
	  for p in $(APT_PKGS) $${kver:+linux-headers-$$kver}; do \
	    [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || missing="$$missing $$p"; \
	  done; }; \
	need; \
	if [ -z "$$kver" ] || [ -n "$$missing" ]; then \
	  $$SUDO apt-get update -qq && need; \
	fi; \
	[ -n "$$kver" ] || { echo "apt: cannot resolve linux-image-amd64's kernel" >&2; exit 1; }; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# What the real-system stage boots, downloaded (never installed) and built before pytest:
# Debian's kernel and the guest initramfs (.cache/guest), Debian's Xen hypervisor, the dom0
# and guest initramfs, the EPAM guest module and the grant-DMA guest kernel (.cache/xenhost;
# the kernel's first build takes about 4 minutes on 2 cores)
test-assets: apt install
	sh tests/guest/build-guest.sh $(GUEST_CACHE) >/dev/null
	$(BIN)/python tests/xen/build_host.py build >/dev/null

demo: install
	rm -rf demo-run
	$(BIN)/xvtrace emulate --transport all --workload $(DEMO_WORKLOAD) --requests $(DEMO_REQUESTS) -o demo-run
	$(BIN)/xvtrace summary demo-run/epam-mmio
	$(BIN)/xvtrace dump demo-run/epam-mmio -e 'hvm.*' --limit 19  # one request's traps, as Xen traced them
	$(BIN)/xvtrace timeline demo-run/epam-mmio
	$(BIN)/xvtrace replay demo-run/epam-mmio --target all

# Two stages, every test in exactly one (bench aside): the fast suite, pyproject's default
# selection (not slow, xen, guest or bench), then the real-system stage (about 50 minutes on 2
# cores, most of it 11 Xen boots; exit status 5, nothing selected, is not a failure)
SYSTEM_MARKS := (slow or xen or guest) and not bench
test: apt install test-fast test-assets test-system

# (the fast suite on every core: 5:51 on 2; the real-system stage runs in one process, its
# Xen boots one at a time on 2 cores: tests/conftest.py XVT_BOOT_WORKERS)
test-fast: apt install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q -n auto

test-system: apt install test-assets
	$(BIN)/pytest -q -m "$(SYSTEM_MARKS)" || [ $$? -eq 5 ]

bench: install
	$(BIN)/python benchmarks/xentrace_ingest.py --size-mb 500

clean:
	rm -rf $(VENV) demo-run demo-bundle benchmarks/work .pytest_cache .hypothesis
